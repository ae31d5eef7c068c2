"""The whole pipeline through kfp.local on CPU: tiny model, bundled demo data, file registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_local_run_trains_gates_registers_and_serves(tmp_path):
    summary_path = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "pipelines/run_local.py", "--workdir", str(tmp_path / "work"), "--summary-json", str(summary_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    summary = json.loads(summary_path.read_text())
    assert {"baseline_accuracy", "tuned_accuracy", "p_value", "registered", "wall_seconds"} <= set(summary)
    assert summary["n"] == 240  # the demo test split, in full (eval_limit 0)
    # The demo rule is learnable and the warm start knows none of it: GRPO must beat the baseline.
    assert summary["tuned_accuracy"] > summary["baseline_accuracy"]
    assert summary["passes_gate"] and summary["registered"]
    version_dir = Path(summary["registered_at"])
    assert version_dir.is_dir() and (version_dir / "manifest.json").is_file()
    aliases = json.loads((version_dir.parent.parent / "aliases.json").read_text())
    assert aliases["champion"] == aliases["challenger"] == int(summary["registered_version"])
    # The registered merged weights, deployed to the local endpoint, answered through transformers serve.
    smoke = summary["smoke_test"]
    assert summary["state"] == "SUCCEEDED" and summary["deployed_to"].endswith("_endpoints/medgemma-grpo-demo-endpoint")
    assert smoke["n"] == 20 and smoke["format_rate"] >= 0.9
    assert "baseline" in result.stdout and "McNemar" in result.stdout and "smoke test" in result.stdout
    # Medical-data hygiene holds for the demo too: no question text in the run's logs.
    assert "Examination shows" not in result.stdout + result.stderr
