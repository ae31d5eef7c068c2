"""GRPO + LoRA training on prepared MedQA rows: the notebook's recipe on current TRL, resumable.

Reads top to bottom: job (``TrainingJob``: recipe and settings) -> data -> backend -> model -> trainer -> resume
-> train -> outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from components.common.errors import UserError, choices_error
from components.common.artifacts import PreparedRow, read_rows
from components.common.jsonl import write_json
from components.common.modeling import prefer_expandable_segments, require_liger_kernels
from components.common.recipes import Recipe
from components.common.vllm_engine import text_only_in_trl
from components.grpo_train.checkpoints import latest_complete_checkpoint, make_checkpoint_callbacks
from components.grpo_train.job import ROLLOUTS, TrainingJob
from components.grpo_train.rewards import REWARDS

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("prompt", "answer", "letters")
# Settings the step owns: a recipe must not set them (they depend on where the step runs).
STEP_OWNED_ARGS = ("output_dir", "use_vllm", "reward_weights", "log_completions", "resume_from_checkpoint")
SUMMARY_METRICS = {
    "reward": "reward",
    "reward_std": "reward_std",
    "completion_mean_length": "completions/mean_length",
    "completion_clipped_ratio": "completions/clipped_ratio",
}


@dataclasses.dataclass
class TrainingOutcome:
    adapter_dir: str
    merged_dir: str | None
    global_step: int
    resumed_from: str | None
    backend: str
    metrics: dict[str, float]


def check_train_args(recipe: Recipe) -> None:
    from trl import GRPOConfig

    valid = {f.name for f in dataclasses.fields(GRPOConfig)}
    for key in recipe.train:
        if key in STEP_OWNED_ARGS:
            raise UserError(f"recipe {recipe.name!r}: train.{key} is set by the training step, not the recipe")
        if key not in valid:
            raise choices_error(f"recipe {recipe.name!r} train field", key, valid)


def load_split(data_dir: Path, split: str):
    from datasets import Dataset

    path = data_dir / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"data dir {str(data_dir)!r} has no {split}.jsonl (run the data prep step first)")
    rows = [row.model_dump(mode="json") for row in read_rows(PreparedRow, path)]
    if not rows:
        raise UserError(f"{path}: holds no rows")
    return Dataset.from_list([{c: row[c] for c in TRAIN_COLUMNS} for row in rows])


def _grpo_config(recipe: Recipe, checkpoint_dir: Path, backend: str, reward_weights: list[float], device: str):
    from trl import GRPOConfig

    args: dict[str, Any] = dict(recipe.train)
    report_to = args.pop("report_to", "none")
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if device == "cpu":
        args.update(bf16=False, fp16=False, use_cpu=True)
        if args.get("optim") == "adamw_torch_fused":
            args["optim"] = "adamw_torch"
        if args.pop("use_liger_kernel", False):  # Triton kernels: GPU only; the same math runs unfused
            log.info("use_liger_kernel ignored on CPU")
    elif args.get("use_liger_kernel"):
        require_liger_kernels("train.use_liger_kernel")
    return GRPOConfig(
        output_dir=str(checkpoint_dir),
        use_vllm=backend == "vllm",
        reward_weights=reward_weights,
        log_completions=False,  # TRL would print completions (medical text) to the console
        # TensorBoard is attached by the step with the job's folder (see _callbacks).
        report_to=[r for r in report_to if r not in ("tensorboard", "none")] or "none",
        disable_tqdm=True,
        **args,
    )


def _reward_functions(recipe: Recipe, sample_path: Path | None, sample_size: int):
    weighted = [(name, w) for name, w in dataclasses.asdict(recipe.rewards).items() if w > 0]
    funcs = [REWARDS[name] for name, _ in weighted]
    if sample_path is not None and sample_size > 0:
        funcs[0] = _recording(funcs[0], sample_path, sample_size)
    return funcs, [w for _, w in weighted]


def _recording(reward, sample_path: Path, cap: int):
    """Wrap a reward so the first ``cap`` completions go to a file artifact (opt-in; never to logs)."""
    import functools

    written = 0

    @functools.wraps(reward)
    def recorded(completions, **columns):
        nonlocal written
        scores = reward(completions, **columns)
        if written < cap:
            from components.common.answers import completion_text

            with open(sample_path, "a", encoding="utf-8") as handle:
                for i, completion in enumerate(completions[: cap - written]):
                    handle.write(json.dumps({"answer": columns["answer"][i], "reward": scores[i],
                                             "completion": completion_text(completion)}) + "\n")
                    written += 1
        return scores

    return recorded


def _callbacks(checkpoint_dir: Path, tensorboard_dir: Path | None, max_steps: int, show_progress: bool):
    from transformers import TrainerCallback

    mark_complete, save_on_preemption = make_checkpoint_callbacks(checkpoint_dir)
    callbacks = [mark_complete, save_on_preemption]
    if tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(tensorboard_dir))))

    class RewardProgress(TrainerCallback):
        """A progress bar with the reward (local runs) and one compact log line per logging step."""

        def __init__(self) -> None:
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if show_progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="GRPO", unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            if self.bar is not None:
                self.bar.set_postfix(reward=f"{logs['reward']:.3f}", refresh=False)
            log.info("step %d/%d reward=%.3f reward_std=%.3f completion_len=%.1f", state.global_step, state.max_steps,
                     logs["reward"], logs.get("reward_std", float("nan")), logs.get("completions/mean_length", float("nan")))

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    callbacks.append(RewardProgress())
    step_timer = make_step_timer()
    callbacks.append(step_timer)
    return callbacks, save_on_preemption, step_timer


def make_step_timer():
    """A callback that records the wall time of each optimizer step (generation, scoring, backward, optimizer)
    in ``.seconds``: the training summary's ``step_seconds``, and what the GRPO step benchmark reports."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.last = None
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if self.last is None:  # the first step's clock starts at its first micro-batch
                self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.seconds.append(round(now - self.last, 2))
            self.last = now

    return StepTimer()


