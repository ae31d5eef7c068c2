"""Several GPUs on one VM: the launch command, the batch split, the rank rules, and a real 2-process run on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.common.errors import UserError
from components.grpo_train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint, make_checkpoint_callbacks
from components.grpo_train.job import TrainingJob
from components.grpo_train.launch import (
    JOB_FILE,
    Rendezvous,
    job_of_this_rank,
    torchrun_command,
    train_on_this_machine,
)

# 16 completions per device x 16 accumulation steps (stated here: the shipped recipes' numbers may change).
BATCH_16X16 = ["train.per_device_train_batch_size=16", "train.gradient_accumulation_steps=16"]


def _job(overrides: list[str], recipe: str = "medgemma-4b", **settings) -> TrainingJob:
    return TrainingJob.build(recipe, "/data", "/out", overrides=overrides, **settings)


def _global_batch(job: TrainingJob, world_size: int) -> int:
    train = job.recipe.train
    return train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] * world_size


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_accumulation_is_divided_so_the_global_batch_stays(world_size):
    job = _job(BATCH_16X16)
    split = job.data_parallel(world_size)
    assert split.recipe.train["gradient_accumulation_steps"] == 16 // world_size
    assert _global_batch(split, world_size) == _global_batch(job, 1) == 256
    # Vision-tower LoRA weights get no gradient from text prompts: DDP must tolerate them.
    assert split.recipe.train["ddp_find_unused_parameters"] is True
    # The job itself is left as it was: each launch path derives its own copy.
    assert job.recipe.train["gradient_accumulation_steps"] == 16 and "ddp_find_unused_parameters" not in job.recipe.train
    assert split.model_copy(update={"recipe": job.recipe}) == job


def test_one_process_changes_nothing():
    job = _job([])
    assert job.data_parallel(1) == job


def test_indivisible_accumulation_names_the_parameter():
    with pytest.raises(UserError, match=r"gradient_accumulation_steps=16 is not divisible by the 3 training processes"):
        _job(BATCH_16X16).data_parallel(3)
    with pytest.raises(UserError, match="gradient_accumulation_steps=1"):
        _job([], recipe="tiny-cpu").data_parallel(2)


def test_explicit_generation_settings_are_split_or_checked():
    assert _job([*BATCH_16X16, "train.steps_per_generation=16"]).data_parallel(2).recipe.train["steps_per_generation"] == 8
    odd = _job([*BATCH_16X16, "train.generation_batch_size=48"])  # 48 % (16 x 2) != 0
    with pytest.raises(UserError, match="generation_batch_size=48"):
        odd.data_parallel(2)
    chosen = _job([*BATCH_16X16, "train.ddp_find_unused_parameters=false"])
    assert chosen.data_parallel(2).recipe.train["ddp_find_unused_parameters"] is False


def test_torchrun_command_one_node_hands_the_job_file_to_every_process():
    command = torchrun_command("/tmp/j/training_job.json", 4)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in command and "--standalone" in command
    assert not any(c.startswith("--nnodes") for c in command)
    module_at = command.index("-m", 3)
    assert command[module_at + 1:] == ["components.grpo_train", "--job", "/tmp/j/training_job.json"]


def test_several_gpus_launch_torchrun_with_the_split_job_in_a_file(monkeypatch):
    """What a 4-GPU VM launches, captured at the subprocess boundary: one process per GPU, each reading the job
    split four ways from the file torchrun is handed (no flags, no environment variable carries a setting)."""
    import subprocess

    from components.grpo_train import launch

    launched = {}

    class Finished:
        def __init__(self, command, **kwargs):
            launched.update(command=command, kwargs=kwargs,
                            job=TrainingJob.read(command[command.index("--job") + 1]))

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Finished)
    job = _job(BATCH_16X16, tensorboard_dir="/tb")
    launch.run_job_under_torchrun(job, 4)
    command, split = launched["command"], launched["job"]
    assert "--nproc-per-node=4" in command and "--standalone" in command
    assert command[command.index("-m", 3) + 1:-1] == ["components.grpo_train", "--job"]
    assert not Path(command[-1]).exists()  # the launcher's temporary job file is gone once training ends
    assert launched["kwargs"] == {}  # the processes inherit this environment as it is
    assert split.recipe.train["gradient_accumulation_steps"] == 4 and not split.show_progress
    assert split.model_copy(update={"recipe": job.recipe, "show_progress": True}) == job
    assert split.tensorboard_dir == "/tb"


def test_torchrun_command_several_nodes():
    command = torchrun_command("job.json", 8, Rendezvous(nnodes=3, node_rank=2, master_addr="host-0", master_port=2222))
    assert "--standalone" not in command
    for flag in ("--nproc-per-node=8", "--nnodes=3", "--node-rank=2", "--master-addr=host-0", "--master-port=2222"):
        assert flag in command


def test_the_job_file_round_trips_and_the_cli_builds_the_same_job(tmp_path):
    """Flags build the job once; the file torchrun's processes read gives back that very job."""
    from components.grpo_train.__main__ import build_parser, job_from_args

    job = _job(["train.max_steps=5"], merge=True, hf_token_secret="projects/p/secrets/hf", completion_sample_size=3,
               rollout="static-graph", tensorboard_dir="gs://bucket/tb", model="/m")
    assert TrainingJob.read(job.write(tmp_path / JOB_FILE)) == job
    assert job.tensorboard_dir == "/gcs/bucket/tb" and job.model_id == "/m" and job.recipe.train["max_steps"] == 5
    flags = ["--recipe", "medgemma-4b", "--data-dir", "/data", "--output-dir", "/out", "--set", "train.max_steps=5",
             "--merge", "--hf-token-secret", "projects/p/secrets/hf", "--completion-sample-size", "3",
             "--rollout", "static-graph", "--tensorboard-dir", "gs://bucket/tb", "--model", "/m"]
    assert job_from_args(build_parser().parse_args(flags)) == job
    assert job_from_args(build_parser().parse_args(["--job", str(tmp_path / JOB_FILE)])) == job
    with pytest.raises(UserError, match="--job carries every setting"):
        job_from_args(build_parser().parse_args(["--job", str(tmp_path / JOB_FILE), "--recipe", "tiny-cpu"]))
    with pytest.raises(UserError, match="missing --data-dir, --output-dir"):
        job_from_args(build_parser().parse_args(["--recipe", "tiny-cpu"]))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("rollout", "fast", "rollout: Input should be 'auto', 'static-graph' or 'trl'"),
    ("completion_sample_size", -1, "completion_sample_size: Input should be greater than or equal to 0"),
    ("hf_token_secret", "hf_" + "a" * 34, "hf_token_secret must be a Secret Manager resource name, not a token"),
])
def test_a_bad_job_setting_is_one_line_naming_the_field(field, value, message):
    with pytest.raises(UserError, match=message):
        _job([], **{field: value})


