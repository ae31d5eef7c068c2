"""Data-parallel training on every GPU of a machine (torchrun), with one writer of the final outputs.

One GPU, or none: train in this process, as before. N > 1 GPUs: run the training CLI
(``python -m components.grpo_train``) under torchrun with N processes per node. The global batch (prompts per
optimizer step) stays the recipe's: gradient accumulation is divided by the number of processes, so
``per_device_train_batch_size x gradient_accumulation_steps x processes`` does not change, and neither do the
generation batch or TRL's divisibility rules (which held on one process).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.common.errors import UserError
from components.common.recipes import Recipe, load_recipe

log = logging.getLogger(__name__)

TRAINING_CLI_MODULE = "components.grpo_train"
SUMMARY_FILE = "training_summary.json"


@dataclass(frozen=True)
class Rendezvous:
    """Where the processes of all nodes meet: one node needs nothing (torchrun --standalone)."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = ""
    master_port: int = 0


def visible_gpu_count() -> int:
    """CUDA devices this process sees (0 without CUDA); asked at run time, never at import."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def data_parallel_overrides(recipe: Recipe, world_size: int) -> list[str]:
    """Recipe overrides that keep the recipe's global batch when ``world_size`` processes train together."""
    if world_size < 1:
        raise UserError(f"world_size must be at least 1, got {world_size}")
    train = recipe.train
    if world_size == 1:
        return []
    accumulation = int(train.get("gradient_accumulation_steps", 1))  # TrainingArguments' default
    if accumulation % world_size:
        raise UserError(
            f"recipe {recipe.name!r}: train.gradient_accumulation_steps={accumulation} is not divisible by the "
            f"{world_size} training processes (GPUs x nodes): use a GPU count that divides it, or set it to a "
            f"multiple of {world_size} (which changes the global batch)"
        )
    overrides = [f"train.gradient_accumulation_steps={accumulation // world_size}"]
    if train.get("steps_per_generation") is not None:
        steps = int(train["steps_per_generation"])
        if steps % world_size:
            raise UserError(f"recipe {recipe.name!r}: train.steps_per_generation={steps} is not divisible by the "
                            f"{world_size} training processes")
        overrides.append(f"train.steps_per_generation={steps // world_size}")
    if train.get("generation_batch_size") is not None:
        # TRL's rule (GRPOConfig): the generation batch splits into whole per-process micro-batches.
        per_step = int(train.get("per_device_train_batch_size", 8)) * world_size
        if int(train["generation_batch_size"]) % per_step:
            raise UserError(f"recipe {recipe.name!r}: train.generation_batch_size={train['generation_batch_size']} "
                            f"is not divisible by per_device_train_batch_size x {world_size} processes ({per_step})")
    if "ddp_find_unused_parameters" not in train:
        # LoRA "all-linear" also adapts Gemma 3's vision tower, which text prompts never reach: DDP must not
        # wait for gradients of those parameters.
        overrides.append("train.ddp_find_unused_parameters=true")
    return overrides


def training_cli_args(
    recipe: str,
    data_dir: str,
    output_dir: str,
    *,
    model: str | None = None,
    overrides: list[str] | None = None,
    merge: bool = False,
    hf_token_secret: str = "",
    completion_sample_size: int = 0,
    rollout: str = "auto",
) -> list[str]:
    """The arguments of ``python -m components.grpo_train`` for these settings (no progress bar: logs only)."""
    args = ["--recipe", recipe, "--data-dir", str(data_dir), "--output-dir", str(output_dir), "--no-progress"]
    if rollout != "auto":
        args += ["--rollout", rollout]
    if model:
        args += ["--model", model]
    for override in overrides or []:
        args += ["--set", override]
    if merge:
        args.append("--merge")
    if hf_token_secret:
        args += ["--hf-token-secret", hf_token_secret]
    if completion_sample_size:
        args += ["--completion-sample-size", str(completion_sample_size)]
    return args


def torchrun_command(cli_args: list[str], nproc_per_node: int, rendezvous: Rendezvous = Rendezvous()) -> list[str]:
    """``python -m torch.distributed.run ... -m components.grpo_train ARGS`` (torchrun, as this interpreter)."""
    if nproc_per_node < 1:
        raise UserError(f"nproc_per_node must be at least 1, got {nproc_per_node}")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if rendezvous.nnodes == 1:
        command.append("--standalone")  # a free local port, no address to agree on
    else:
        command += [f"--nnodes={rendezvous.nnodes}", f"--node-rank={rendezvous.node_rank}",
                    f"--master-addr={rendezvous.master_addr}", f"--master-port={rendezvous.master_port}"]
    return command + ["-m", TRAINING_CLI_MODULE, *cli_args]