def _fast_rollout(config, backend: str, device: str, rollout: str):
    """Our CUDA-graph generator for the completions (rollout "auto" on a GPU with the transformers backend), or
    None for TRL's own path: vLLM, or the CPU, where "auto" keeps TRL's generate for the tiny local run.
    """
    if rollout not in ROLLOUTS:
        raise choices_error("rollout", rollout, ROLLOUTS)
    if backend != "transformers" or rollout == "trl" or (rollout == "auto" and device != "cuda"):
        return None
    from components.grpo_train.rollout import StaticGraphRollout, unsupported_reason

    reason = unsupported_reason(config)
    if reason:
        log.warning("completions through TRL's generate (slow): our generator does not support this recipe (%s)", reason)
        return None
    log.info("completions through the static-cache CUDA-graph generator (one pass per step)")
    return StaticGraphRollout(config)


def _skip_lora_input_casts(model) -> int:
    """Let LoRA layers take their bf16 input as it is; returns how many layers were switched.

    PEFT keeps adapters in fp32 and casts each LoRA layer's input up to fp32; under bf16 autocast the matmul then
    casts it straight back. The result is the same, but it costs two copies of every LoRA input per pass, forward
    and backward (the largest copy kernels in the H200 training profile). Only for runs where every forward with
    adapters active is under TRL's autocast: our rollout and vLLM generate without them (TRL's own generate
    does not use autocast, and needs the casts).
    """
    from components.grpo_train.rollout import lora_layers

    layers = lora_layers(model)
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def _summary_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of each training metric we report."""
    metrics: dict[str, float] = {}
    for name, key in SUMMARY_METRICS.items():
        values = [entry[key] for entry in log_history if key in entry]
        if values:
            metrics[name] = float(values[-1])
    return metrics


def train_grpo(job: TrainingJob) -> TrainingOutcome:
    """Train a LoRA adapter with GRPO as ``job`` says; resume from the newest complete checkpoint in its output folder.

    ``job.rollout``: how completions are generated without vLLM: "static-graph" (our CUDA-graph generator),
    "trl" (TRL's ``generate``), "auto" (the first on a GPU, the second on CPU).
    """
    import torch
    from accelerate.utils import gather_object
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    from components.common.modeling import choose_generation_backend, default_device, load_model, load_processor
    from components.common.secrets import resolve_hf_token

    spec, model_id, completion_sample_size = job.recipe, job.model_id, job.completion_sample_size
    check_train_args(spec)
    token = resolve_hf_token(job.hf_token_secret or None)
    data_dir, output_dir = Path(job.data_dir), Path(job.output_dir)
    checkpoint_dir, adapter_dir = job.checkpoints, output_dir / "adapter"
    output_dir.mkdir(parents=True, exist_ok=True)  # never wiped: it holds the checkpoints we resume from

    train_dataset = load_split(data_dir, "train")
    eval_dataset = load_split(data_dir, "validation") if spec.train.get("eval_strategy", "no") != "no" else None
    backend = choose_generation_backend(spec.generation_backend)
    device = default_device()
    if device == "cuda" and backend == "transformers":
        prefer_expandable_segments()
    log.info("recipe=%s model=%s backend=%s device=%s train_rows=%d", spec.name, model_id, backend, device, len(train_dataset))

    reward_funcs, reward_weights = _reward_functions(
        spec, output_dir / "completions_sample.jsonl" if completion_sample_size else None, completion_sample_size
    )
    config = _grpo_config(spec, checkpoint_dir, backend, reward_weights, device)
    tensorboard_dir = Path(job.tensorboard_dir) if job.tensorboard_dir else None
    torch.manual_seed(config.seed)
    processor = load_processor(model_id, token=token)
    policy = load_model(model_id, dtype=spec.model.dtype, attn_implementation=spec.model.attn_implementation,
                        device=device, token=token)
    policy.train()
    lora = LoraConfig(task_type="CAUSAL_LM", r=spec.lora.r, lora_alpha=spec.lora.alpha,
                      lora_dropout=spec.lora.dropout, target_modules=spec.lora.target_modules)
    callbacks, preemption, step_timer = _callbacks(checkpoint_dir, tensorboard_dir, config.max_steps, job.show_progress)
    rollout_func = _fast_rollout(config, backend, device, job.rollout)
    with text_only_in_trl() if backend == "vllm" else contextlib.nullcontext():
        trainer = GRPOTrainer(model=policy, reward_funcs=reward_funcs, args=config, train_dataset=train_dataset,
                              eval_dataset=eval_dataset, processing_class=processor, peft_config=lora,
                              callbacks=callbacks, rollout_func=rollout_func)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; RewardProgress logs one line instead
    if config.bf16 and (rollout_func is not None or backend == "vllm"):
        log.info("LoRA inputs stay bf16 under autocast (%d layers)", _skip_lora_input_casts(trainer.model))

    resume = latest_complete_checkpoint(checkpoint_dir)
    log.info("resuming from %s" % resume if resume else "no complete checkpoint found: starting from step 0")
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    # Every rank's rollout times: a rank that samples slower holds the others at the next gather, which shows up
    # as training time on rank 0. A collective, so before any rank can leave on preemption.
    rollout_by_rank = (gather_object([[round(t, 2) for t in rollout_func.seconds]])
                       if rollout_func is not None and trainer.accelerator.num_processes > 1 else None)
    if preemption.preempted:
        raise SystemExit("preempted: checkpoint saved; the retried task resumes from it")
    trainer.save_model(str(adapter_dir))
    processor.save_pretrained(str(adapter_dir))
    metrics = _summary_metrics(trainer.state.log_history)
    merged_dir = _merge(model_id, adapter_dir, output_dir / "merged", processor, spec, token) if job.merge else None
    outcome = TrainingOutcome(adapter_dir=str(adapter_dir), merged_dir=str(merged_dir) if merged_dir else None,
                              global_step=trainer.state.global_step, resumed_from=str(resume) if resume else None,
                              backend=backend, metrics=metrics)
    write_json(adapter_dir / "training_summary.json", {
        "base_model": model_id, "recipe": spec.name, "recipe_settings": spec.to_dict(),
        "global_step": outcome.global_step, "resumed_from": outcome.resumed_from, "backend": backend,
        "train_seconds_this_attempt": round(time.monotonic() - started, 1), "metrics": metrics,
        "rollout": "static-graph" if rollout_func is not None else backend, "step_seconds": step_timer.seconds,
        "rollout_seconds": [round(t, 2) for t in rollout_func.seconds] if rollout_func is not None else None,
        "rollout_phase_seconds": rollout_func.phase_seconds if rollout_func is not None else None,
        "rollout_seconds_by_rank": rollout_by_rank,
    })
    log.info("adapter written to %s after %d steps (final reward %s)", adapter_dir, outcome.global_step, metrics.get("reward"))
    return outcome


def _merge(model_id: str, adapter_dir: Path, merged_dir: Path, processor, spec: Recipe, token: str | None) -> Path:
    """Base + adapter merged into plain bf16 weights, the layout serving stacks (vLLM) load directly."""
    from components.common.modeling import load_model, save_for_serving

    merged = load_model(model_id, dtype=spec.model.dtype, attn_implementation=spec.model.attn_implementation,
                        adapter=str(adapter_dir), merge_adapter=True, token=token)
    return save_for_serving(merged, processor, merged_dir)
