"""The executor seam without Ray: the registry, the settings' checks, and Ray kept out of the
core (only `lvlmva/pipeline/executors/ray.py` may import it, inside its functions)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lvlmva.errors import ConfigError
from lvlmva.pipeline.executors import (
    EXECUTORS,
    ExecutorSettings,
    LocalExecutor,
    get_executor,
    open_executor,
)

PACKAGE = Path(__file__).resolve().parents[1] / "lvlmva"
RAY_MODULE = PACKAGE / "pipeline" / "executors" / "ray.py"


def test_the_registry_names_each_executor_and_refuses_unknown_ones():
    assert set(EXECUTORS) == {"local", "ray"}
    assert isinstance(open_executor(), LocalExecutor)
    with pytest.raises(ConfigError, match="unknown executor 'dask': use one of local, ray"):
        get_executor("dask")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"workers": 0}, "--ray-workers must be at least 1"),
        ({"gpus_per_worker": -1.0}, "must not be negative"),
        ({"cpus_per_worker": 0.0}, "needs some CPUs or GPUs"),
        ({"batches_ahead": 0}, "batches_ahead"),
    ],
)
def test_bad_executor_settings_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        ExecutorSettings("ray", **fields)


def test_only_the_ray_executor_imports_ray_and_only_inside_functions():
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )  # fmt: skip
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.append((path, node))
    assert {path for path, _ in importers} == {RAY_MODULE}
    top_level = ast.parse(RAY_MODULE.read_text(encoding="utf-8")).body
    assert not [node for _, node in importers if node in top_level]


def test_importing_the_pipeline_and_the_cli_does_not_import_ray():
    code = (
        "import sys, lvlmva.pipeline, lvlmva.pipeline.critique_run, lvlmva.cli\n"
        "from lvlmva.pipeline.executors import RayExecutor\n"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False"


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed: pip install"):
        open_executor(ExecutorSettings("ray")).preflight()


def test_ci_installs_the_pinned_ray_extra_so_the_ray_tests_run():
    root = PACKAGE.parent
    readme = (root / "README.md").read_text()
    command = readme.split("<!-- test-command -->", 1)[1].split("```", 2)[1]
    assert "-c constraints.txt" in command and ",ray]" in command
    assert "ray==2.60.0" in (root / "constraints.txt").read_text()
    assert 'ray = ["ray>=' in (root / "pyproject.toml").read_text()


def test_the_cli_names_the_known_executors_for_an_unknown_one(tmp_path, capsys):
    from lvlmva.cli import main

    argv = ["critique", "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "run"),
            "--executor", "dask"]
    assert main(argv) == 2
    assert "unknown executor 'dask': use one of local, ray" in capsys.readouterr().err
