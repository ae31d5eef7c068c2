"""Checkpoints outside the task's outputs (self-hosted KFP: a mounted volume): one folder per run and training task,
the same on every retry, so that a retried task resumes; without a root they stay in the output folder (Vertex)."""

from __future__ import annotations

import pytest

from components.common.errors import UserError
from components.grpo_train.checkpoints import latest_complete_checkpoint, run_checkpoint_dir
from components.grpo_train.job import TrainingJob


def test_a_retry_finds_the_folder_and_other_tasks_or_runs_do_not(tmp_path):
    root = str(tmp_path / "checkpoints")
    first = run_checkpoint_dir(root, "medgemma-grpo-x7k2p", "/data/prepared", "google/medgemma-4b-it", "medgemma-4b")
    assert first == run_checkpoint_dir(root + "/", "medgemma-grpo-x7k2p", "/data/prepared", "google/medgemma-4b-it",
                                       "medgemma-4b")
    assert first.startswith(f"{root}/medgemma-grpo-x7k2p/")
    other_model = run_checkpoint_dir(root, "medgemma-grpo-x7k2p", "/data/prepared", "google/gemma-3-4b-it", "medgemma-4b")
    other_run = run_checkpoint_dir(root, "medgemma-grpo-b9c1d", "/data/prepared", "google/medgemma-4b-it", "medgemma-4b")
    assert len({first, other_model, other_run}) == 3
    assert run_checkpoint_dir(root, "runs/../x y", "a").startswith(f"{root}/runs-..-x-y/")  # one path segment
    with pytest.raises(UserError, match="^pipeline_run must name the run when checkpoint_root is set"):
        run_checkpoint_dir(root, " ", "a")


def test_the_job_resumes_from_its_checkpoint_folder(tmp_path):
    data, output = tmp_path / "data", tmp_path / "model"
    assert TrainingJob.build("tiny-cpu", data, output).checkpoints == output / "checkpoints"
    elsewhere = tmp_path / "volume" / "run" / "task"
    job = TrainingJob.build("tiny-cpu", data, output, checkpoint_dir=str(elsewhere))
    assert job.checkpoints == elsewhere
    assert TrainingJob.from_json(job.to_json()).checkpoints == elsewhere  # what torchrun's processes read
    assert job.for_secondary_rank(tmp_path / "scratch").checkpoints == elsewhere  # every rank saves to the same one
    (elsewhere / "checkpoint-4").mkdir(parents=True)
    (elsewhere / "checkpoint-4" / "COMPLETE").write_text("4\n")
    assert latest_complete_checkpoint(job.checkpoints) == elsewhere / "checkpoint-4"
