"""Every step has ``python -m components.<step> --help`` over its core; user errors are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

STEPS = ["data_prep", "grpo_train", "evaluate", "compare", "register", "deploy", "tiny_model", "demo_data",
         "preflight", "run_summary", "results_table"]


@pytest.mark.parametrize("step", STEPS)
def test_help(step):
    result = subprocess.run([sys.executable, "-m", f"components.{step}", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m components.") or "usage:" in result.stdout


@pytest.mark.parametrize("script", ["pipelines/compile.py", "pipelines/run_local.py", "pipelines/submit.py"])
def test_pipeline_scripts_help(script):
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_unknown_recipe_is_one_line_with_choices(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "components.grpo_train", "--recipe", "medgemma-8b", "--data-dir", str(tmp_path),
         "--output-dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "unknown recipe 'medgemma-8b'" in result.stderr and "medgemma-4b" in result.stderr
