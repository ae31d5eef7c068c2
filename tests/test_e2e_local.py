"""The whole pipeline through kfp.local on CPU: tiny model, bundled demo data, file registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_local_run_trains_gates_registers_and_serves_two_models_side_by_side(tmp_path):
    summary_path = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "pipelines/run_local.py", "--workdir", str(tmp_path / "work"), "--summary-json", str(summary_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    summary = json.loads(summary_path.read_text())
    assert summary["state"] == "SUCCEEDED" and "wall_seconds" in summary
    assert [model["name"] for model in summary["models"]] == ["tiny-cpu", "tiny-cpu-rank4"]
    for model in summary["models"]:
        assert model["n"] == 240  # the demo test split, in full (eval_limit 0)
        # The demo rule is learnable and the warm start knows none of it: GRPO must beat the baseline.
        assert model["tuned_accuracy"] > model["baseline_accuracy"]
        assert model["passes_gate"] and model["registered"]
        version_dir = Path(model["registered_at"])
        assert version_dir.is_dir() and (version_dir / "manifest.json").is_file()
        assert version_dir.parent.parent.name == f"medgemma-grpo-demo-{model['name']}"  # each model its own entry
        aliases = json.loads((version_dir.parent.parent / "aliases.json").read_text())
        assert aliases["champion"] == aliases["challenger"] == int(model["registered_version"])
        # The registered merged weights, deployed to the model's local endpoint, answered through transformers serve.
        assert model["deployed_to"].endswith(f"_endpoints/medgemma-grpo-demo-endpoint-{model['name']}")
        assert model["smoke_test"]["n"] == 20 and model["smoke_test"]["format_rate"] >= 0.9
    # The results table: one row per model, both scores labelled, as Markdown, HTML and JSON.
    table = json.loads((Path(summary["run_dir"]) / "results-table" / "table_json").read_text())
    assert [row["name"] for row in table["models"]] == ["tiny-cpu", "tiny-cpu-rank4"]
    assert "tiny-cpu-rank4" in result.stdout and "McNemar" in result.stdout and "smoke test" in result.stdout
    assert "results table" in result.stdout
    # Medical-data hygiene holds for the demo too: no question text in the run's logs.
    assert "Examination shows" not in result.stdout + result.stderr