def run_torchrun(command: list[str]) -> None:
    """Run torchrun; a SIGTERM to this process (Vertex preemption) goes on to it, so the ranks save and stop."""
    log.info("launching: %s", " ".join(command))
    process = subprocess.Popen(command)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        raise RuntimeError(f"distributed training exited with code {code} (the failing rank's error is logged above)")


def outcome_from_outputs(output_dir: str | Path):
    """The ``TrainingOutcome`` of a finished run, read back from what rank 0 wrote."""
    from components.grpo_train.core import TrainingOutcome

    output_dir = Path(output_dir)
    summary_path = output_dir / "adapter" / SUMMARY_FILE
    if not summary_path.is_file():
        raise RuntimeError(f"training finished without writing {summary_path}")
    summary = json.loads(summary_path.read_text())
    merged = output_dir / "merged"
    return TrainingOutcome(adapter_dir=str(output_dir / "adapter"), merged_dir=str(merged) if merged.is_dir() else None,
                           global_step=summary["global_step"], resumed_from=summary["resumed_from"],
                           backend=summary["backend"], metrics=summary["metrics"])


def record_outcome(tuned_model, training_metrics, outcome, *, base_model: str, recipe: str) -> None:
    """The training step's KFP artifact metadata and metrics (the same for one VM and for several)."""
    tuned_model.metadata.update({
        "base_model": base_model, "recipe": recipe, "global_step": outcome.global_step, "backend": outcome.backend,
        "final_reward": outcome.metrics.get("reward"), "adapter_dir": "adapter",
        "merged_dir": "merged" if outcome.merged_dir else "",
    })
    for name, value in outcome.metrics.items():
        training_metrics.log_metric(name, value)
    training_metrics.log_metric("global_step", outcome.global_step)


def train_on_this_machine(
    recipe: str,
    data_dir: str,
    output_dir: str,
    *,
    model: str | None = None,
    overrides: list[str] | None = None,
    merge: bool = False,
    hf_token_secret: str = "",
    completion_sample_size: int = 0,
    gpus: int | None = None,
    rollout: str = "auto",
):
    """Train on all GPUs here (``gpus``: default, every visible one); returns the ``TrainingOutcome``.
    ``rollout``: as ``train_grpo``'s."""
    gpus = visible_gpu_count() if gpus is None else gpus
    overrides = list(overrides or [])
    if gpus <= 1:
        from components.common.secrets import resolve_hf_token
        from components.grpo_train.core import train_grpo

        return train_grpo(recipe, data_dir, output_dir, model=model, overrides=overrides, merge=merge,
                          token=resolve_hf_token(hf_token_secret or None), completion_sample_size=completion_sample_size,
                          rollout=rollout)
    data_parallel = data_parallel_overrides(load_recipe(recipe, overrides), gpus)
    log.info("%d GPUs: data-parallel training, one process per GPU (%s)", gpus, ", ".join(data_parallel))
    overrides += data_parallel
    run_torchrun(torchrun_command(
        training_cli_args(recipe, data_dir, output_dir, model=model, overrides=overrides, merge=merge,
                          hf_token_secret=hf_token_secret, completion_sample_size=completion_sample_size,
                          rollout=rollout),
        gpus,
    ))
    return outcome_from_outputs(output_dir)


def process_rank() -> int:
    """This process's global rank under torchrun (``RANK``), 0 when not launched by it; read when called."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def outputs_of_this_rank(output_dir: str | Path) -> Iterator[Path]:
    """The folder this process hands to ``train_grpo`` as its output folder.

    Rank 0 (or a lone process): ``output_dir`` itself. Other ranks: a private scratch folder, deleted
    afterwards, whose ``checkpoints`` links to the shared one, so that every rank resumes from the same
    checkpoint and writes its own RNG state there (the Trainer saves weights and optimizer from rank 0 only),
    while the adapter, summary, tensorboard and completion sample come from rank 0 alone.
    """
    output_dir = Path(output_dir)
    if process_rank() == 0:
        yield output_dir
        return
    shared_checkpoints = output_dir / "checkpoints"
    shared_checkpoints.mkdir(parents=True, exist_ok=True)  # a link to a missing folder breaks makedirs
    scratch = Path(tempfile.mkdtemp(prefix=f"grpo-rank{process_rank()}-"))
    (scratch / "checkpoints").symlink_to(shared_checkpoints.resolve(), target_is_directory=True)
    tensorboard = os.environ.pop("AIP_TENSORBOARD_LOG_DIR", None)  # core would open an event file there
    try:
        yield scratch
    finally:
        if tensorboard is not None:
            os.environ["AIP_TENSORBOARD_LOG_DIR"] = tensorboard
        shutil.rmtree(scratch, ignore_errors=True)  # removes the link, never the shared checkpoints
