"""The README's "From Python" example runs as written, as a script; `align_sync` also runs
where an event loop is already running (a notebook); `lvlmva --version`."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import lvlmva

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md has no python block under 'From Python'"
    return blocks[0]


def test_the_readme_python_example_runs_as_a_script(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(readme_python_example())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "LVLM calls" in done.stdout


def test_align_sync_runs_inside_a_running_event_loop():
    from lvlmva.api import CriticSettings
    from lvlmva.vision.datasets import load_dataset
    from lvlmva.vision.models import build_model

    splits = load_dataset("decoy-digits", seed=0)
    model = build_model("mlp", splits.info)

    async def notebook_cell():
        return lvlmva.align_sync(model, splits, critic=CriticSettings(kind="ground-truth"),
                                 n_align=8, epochs=0, progress=False)

    result = asyncio.run(notebook_cell())
    assert len(result.samples) == 8


def test_version_flag_prints_the_package_version(capsys):
    from lvlmva.cli import main

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert lvlmva.__version__ == project["version"]
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"lvlmva {lvlmva.__version__}"
