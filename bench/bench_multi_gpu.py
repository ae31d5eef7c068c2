"""GRPO training on 1 GPU vs N GPUs of one VM: optimizer-step throughput and the per-step loss/reward curve.

Each GPU count runs in its own process through ``components.grpo_train.launch.train_on_this_machine``, the
same call the pipeline's training task makes (torchrun with one process per GPU when N > 1, accumulation
divided by N so each optimizer step sees the same prompts). Same recipe, data and seed for every N.

Two workloads:
  - default: random-init Gemma-3-4B with MedGemma-4B's shapes and ~250-token prompts (``bench_grpo_step``'s
    checkpoint and prompts), recipe ``medgemma-4b-h100`` (256 completions x 512 tokens a step): throughput.
    Random weights earn reward 0, so this curve only shows that both runs do the same work;
  - ``--tiny``: the warm-started tiny model on the bundled demo data, recipe ``tiny-cpu`` (64 completions a
    step, split 32 x 2): a model that learns, for comparing the reward/loss curves at 1 vs N GPUs.

    python bench/bench_multi_gpu.py --gpus 1,2 --steps 9 --output bench/results/multi_gpu_h200x2.json
    python bench/bench_multi_gpu.py --tiny --gpus 1,2 --steps 20 --output bench/results/multi_gpu_tiny_h200x2.json
    python bench/bench_multi_gpu.py --tiny --gpus 1,2 --steps 2                   # CPU smoke run (2 processes)

Output JSON: ``cards`` holds each GPU's matmul and memory-copy rate (measured first); ``runs[N]`` holds
``seconds_per_step`` (median of the steps after the first, which carries warm-up), ``optimizer_steps_per_s``,
``step_seconds``, ``rollout_seconds_by_rank`` (per step) and ``curve`` (per step: loss, reward, reward_std);
``speedup[N]`` is seconds_per_step at 1 GPU / at N; ``curve_max_abs_diff[N]`` compares N's curve with 1's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# No evaluation and no vLLM inside the timed steps; one checkpoint at the end holds the log history.
COMMON_OVERRIDES = ["train.eval_strategy='no'", "train.eval_on_start=false", "train.report_to=none",
                    "train.logging_steps=1", "train.save_strategy=steps", "train.seed=42"]
TINY_OVERRIDES = ["train.per_device_train_batch_size=32", "train.gradient_accumulation_steps=2"]  # = 64 x 1
CURVE_KEYS = ("loss", "reward", "reward_std", "step_time")


def prepare(workdir: Path, tiny: bool) -> tuple[Path, Path, str]:
    """(model dir, prepared data dir, recipe), built once per workdir."""
    if tiny:
        from components.data_prep.core import prepare_medqa
        from components.demo_data import bundled_demo_dir
        from components.tiny_model.core import build_tiny_model, warm_start

        model_dir, data_dir = workdir / "tiny_model", workdir / "tiny_data"
        if not (model_dir / "READY").is_file():
            build_tiny_model(model_dir)
            warm_start(model_dir)
            (model_dir / "READY").write_text("ok\n")
        if not (data_dir / "train.jsonl").is_file():
            prepare_medqa(str(bundled_demo_dir()), data_dir, tokenizer=str(model_dir), val_size=40, seed=42)
        return model_dir, data_dir, "tiny-cpu"
    from bench_grpo_step import build_checkpoint, write_prompts

    model_dir, data_dir = build_checkpoint(workdir, tiny=False), workdir / "data"
    if not (data_dir / "train.jsonl").is_file():
        write_prompts(data_dir, model_dir, rows=1024, mean_tokens=250)  # 64 prompts a step: 16 steps
    return model_dir, data_dir, "medgemma-4b-h100"


def run_one(a) -> dict:
    """One GPU count, in this process (the driver starts one per count): train, then read the log history."""
    from components.grpo_train.job import TrainingJob
    from components.grpo_train.launch import train_on_this_machine

    model_dir, data_dir, recipe = prepare(Path(a.workdir), a.tiny)
    out = Path(a.workdir) / "runs" / f"gpus{a.run_one}"
    if out.exists():
        import shutil

        shutil.rmtree(out)  # a fresh start, never a resume
    overrides = COMMON_OVERRIDES + [f"train.max_steps={a.steps}", f"train.save_steps={a.steps}"]
    overrides += (TINY_OVERRIDES if a.tiny else ["generation_backend=transformers"]) + a.set
    started = time.perf_counter()
    job = TrainingJob.build(recipe, data_dir, out, model=str(model_dir), overrides=overrides)
    outcome = train_on_this_machine(job, gpus=a.run_one)
    wall = time.perf_counter() - started
    state = json.loads((out / "checkpoints" / f"checkpoint-{a.steps}" / "trainer_state.json").read_text())
    curve = [{"step": e["step"], **{k: e[k] for k in CURVE_KEYS if k in e}}
             for e in state["log_history"] if "reward" in e]
    steps = [e["step_time"] for e in curve if "step_time" in e]
    timed = steps[1:] or steps
    per_step = statistics.median(timed) if timed else None
    return {"gpus": a.run_one, "recipe": recipe, "overrides": overrides, "global_step": outcome.global_step,
            "wall_seconds": round(wall, 1), "step_seconds": [round(s, 3) for s in steps],
            "seconds_per_step": round(per_step, 3) if per_step else None,
            "optimizer_steps_per_s": round(1 / per_step, 4) if per_step else None,
            **rollout_report(json.loads((out / "adapter" / "training_summary.json").read_text())), "curve": curve}


def rollout_report(summary: dict) -> dict:
    """The rollout's split (below) and each rank's rollout seconds per step (where a slower rank holds the others)."""
    by_rank = summary.get("rollout_seconds_by_rank") or ([summary["rollout_seconds"]] if summary.get("rollout_seconds") else [])
    return {"rollout_split": rollout_split(summary),
            "rollout_seconds_by_rank": [[round(s, 3) for s in rank] for rank in by_rank]}


def rollout_split(summary: dict) -> dict | None:
    """Rank 0's rollout per step (median over the steps after the first): its phases, and the whole call."""
    calls, phases = summary.get("rollout_seconds"), summary.get("rollout_phase_seconds")
    if not calls or not phases:  # TRL's rollout, or a summary from before the phases were recorded
        return None
    later = slice(1, None) if len(calls) > 1 else slice(None)
    split = {name: round(statistics.median(p[name] for p in phases[later]), 3) for name in phases[0]}
    split["whole_call"] = round(statistics.median(calls[later]), 3)
    by_rank = summary.get("rollout_seconds_by_rank")
    if by_rank:  # a rank that samples slower holds the others at the next gather
        split["whole_call_by_rank"] = [round(statistics.median(c[later]), 3) for c in by_rank]
    return split


