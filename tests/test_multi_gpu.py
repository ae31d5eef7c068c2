"""Several GPUs on one VM: the launch command, the batch split, the rank rules, and a real 2-process run on CPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.common.errors import UserError
from components.common.recipes import load_recipe
from components.grpo_train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint, make_checkpoint_callbacks
from components.grpo_train.launch import (
    Rendezvous,
    data_parallel_overrides,
    outputs_of_this_rank,
    torchrun_command,
    train_on_this_machine,
    training_cli_args,
)


# 16 completions per device x 16 accumulation steps (stated here: the shipped recipes' numbers may change).
BATCH_16X16 = ["train.per_device_train_batch_size=16", "train.gradient_accumulation_steps=16"]


def _global_batch(overrides: list[str], world_size: int) -> int:
    train = load_recipe("medgemma-4b", overrides).train
    return train["per_device_train_batch_size"] * train["gradient_accumulation_steps"] * world_size


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_accumulation_is_divided_so_the_global_batch_stays(world_size):
    recipe = load_recipe("medgemma-4b", BATCH_16X16)
    overrides = data_parallel_overrides(recipe, world_size)
    assert f"train.gradient_accumulation_steps={16 // world_size}" in overrides
    assert _global_batch(BATCH_16X16 + overrides, world_size) == _global_batch(BATCH_16X16, 1) == 256
    # Vision-tower LoRA weights get no gradient from text prompts: DDP must tolerate them.
    assert "train.ddp_find_unused_parameters=true" in overrides


def test_one_process_changes_nothing():
    assert data_parallel_overrides(load_recipe("medgemma-4b"), 1) == []


def test_indivisible_accumulation_names_the_parameter():
    with pytest.raises(UserError, match=r"gradient_accumulation_steps=16 is not divisible by the 3 training processes"):
        data_parallel_overrides(load_recipe("medgemma-4b", BATCH_16X16), 3)
    with pytest.raises(UserError, match="gradient_accumulation_steps=1"):
        data_parallel_overrides(load_recipe("tiny-cpu"), 2)


def test_explicit_generation_settings_are_split_or_checked():
    recipe = load_recipe("medgemma-4b", [*BATCH_16X16, "train.steps_per_generation=16"])
    assert "train.steps_per_generation=8" in data_parallel_overrides(recipe, 2)
    odd = load_recipe("medgemma-4b", [*BATCH_16X16, "train.generation_batch_size=48"])  # 48 % (16 x 2) != 0
    with pytest.raises(UserError, match="generation_batch_size=48"):
        data_parallel_overrides(odd, 2)
    chosen = load_recipe("medgemma-4b", [*BATCH_16X16, "train.ddp_find_unused_parameters=false"])
    assert not any("ddp_find_unused_parameters" in o for o in data_parallel_overrides(chosen, 2))


def test_torchrun_command_one_node():
    args = training_cli_args("medgemma-4b", "/data", "/out", overrides=["train.max_steps=5"], merge=True,
                             hf_token_secret="projects/p/secrets/hf")
    command = torchrun_command(args, 4)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in command and "--standalone" in command
    assert not any(c.startswith("--nnodes") for c in command)
    module_at = command.index("-m", 3)
    assert command[module_at + 1] == "components.grpo_train"
    assert command[module_at + 2:] == ["--recipe", "medgemma-4b", "--data-dir", "/data", "--output-dir", "/out",
                                       "--no-progress", "--set", "train.max_steps=5", "--merge",
                                       "--hf-token-secret", "projects/p/secrets/hf"]


def test_torchrun_command_several_nodes():
    command = torchrun_command(["--recipe", "x"], 8, Rendezvous(nnodes=3, node_rank=2, master_addr="host-0",
                                                                  master_port=2222))
    assert "--standalone" not in command
    for flag in ("--nproc-per-node=8", "--nnodes=3", "--node-rank=2", "--master-addr=host-0", "--master-port=2222"):
        assert flag in command


def test_training_cli_parses_what_the_launcher_builds():
    """The argument list the launcher builds is one the training CLI accepts (no drift between the two)."""
    from components.grpo_train.__main__ import build_parser

    args = build_parser().parse_args(training_cli_args("tiny-cpu", "/d", "/o", model="/m", overrides=["a.b=1"],
                                                       completion_sample_size=3, rollout="static-graph"))
    assert args.rollout == "static-graph" and build_parser().parse_args(training_cli_args("r", "/d", "/o")).rollout == "auto"
    assert (args.recipe, args.data_dir, args.output_dir, args.model) == ("tiny-cpu", "/d", "/o", "/m")
    assert args.overrides == ["a.b=1"] and args.completion_sample_size == 3 and args.no_progress
    assert not args.merge and args.hf_token_secret == ""


def test_rank_zero_writes_the_real_output_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with outputs_of_this_rank(tmp_path / "out") as folder:
        assert folder == tmp_path / "out"
    monkeypatch.setenv("RANK", "0")
    with outputs_of_this_rank(tmp_path / "out") as folder:
        assert folder == tmp_path / "out"


def test_other_ranks_write_a_scratch_folder_that_shares_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://bucket/tb")
    shared = tmp_path / "out"
    with outputs_of_this_rank(shared) as folder:
        assert folder != shared and not str(folder).startswith(str(shared))
        assert "AIP_TENSORBOARD_LOG_DIR" not in os.environ  # rank 0 alone opens the event file
        (folder / "checkpoints" / "checkpoint-3").mkdir()
        (folder / "checkpoints" / "checkpoint-3" / "rng_state_1.pth").write_bytes(b"rng")
        (folder / "adapter").mkdir()
    assert (shared / "checkpoints" / "checkpoint-3" / "rng_state_1.pth").read_bytes() == b"rng"
    assert not folder.exists() and not (shared / "adapter").exists()
    assert os.environ["AIP_TENSORBOARD_LOG_DIR"] == "gs://bucket/tb"


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
    outcome = train_on_this_machine("tiny-cpu", str(prepared_demo_dir), str(out), model=tiny_model_dir,
                                    overrides=overrides, gpus=2, rollout="static-graph")
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

    resumed = train_on_this_machine("tiny-cpu", str(prepared_demo_dir), str(out), model=tiny_model_dir,
                                    overrides=overrides[1:] + ["train.max_steps=3"], gpus=2)
    assert resumed.global_step == 3
    assert Path(resumed.resumed_from).name == "checkpoint-2"
    assert latest_complete_checkpoint(out / "checkpoints").name == "checkpoint-3"
