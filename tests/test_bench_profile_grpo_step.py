"""bench/profile_grpo_step.py --gpus 2: every rank's phases, TRL's gathers among them, the global batch kept
(CPU: 2 gloo processes under torchrun)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_two_process_profile_reports_every_rank_with_its_gathers(tmp_path):
    output = tmp_path / "profile.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "profile_grpo_step.py"), "--tiny", "--gpus", "2", "--steps", "2",
         "--prompts-per-step", "4", "--prompt-len", "20", "--completion-tokens", "8",
         "--workdir", str(tmp_path / "work"), "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["gpus"] == 2 and sorted(report["ranks"]) == ["0", "1"]
    for rank, part in report["ranks"].items():
        assert part["rank"] == int(rank)
        assert "micro-batch 8 x accumulation 1" in part["settings"]  # 4 prompts x 4 completions over 2 ranks
        assert len(part["step_seconds"]) == 2
        assert {"rollout", "gather", "gather_object", "optimizer", "training_step"} <= set(part["phases"]["2"])
    assert not list(tmp_path.glob("profile.rank*.json"))  # merged into the one report
