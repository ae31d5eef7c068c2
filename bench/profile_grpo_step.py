"""Where one of our GRPO optimizer steps spends its time (4B shapes, one GPU or several): phases and top kernels.

Runs ``bench_grpo_step``'s "ours" variant (same model, prompts and recipe) for ``--steps`` steps with
timers around each phase (synchronised, so they add up) and, in the last step, ``torch.profiler`` around
a few replays of the captured decode step, one training micro-batch (policy
forward + backward) and one reference log-prob pass. Writes JSON: phase seconds per step and the top kernels
of each profiled region by device time. The last step's phases carry the profiler's overhead: read the time
split from the steps before it (the first also carries warm-up).

    python bench/profile_grpo_step.py --output profile_grpo_step.json [--set train.per_device_train_batch_size=16]
    python bench/profile_grpo_step.py --gpus 2 --steps 4 --output profile_grpo_step_2gpu.json
    python bench/profile_grpo_step.py --tiny --gpus 2 --steps 2 --prompts-per-step 4 --prompt-len 20 \
        --completion-tokens 8                                          # CPU smoke run (2 gloo processes)

``--gpus N`` runs one training process per GPU (torchrun, accumulation divided by N as the pipeline does) and
writes every rank's report under ``ranks``. Its phases include TRL's gathers across ranks (``gather``,
``gather_object``) and the optimizer step; a synchronised timer around a gather also counts the time the rank
waited there for the others.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from components.common.jsonl import write_json
from components.generator.step_timing import sync

TOP_KERNELS = 25


def _top_kernels(prof, limit: int = TOP_KERNELS) -> dict:
    events = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    events.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in events)
    return {
        "device_ms_total": round(total / 1e3, 2),
        "kernels": [{"name": e.key[:120], "calls": e.count, "device_ms": round(e.self_device_time_total / 1e3, 2),
                     "share": round(e.self_device_time_total / total, 3)} for e in events[:limit]],
    }


class PhaseTimer:
    """Synchronised wall time per phase, per optimizer step (step index from the rollout count)."""

    def __init__(self) -> None:
        self.step = 0
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.calls: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.profiles: dict[str, dict] = {}
        self.profile_step = 0  # set by main: the step whose regions are profiled

    def wrap(self, owner, name: str, phase, *, profile: dict[str, int] | None = None):
        """Replace ``owner.name`` with a timed version; ``phase`` is a label or a function of the call's args.

        ``profile`` maps labels to the call (1-based, within the profiled step) run under torch.profiler.
        """
        original = getattr(owner, name)
        profile = profile or {}

        @functools.wraps(original)
        def timed(*args, **kwargs):
            label = phase(*args, **kwargs) if callable(phase) else phase
            self.calls[self.step][label] += 1
            profiled = self.step == self.profile_step and profile.get(label) == self.calls[self.step][label]
            sync()
            started = time.perf_counter()
            with self._profiler() if profiled else contextlib.nullcontext() as prof:
                result = original(*args, **kwargs)
                sync()
            self.seconds[self.step][label] += time.perf_counter() - started
            if profiled:
                self.profiles[label] = _top_kernels(prof)
            return result

        setattr(owner, name, timed)

    @staticmethod
    def _profiler():
        import torch

        return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])


def install(timer: PhaseTimer) -> None:
    import torch
    from transformers import Trainer
    from trl import GRPOTrainer

    from components.generator.engine import StaticBatchGenerator
    from components.grpo_train import rollout

    timer.wrap(rollout.StaticGraphRollout, "__call__", "rollout")
    timer.wrap(StaticBatchGenerator, "_capture", "rollout.capture")
    timer.wrap(StaticBatchGenerator, "_prefill", "rollout.prefill")
    timer.wrap(StaticBatchGenerator, "generate", "rollout.generate")  # capture + prefill + decode
    timer.wrap(GRPOTrainer, "_calculate_rewards", "rewards")
    timer.wrap(GRPOTrainer, "_generate_and_score_completions", "generate_and_score")
    # Reference log-probs run without grad (inside generate_and_score); the policy's with grad (training_step).
    # The first training_step of a step also generates and scores: its second is a plain micro-batch.
    timer.wrap(GRPOTrainer, "_get_per_token_logps_and_entropies",
               lambda *a, **k: "logps.policy" if torch.is_grad_enabled() else "logps.reference",
               profile={"logps.reference": 1})
    timer.wrap(Trainer, "training_step", "training_step", profile={"training_step": 2})
    # Across ranks (no-ops on one process): TRL's gathers of tensors and of Python objects, and the optimizer step.
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from trl.trainer import grpo_trainer

    timer.wrap(Accelerator, "gather", "gather")
    timer.wrap(grpo_trainer, "gather", "gather")
    timer.wrap(grpo_trainer, "gather_object", "gather_object")
    timer.wrap(AcceleratedOptimizer, "step", "optimizer")
    timed_training_step = Trainer.training_step

    def step_aware(self, *args, **kwargs):  # outermost: every phase of optimizer step k is counted under k
        timer.step = self.state.global_step + 1
        return timed_training_step(self, *args, **kwargs)

    Trainer.training_step = step_aware

    original_generate = StaticBatchGenerator.generate

    def generate_then_profile_decode(self, prompts):
        results = original_generate(self, prompts)
        if timer.step == timer.profile_step and "decode_step" not in timer.profiles:
            # the kernels the graph holds (the profiler sees replayed kernels; eager on CPU)
            step = self.graph.replay if self.graph is not None else self._decode_step
            with torch.inference_mode():
                self._prefill(list(prompts) + [prompts[0]] * (self.rows - len(prompts)))  # fresh state, same shapes
                step()  # warm
                sync()
                with PhaseTimer._profiler() as prof:
                    for _ in range(4):
                        step()
                    sync()
            timer.profiles["decode_step"] = _top_kernels(prof)
            timer.profiles["decode_step"]["steps"] = 4
        return results

    StaticBatchGenerator.generate = generate_then_profile_decode


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="medgemma-4b-h100")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override SECTION.FIELD=VALUE")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompts-per-step", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=250)
    parser.add_argument("--completion-tokens", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU smoke run")
    parser.add_argument("--workdir", default="/tmp/bench_grpo_step")
    parser.add_argument("--gpus", type=int, default=1, help="training processes on this machine, one a GPU (torchrun)")
    parser.add_argument("--rank-of", default="", help=argparse.SUPPRESS)  # set for each rank by the --gpus run
    parser.add_argument("--output", default="profile_grpo_step.json")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    import bench_grpo_step as bench

    workdir = Path(a.workdir)
    model_dir = bench.build_checkpoint(workdir, a.tiny)
    if not a.rank_of:
        bench.write_prompts(workdir / "data", model_dir, rows=a.prompts_per_step * (a.steps + 1), mean_tokens=a.prompt_len)
        if a.gpus > 1:
            return profile_on_ranks(argv if argv is not None else sys.argv[1:], a)
    else:
        if a.tiny:  # bench_grpo_step's tiny sizes take the whole step in one micro-batch: split it over the ranks
            completions = a.prompts_per_step * bench.NUM_GENERATIONS
            a.overrides = a.overrides + [f"train.per_device_train_batch_size={completions // a.gpus}",
                                         f"train.gradient_accumulation_steps={a.gpus}"]
    timer = PhaseTimer()
    timer.profile_step = a.steps
    install(timer)
    a.rollout = "static-graph"
    result = bench.run_ours(model_dir, workdir / "data", workdir / "runs" / "profile", a, a.overrides,
                            world_size=a.gpus if a.rank_of else 1)
    report = {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "recipe": a.recipe, "overrides": a.overrides, "settings": result["settings"],
        "step_seconds": result["step_seconds"],
        # training_step includes generate_and_score (first micro-batch of each step), which includes the rollout.
        "phases": {step: {k: round(v, 2) for k, v in phases.items()} for step, phases in timer.seconds.items()},
        "calls": {step: dict(calls) for step, calls in timer.calls.items()},
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "profiles": timer.profiles,
    }
    output = Path(a.output)
    if a.rank_of:
        report["rank"] = int(os.environ["RANK"])  # set by torchrun
        output = Path(a.rank_of).with_suffix(f".rank{report['rank']}.json")
    write_json(output, report)
    print(json.dumps({k: report[k] for k in ("card", "settings", "step_seconds", "phases", "peak_memory_gib")}, indent=1))
    for region, data in timer.profiles.items():
        print(f"\n{region}: {data['device_ms_total']} ms device")
        for k in data["kernels"][:12]:
            print(f"  {k['device_ms']:>9} ms {k['share']:>6} x{k['calls']:<5} {k['name'][:90]}")
    return 0


def profile_on_ranks(argv: list[str], a) -> int:
    """Run this script under torchrun, one process a GPU (the checkpoint and prompts are ready), then put
    the ranks' reports into one."""
    output = Path(a.output)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.gpus}",
               str(Path(__file__).resolve()), *argv, "--rank-of", str(output.resolve())]
    code = subprocess.run(command, check=False).returncode
    if code:
        return code
    ranks = {}
    for rank in range(a.gpus):
        part = output.resolve().with_suffix(f".rank{rank}.json")
        ranks[str(rank)] = json.loads(part.read_text())
        part.unlink()
    write_json(output, {"gpus": a.gpus, "ranks": ranks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
