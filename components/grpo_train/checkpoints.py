"""Checkpoints that count only once complete, found again after a restart, and saved on preemption."""

from __future__ import annotations

import hashlib
import logging
import re
import signal
from pathlib import Path

from components.common.errors import UserError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def run_checkpoint_dir(checkpoint_root: str, pipeline_run: str, *task_identity: str) -> str:
    """``ROOT/RUN/DIGEST``: one folder per pipeline run and training task, the same for every retry of that task.

    ``task_identity``: what the task trains (data path, model, recipe...); its digest tells apart several
    training tasks of one run and never changes between retries.
    """
    run = re.sub(r"[^A-Za-z0-9_.-]+", "-", pipeline_run).strip("-.")
    if not run:
        raise UserError("pipeline_run must name the run when checkpoint_root is set (its checkpoints are kept per run)")
    digest = hashlib.sha256("\0".join(task_identity).encode()).hexdigest()[:16]
    return f"{checkpoint_root.rstrip('/')}/{run}/{digest}"


def latest_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` holding the completion marker; half-written ones are ignored."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [p for p in checkpoint_dir.iterdir() if checkpoint_step(p) is not None and (p / COMPLETE_MARKER).is_file()]
    return max(complete, key=checkpoint_step, default=None)


def make_checkpoint_callbacks(checkpoint_dir: Path):
    """Callbacks: mark each saved checkpoint complete (marker written last); save and stop on SIGTERM."""
    from transformers import TrainerCallback

    class MarkCheckpointComplete(TrainerCallback):
        # Trainer calls on_save after the checkpoint folder (weights, optimizer, RNG, state) is written.
        def on_save(self, args, state, control, **kwargs):
            from accelerate import PartialState

            # Several processes: each writes its own RNG state, and no barrier precedes on_save; the marker
            # comes after all of them, from the one process that saves (args.should_save).
            PartialState().wait_for_everyone()
            path = checkpoint_dir / f"checkpoint-{state.global_step}"
            if args.should_save and path.is_dir():
                (path / COMPLETE_MARKER).write_text(f"{state.global_step}\n")
                log.info("checkpoint %s complete", path.name)

    class SaveOnPreemption(TrainerCallback):
        """Vertex sends SIGTERM before taking a VM back: finish the step, save, stop."""

        def __init__(self) -> None:
            self.preempted = False
            self._previous = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

        def on_train_end(self, args, state, control, **kwargs):
            if self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)

        def _on_sigterm(self, signum, frame):
            log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
            self.preempted = True

        def on_step_end(self, args, state, control, **kwargs):
            if self.preempted:
                control.should_save = True
                control.should_training_stop = True

    return MarkCheckpointComplete(), SaveOnPreemption()
