"""The training step on the tiny model: outputs, resume after SIGKILL (weights really restored), SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.grpo_train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint

FAST = ["train.per_device_train_batch_size=8", "train.max_completion_length=8", "train.logging_steps=1"]


def test_training_writes_adapter_summary_metrics_and_checkpoints(tiny_model_dir, prepared_demo_dir, tmp_path, caplog):
    from components.grpo_train.core import train_grpo
    from components.grpo_train.job import TrainingJob

    caplog.set_level("INFO")
    out = tmp_path / "train"
    outcome = train_grpo(TrainingJob.build("tiny-cpu", prepared_demo_dir, out, model=tiny_model_dir, show_progress=False,
                                           overrides=FAST + ["train.max_steps=2", "train.save_steps=1"],
                                           completion_sample_size=3))
    assert outcome.global_step == 2 and outcome.backend == "transformers" and outcome.resumed_from is None
    assert (out / "adapter" / "adapter_config.json").is_file()
    summary = json.loads((out / "adapter" / "training_summary.json").read_text())
    assert summary["base_model"] == tiny_model_dir and summary["recipe"] == "tiny-cpu" and summary["global_step"] == 2
    assert set(summary["metrics"]) == {"reward", "reward_std", "completion_mean_length", "completion_clipped_ratio"}
    assert 0.0 <= summary["metrics"]["reward"] <= 1.0
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    assert all((p / COMPLETE_MARKER).is_file() for p in checkpoints)
    assert list((out / "tensorboard").iterdir()), "TensorBoard events are written"
    sample = [json.loads(line) for line in (out / "completions_sample.jsonl").read_text().splitlines()]
    assert len(sample) == 3 and {"answer", "reward", "completion"} <= set(sample[0])
    questions = [json.loads(line)["prompt"][0]["content"] for line in (prepared_demo_dir / "train.jsonl").open()]
    assert not any(q[-200:] in caplog.text for q in questions), "no question text in the logs"


def test_half_written_checkpoints_are_ignored(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text("x")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert latest_complete_checkpoint(tmp_path / "missing") is None


def _train_cli(tiny_model_dir, data_dir, out, steps, extra=()):
    command = [sys.executable, "-m", "components.grpo_train", "--recipe", "tiny-cpu", "--model", tiny_model_dir,
               "--data-dir", str(data_dir), "--output-dir", str(out), "--no-progress",
               *[f"--set={o}" for o in FAST + [f"train.max_steps={steps}", "train.save_steps=2", *extra]]]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared:\n{process.stdout.read()}")
        time.sleep(0.1)


def _adapter_tensors(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_sigkill_then_rerun_resumes_with_the_adapter_restored(warm_tiny_model_dir, prepared_demo_dir, tmp_path):
    # The warm-started model answers in format, so rewards vary and the adapter really moves each step.
    tiny_model_dir, steps = warm_tiny_model_dir, 6
    reference = _train_cli(tiny_model_dir, prepared_demo_dir, tmp_path / "reference", steps)
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    out = tmp_path / "interrupted"
    first = _train_cli(tiny_model_dir, prepared_demo_dir, out, steps)
    _wait_for(out / "checkpoints" / "checkpoint-2" / COMPLETE_MARKER, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert not (out / "adapter").exists(), "killed before the end: no final adapter"
    resumed_from = latest_complete_checkpoint(out / "checkpoints")
    (out / "checkpoints" / "checkpoint-5").mkdir()  # a half-written checkpoint: must be ignored

    second = _train_cli(tiny_model_dir, prepared_demo_dir, out, steps)
    log = second.communicate(timeout=300)[0]
    assert second.returncode == 0, log
    assert f"resuming from {resumed_from}" in log
    summary = json.loads((out / "adapter" / "training_summary.json").read_text())
    assert summary["global_step"] == steps and summary["resumed_from"] == str(resumed_from)
    # Same seed, same data order: a run resumed with the adapter (and optimizer) really restored ends
    # where the uninterrupted run ends; one that kept the step count but started from fresh LoRA weights
    # would not (and one that ignored the checkpoint fails the log and summary checks above).
    expected, got = _adapter_tensors(tmp_path / "reference"), _adapter_tensors(out)
    assert expected.keys() == got.keys()
    import torch

    assert any(t.abs().sum() > 0 for n, t in expected.items() if "lora_B" in n), "training moved the adapter"

    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sigterm_saves_a_checkpoint_and_exits_for_a_retry(tiny_model_dir, prepared_demo_dir, tmp_path):
    out = tmp_path / "preempted"
    process = _train_cli(tiny_model_dir, prepared_demo_dir, out, 200, extra=["train.save_steps=1000"])
    deadline = time.monotonic() + 180
    for line in process.stdout:
        if "step 1/200" in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    log = process.communicate(timeout=120)[0]
    assert process.returncode != 0, "a preempted task must fail so that Vertex retries it"
    assert "preempted" in log
    saved = latest_complete_checkpoint(out / "checkpoints")
    assert saved is not None and int(saved.name.split("-")[1]) < 200
    assert not (out / "adapter").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--recipe", "nope"], "unknown recipe 'nope'"),
        (["--recipe", "tiny-cpu", "--set", "train.max_prompt_length=512"], "max_prompt_length"),
        (["--recipe", "tiny-cpu", "--model", "/no/such/model"], "not a checkpoint folder"),
    ],
)
def test_cli_user_errors_are_one_line(args, message, prepared_demo_dir, tmp_path, capsys):
    from components.grpo_train.__main__ import main

    code = main([*args, "--data-dir", str(prepared_demo_dir), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_merged_weights_serve_what_base_plus_adapter_computes(warm_tiny_model_dir, prepared_demo_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from components.common.modeling import load_model
    from components.grpo_train.core import train_grpo
    from components.grpo_train.job import TrainingJob

    out = tmp_path / "train"
    outcome = train_grpo(TrainingJob.build("tiny-cpu", prepared_demo_dir, out, model=warm_tiny_model_dir, merge=True,
                                           show_progress=False, overrides=FAST + ["train.max_steps=2", "train.save_steps=2"]))
    assert outcome.merged_dir == str(out / "merged")
    merged = AutoModelForCausalLM.from_pretrained(outcome.merged_dir)  # plain weights: no PEFT needed to serve
    assert type(merged).__name__ == "Gemma3ForConditionalGeneration"
    with_adapter = load_model(warm_tiny_model_dir, dtype="float32", adapter=str(out), merge_adapter=False, device="cpu")
    ids = torch.tensor([[2, 10, 20, 30, 40]])
    base = AutoModelForCausalLM.from_pretrained(warm_tiny_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(merged(input_ids=ids).logits, base(input_ids=ids).logits), "training moved the weights"
