"""The README's test command is what CI runs, and the README leads with the main job."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_command() -> str:
    script = (ROOT / ".ci" / "run").read_text()
    awk = script.split("cmd=$(", 1)[1].split(" README.md)", 1)[0]
    return subprocess.run(
        ["bash", "-c", f"{awk} README.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_ci_runs_the_readme_test_command():
    command = _ci_command()
    assert "pytest" in command
    assert "-c constraints.txt" in command
    assert command in (ROOT / "README.md").read_text()


def test_readme_first_command_runs_the_main_job_on_the_default():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "-c constraints.txt" in first_block
    assert "lvlmva align --dataset decoy-digits" in first_block


def test_constraints_pin_torch_and_exclude_compromised_litellm():
    constraints = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in constraints
    assert "torchvision==0.29.1" in constraints
    assert "litellm==1.100.5" in constraints
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "!=1.82.7" in pyproject and "!=1.82.8" in pyproject