def test_a_bad_job_file_names_the_file_and_the_field(tmp_path):
    path = tmp_path / JOB_FILE
    path.write_text(_job([]).to_json().replace('"completion_sample_size"', '"sample_size"'))
    with pytest.raises(UserError, match=r"training_job.json'.*sample_size: Extra inputs are not permitted"):
        TrainingJob.read(path)


def test_rank_zero_runs_the_job_as_it_is(tmp_path, monkeypatch):
    job = TrainingJob.build("tiny-cpu", "/d", tmp_path / "out")
    monkeypatch.delenv("RANK", raising=False)
    with job_of_this_rank(job) as this_rank:
        assert this_rank == job
    monkeypatch.setenv("RANK", "0")
    with job_of_this_rank(job) as this_rank:
        assert this_rank == job


def test_other_ranks_write_a_scratch_folder_that_shares_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    shared = tmp_path / "out"
    job = TrainingJob.build("tiny-cpu", "/d", shared, merge=True)
    assert job.tensorboard_dir == f"{shared}/tensorboard"
    with job_of_this_rank(job) as this_rank:
        folder = Path(this_rank.output_dir)
        assert folder != shared and not str(folder).startswith(str(shared))
        # Rank 0 alone opens the event file, merges and shows progress.
        assert this_rank.tensorboard_dir is None and not this_rank.merge and not this_rank.show_progress
        (folder / "checkpoints" / "checkpoint-3").mkdir()
        (folder / "checkpoints" / "checkpoint-3" / "rng_state_1.pth").write_bytes(b"rng")
        (folder / "adapter").mkdir()
    assert (shared / "checkpoints" / "checkpoint-3" / "rng_state_1.pth").read_bytes() == b"rng"
    assert not folder.exists() and not (shared / "adapter").exists()


@pytest.mark.parametrize("should_save", [True, False])
def test_only_the_saving_process_marks_a_checkpoint_complete(tmp_path, should_save):
    (tmp_path / "checkpoint-4").mkdir()
    mark_complete, _ = make_checkpoint_callbacks(tmp_path)
    mark_complete.on_save(SimpleNamespace(should_save=should_save), SimpleNamespace(global_step=4), None)
    assert (tmp_path / "checkpoint-4" / COMPLETE_MARKER).is_file() is should_save


def test_two_processes_train_resume_and_write_outputs_once(tmp_path, tiny_model_dir, prepared_demo_dir):
    """torchrun with 2 CPU processes (gloo) and our rollout, as on GPUs: the same launcher a 2-GPU VM uses.
    Rank 0 alone writes the adapter and summary; each checkpoint holds both ranks' RNG state before its COMPLETE
    marker; a second launch with more steps resumes from the last complete checkpoint."""
    out = tmp_path / "tuned"
    overrides = ["train.max_steps=2", "train.save_steps=1", "train.per_device_train_batch_size=4",
                 "train.gradient_accumulation_steps=2", "train.report_to=none", "train.logging_steps=1"]
    job = TrainingJob.build("tiny-cpu", prepared_demo_dir, out, model=tiny_model_dir, overrides=overrides,
                            rollout="static-graph")
    outcome = train_on_this_machine(job, gpus=2)
    assert outcome.global_step == 2 and outcome.backend == "transformers" and outcome.resumed_from is None
    assert "reward" in outcome.metrics
    summary = json.loads((out / "adapter" / "training_summary.json").read_text())
    # The launcher halved accumulation: 4 completions x 1 step x 2 processes = the recipe's 4 x 2 x 1.
    assert summary["recipe_settings"]["train"]["gradient_accumulation_steps"] == 1
    # Each rank's own rollout times (one per step), gathered by rank 0.
    assert summary["rollout"] == "static-graph"
    assert [len(times) for times in summary["rollout_seconds_by_rank"]] == [2, 2]
    assert summary["rollout_seconds_by_rank"][0] == summary["rollout_seconds"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    for step in (1, 2):
        checkpoint = out / "checkpoints" / f"checkpoint-{step}"
        assert (checkpoint / COMPLETE_MARKER).is_file()
        assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints"]  # nothing from rank 1

    longer = TrainingJob.build("tiny-cpu", prepared_demo_dir, out, model=tiny_model_dir,
                               overrides=overrides[1:] + ["train.max_steps=3"])
    resumed = train_on_this_machine(longer, gpus=2)
    assert resumed.global_step == 3
    assert Path(resumed.resumed_from).name == "checkpoint-2"
    assert latest_complete_checkpoint(out / "checkpoints").name == "checkpoint-3"
