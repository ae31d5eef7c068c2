"""Data-parallel training on every GPU of a machine (torchrun), with one writer of the final outputs.

One GPU, or none: ``train_grpo(job)`` in this process. N > 1 GPUs: the job, split for N processes
(``TrainingJob.data_parallel``: the global batch stays the recipe's), is written to a file and every process
torchrun starts reads it: ``python -m components.grpo_train --job JOB.json``.
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
from components.grpo_train.job import TrainingJob

log = logging.getLogger(__name__)

TRAINING_CLI_MODULE = "components.grpo_train"
SUMMARY_FILE = "training_summary.json"
JOB_FILE = "training_job.json"


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


def torchrun_command(job_file: str | Path, nproc_per_node: int, rendezvous: Rendezvous = Rendezvous()) -> list[str]:
    """``python -m torch.distributed.run ... -m components.grpo_train --job JOB.json`` (torchrun, as this interpreter)."""
    if nproc_per_node < 1:
        raise UserError(f"nproc_per_node must be at least 1, got {nproc_per_node}")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if rendezvous.nnodes == 1:
        command.append("--standalone")  # a free local port, no address to agree on
    else:
        command += [f"--nnodes={rendezvous.nnodes}", f"--node-rank={rendezvous.node_rank}",
                    f"--master-addr={rendezvous.master_addr}", f"--master-port={rendezvous.master_port}"]
    return command + ["-m", TRAINING_CLI_MODULE, "--job", str(job_file)]


def run_job_under_torchrun(job: TrainingJob, nproc_per_node: int, rendezvous: Rendezvous = Rendezvous()) -> None:
    """Split ``job`` over every process of every node, hand it to torchrun as a file, wait for the processes."""
    split = job.data_parallel(nproc_per_node * rendezvous.nnodes).model_copy(update={"show_progress": False})
    log.info("node %d of %d, %d processes: data-parallel training (train.gradient_accumulation_steps=%s)",
             rendezvous.node_rank, rendezvous.nnodes, nproc_per_node, split.recipe.train.get("gradient_accumulation_steps"))
    with tempfile.TemporaryDirectory(prefix="grpo-job-") as folder:
        run_torchrun(torchrun_command(split.write(Path(folder) / JOB_FILE), nproc_per_node, rendezvous))


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


def record_outcome(tuned_model, training_metrics, outcome, job: TrainingJob) -> None:
    """The training step's KFP artifact metadata and metrics (the same for one VM and for several)."""
    tuned_model.metadata.update({
        "base_model": job.model_id, "recipe": job.recipe.name, "global_step": outcome.global_step,
        "backend": outcome.backend, "final_reward": outcome.metrics.get("reward"), "adapter_dir": "adapter",
        "merged_dir": "merged" if outcome.merged_dir else "",
    })
    for name, value in outcome.metrics.items():
        training_metrics.log_metric(name, value)
    training_metrics.log_metric("global_step", outcome.global_step)


def train_on_this_machine(job: TrainingJob, gpus: int | None = None):
    """Train ``job`` on all GPUs here (``gpus``: default, every visible one); returns the ``TrainingOutcome``."""
    gpus = visible_gpu_count() if gpus is None else gpus
    if gpus <= 1:
        from components.grpo_train.core import train_grpo

        return train_grpo(job)
    run_job_under_torchrun(job, gpus)
    return outcome_from_outputs(job.output_dir)


def process_rank() -> int:
    """This process's global rank under torchrun (``RANK``), 0 when not launched by it; read when called."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def job_of_this_rank(job: TrainingJob) -> Iterator[TrainingJob]:
    """The job this process runs under torchrun (or alone).

    Rank 0 (or a lone process): ``job`` itself. Other ranks: the job writing into a private scratch folder,
    deleted afterwards, whose ``checkpoints`` links to the shared one, so that every rank resumes from the same
    checkpoint and writes its own RNG state there (the Trainer saves weights and optimizer from rank 0 only),
    while the adapter, summary, TensorBoard events and completion sample come from rank 0 alone.
    """
    if process_rank() == 0:
        yield job
        return
    shared_checkpoints = job.checkpoints
    shared_checkpoints.mkdir(parents=True, exist_ok=True)  # a link to a missing folder breaks makedirs
    scratch = Path(tempfile.mkdtemp(prefix=f"grpo-rank{process_rank()}-"))
    (scratch / "checkpoints").symlink_to(shared_checkpoints.resolve(), target_is_directory=True)
    try:
        yield job.for_secondary_rank(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # removes the link, never the shared checkpoints