def card_speeds() -> list[dict]:
    """Each visible GPU's bf16 matmul rate and device-memory copy rate, ~2 s each: a data-parallel step goes at the
    pace of its slowest card, the 1-GPU run at that of the first."""
    import torch

    speeds = []
    for index in range(torch.cuda.device_count()):
        with torch.cuda.device(index):
            a, b = (torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda") for _ in range(2))
            source = torch.empty(2**30, dtype=torch.uint8, device="cuda")
            target = torch.empty_like(source)

            def seconds(work, repeats: int) -> float:
                work()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    work()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / 1000

            matmul = seconds(lambda: a @ b, 1000)
            copy = seconds(lambda: target.copy_(source), 500)
            speeds.append({"gpu": index, "name": torch.cuda.get_device_name(index),
                           "matmul_tflops": round(2 * 8192**3 * 1000 / matmul / 1e12, 1),
                           "copy_gb_per_s": round(2 * 2**30 * 500 / copy / 1e9, 1)})  # read + write
            del a, b, source, target
            torch.cuda.empty_cache()
    return speeds


def compare(runs: dict[str, dict]) -> dict:
    base = runs.get("1")
    result: dict = {"speedup": {}, "curve_max_abs_diff": {}}
    if not base:
        return result
    for gpus, run in runs.items():
        if gpus == "1":
            continue
        if base["seconds_per_step"] and run["seconds_per_step"]:
            result["speedup"][gpus] = round(base["seconds_per_step"] / run["seconds_per_step"], 3)
        diffs = {}
        for key in ("loss", "reward"):
            pairs = [(x[key], y[key]) for x, y in zip(base["curve"], run["curve"]) if key in x and key in y]
            diffs[key] = round(max((abs(x - y) for x, y in pairs), default=0.0), 4)
        result["curve_max_abs_diff"][gpus] = diffs
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="1,2", help="GPU counts to run, comma-separated (default 1,2)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (default 4)")
    parser.add_argument("--tiny", action="store_true", help="the tiny warm-started model on demo data (curves)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every run, e.g. train.ddp_broadcast_buffers=false (repeatable)")
    parser.add_argument("--workdir", default="/tmp/bench_multi_gpu")
    parser.add_argument("--output", default="bench_multi_gpu.json")
    parser.add_argument("--run-one", type=int, help=argparse.SUPPRESS)  # child process: one GPU count
    parser.add_argument("--card-speeds", action="store_true", help=argparse.SUPPRESS)  # child process: probe the GPUs
    a = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.run_one is not None:
        result = run_one(a)
        Path(a.workdir, "results").mkdir(parents=True, exist_ok=True)
        Path(a.workdir, "results", f"gpus{a.run_one}.json").write_text(json.dumps(result))
        return 0
    if a.card_speeds:
        print(json.dumps(card_speeds()))
        return 0

    import torch

    prepare(Path(a.workdir), a.tiny)  # once, before any timed run
    # In a child process, so that this one holds no GPU memory during the runs.
    cards = json.loads(subprocess.run([sys.executable, __file__, "--card-speeds"], check=True, capture_output=True,
                                      text=True).stdout.splitlines()[-1]) if torch.cuda.is_available() else []
    runs = {}
    for gpus in [int(g) for g in a.gpus.split(",")]:
        command = [sys.executable, __file__, "--run-one", str(gpus), "--steps", str(a.steps), "--workdir", a.workdir]
        command += [f"--set={override}" for override in a.set]
        # Show each run only its GPUs: one process seeing two would get nn.DataParallel, which TRL refuses.
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(gpus)))} if torch.cuda.is_available() else None
        subprocess.run(command + (["--tiny"] if a.tiny else []), check=True, env=env)
        runs[str(gpus)] = json.loads(Path(a.workdir, "results", f"gpus{gpus}.json").read_text())
    report = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "visible_gpus": torch.cuda.device_count(), "torch": torch.__version__, "workload": "tiny" if a.tiny else "4b",
        "steps": a.steps, "cards": cards, **compare(runs), "runs": runs,
    }
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("device", "speedup", "curve_max_abs_diff")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
