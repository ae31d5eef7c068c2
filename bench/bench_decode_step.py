"""Cost of one captured decode step of our generator against the number of rows.

A data-parallel rollout on N GPUs gives each GPU 1/N of the rows, so what limits its speed-up is the part of
a decode step that does not shrink with the rows (every weight read once, one launch per kernel). Timing the
step at a few row counts splits it into ``fixed_ms + per_row_ms * rows`` (least squares); ``--profile`` adds
each step's kernels with their device time. Each row count gets a new generator, as each rollout does.

    python bench/bench_decode_step.py --rows 64,128,256 --liger --profile --output bench/results/decode_step_h100.json
    python bench/bench_decode_step.py --tiny --rows 2,4 --steps 4      # CPU smoke run

(A torch.compile'd step was measured with this script at commit 045a3d0 and removed: slower, see
docs/performance.md.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_eval import EOS_IDS, PAD_ID, build_model, make_prompts, peak_gib, reset_peak, run_header, sync


def time_decode_step(model, prompts, *, rows: int, new_tokens: int, steps: int, profile: bool = False) -> dict:
    import torch

    from components.common.generation import SamplingSettings, StaticBatchGenerator

    # The training rollout's sampling (GRPO's temperature 1.0, no top-p/top-k).
    settings = SamplingSettings(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    batch = prompts[:rows]
    reset_peak()
    gen = StaticBatchGenerator(model, rows=rows, max_prompt_len=max(map(len, batch)), settings=settings,
                               pad_token_id=PAD_ID, eos_token_ids=EOS_IDS, use_cuda_graph=torch.cuda.is_available())
    with torch.inference_mode():
        sync()
        started = time.perf_counter()
        if gen.use_cuda_graph:
            gen._capture()
        sync()
        capture_s = time.perf_counter() - started
        gen._prefill(batch)
        step = gen.graph.replay if gen.graph is not None else gen._decode_step
        step()
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        ms = 1000 * (time.perf_counter() - started) / steps
        kernels = _profile_steps(step) if profile else None
    out = {"rows": rows, "cache_len": gen.cache_len, "ms_per_step": round(ms, 3), "capture_s": round(capture_s, 1),
           "peak_memory_gib": peak_gib()}
    if kernels:
        out["kernels_per_step"] = kernels
    return out


def _profile_steps(step, count: int = 4) -> dict:
    """Device time per kernel per decode step (torch.profiler; kernels replayed from a CUDA graph included)."""
    import torch
    from profile_grpo_step import _top_kernels
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return {}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(count):
            step()
        sync()
    table = _top_kernels(prof, limit=40)
    table["device_ms_total"] = round(table["device_ms_total"] / count, 3)
    for kernel in table["kernels"]:
        kernel["calls"] //= count
        kernel["device_ms"] = round(kernel["device_ms"] / count, 3)
    return table


def fit_fixed_and_per_row(points: list[dict]) -> dict:
    """Least-squares line ms = fixed + per_row * rows through the timings."""
    xs, ys = [p["rows"] for p in points], [p["ms_per_step"] for p in points]
    n, mean_x, mean_y = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if n < 2 or spread == 0:
        return {}
    per_row = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return {"fixed_ms": round(mean_y - per_row * mean_x, 3), "per_row_ms": round(per_row, 5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU smoke run")
    parser.add_argument("--rows", default="64,128,256", help="row counts to time, comma-separated")
    parser.add_argument("--prompt-len", type=int, default=250)
    parser.add_argument("--new-tokens", type=int, default=512, help="sets the cache length, as in the rollout")
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed per row count")
    parser.add_argument("--liger", action="store_true", help="with Liger's kernels applied, as the GPU recipes run (GPU)")
    parser.add_argument("--profile", action="store_true", help="also list each step's kernels (torch.profiler)")
    parser.add_argument("--output", default="bench_decode_step.json")
    args = parser.parse_args(argv)
    # Output columns after the prefill's: one warm-up step, the timed ones, four more when profiling.
    if args.steps + 1 + 4 * args.profile > args.new_tokens - 1:
        parser.error(f"--steps {args.steps} needs --new-tokens of at least {args.steps + 2 + 4 * args.profile}")

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(args.tiny, device)
    if args.liger and device == "cuda":
        from components.common.modeling import apply_liger_kernels

        apply_liger_kernels(model)
    rows_list = [int(r) for r in args.rows.split(",") if r]
    prompts = make_prompts(max(rows_list), args.prompt_len, model.config.get_text_config().vocab_size)
    report: dict = {
        **run_header(args.tiny),
        "liger": bool(args.liger and device == "cuda"),
        "new_tokens": args.new_tokens,
    }
    points = []
    for rows in rows_list:
        points.append(time_decode_step(model, prompts, rows=rows, new_tokens=args.new_tokens, steps=args.steps,
                                       profile=args.profile))
        print(json.dumps({"decode_step": points[-1]}), flush=True)
    report["steps"] = points
    report["fit"] = fit_fixed_and_per_row(points)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
