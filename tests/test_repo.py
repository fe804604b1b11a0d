"""The repository keeps its promises: ruff is clean, and CI runs the README's test command."""

import sys
from pathlib import Path

from helpers import run_child

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The two commands in the README's first code block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_main_job_and_the_tests():
    main_job, tests = readme_commands()
    assert main_job.endswith("jaxcnn train") and "pip install" in main_job
    assert tests.endswith("pytest -q") and '".[dev]"' in tests


def test_ci_runs_the_readme_test_command_in_a_fresh_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci
    assert "rm -rf .venv" in ci.split(readme_commands()[1])[0]


def test_ruff_is_clean():
    proc = run_child([sys.executable, "-m", "ruff", "check", "--quiet", "."], cwd=ROOT,
                     capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
