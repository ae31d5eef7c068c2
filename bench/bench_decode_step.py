"""Cost of one captured decode step of our generator: by rows, eager vs graph, by sdpa backend, kernel by kernel.

A data-parallel rollout on N GPUs gives each GPU 1/N of the rows, so what limits its speed-up is the part of
a decode step that does not shrink with the rows (every weight read once, one launch per kernel). Timing the
step at a few row counts splits it into ``fixed_ms + per_row_ms * rows`` (least squares). Each row count gets
a new generator, as each rollout does. Options:

- ``--eager``: also time the same step run without the graph (what the graph saves);
- ``--backends``: also time the graph recorded under each of these sdpa backends alone;
- ``--profile``: each step's kernels with their device time (torch.profiler sees replayed kernels);
- ``--liger``: with Liger's kernels, as the GPU recipes run; ``--eval-sampling``: the evaluation's sampling
  (T 0.7, top-p 0.9, top-k 64) instead of the rollout's (T 1.0);
- ``--fusions``: what the step fuses, a timing for each: ``qkv+layers`` (what the training rollout runs: q/k/v
  as one matmul, and ``DecodeLayer``'s compiled norms, RoPE, cache writes and adds), ``qkv`` (the fused matmul
  in the model's own layers: what the evaluate step runs), ``none``, ``qkv+gate_up``.

On a GPU the report also checks that the graph computes what the eager step does (greedy tokens).

    python bench/bench_decode_step.py --rows 128,256 --liger --profile --output bench/results/decode_step_liger_h100.json
    python bench/bench_decode_step.py --rows 256 --backends EFFICIENT_ATTENTION,CUDNN_ATTENTION,MATH
    python bench/bench_decode_step.py --rows 64,256,384 --eager --eval-sampling
    python bench/bench_decode_step.py --rows 128,256 --liger --fusions qkv+layers,qkv,none,qkv+gate_up
    python bench/bench_decode_step.py --tiny --rows 2,4 --steps 4 --eager    # CPU smoke run (no graph on CPU)

(A torch.compile'd step was measured with this script at commit 045a3d0 and removed: slower, see
docs/performance.md.)
"""

from __future__ import annotations

import argparse
import json
import time

from bench_eval import EOS_IDS, PAD_ID, build_model, make_prompts, peak_gib, reset_peak, run_header, sync, write_report

from components.common.generation import FUSED_PROJECTIONS, GATE_UP  # a light import: torch loads inside its functions

PROFILED_STEPS = 4
# --fusions: (the sibling projections each variant reads as one matmul, whether DecodeLayer takes the layers);
# "qkv+layers" is what the training rollout runs, "qkv" what the evaluate step runs.
FUSIONS = {
    "qkv+layers": (FUSED_PROJECTIONS, True),
    "qkv": (FUSED_PROJECTIONS, False),
    "none": ((), False),
    "qkv+gate_up": (FUSED_PROJECTIONS + (GATE_UP,), False),
}


def sampling_settings(new_tokens: int, eval_sampling: bool):
    from components.common.generation import SamplingSettings

    if eval_sampling:  # the evaluate step's protocol, with MedGemma's top-k 64
        return SamplingSettings(do_sample=True, temperature=0.7, top_p=0.9, top_k=64, max_new_tokens=new_tokens)
    return SamplingSettings(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)  # GRPO's


def _ms_per_step(step, steps: int) -> float:
    step()  # warm
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return round(1000 * (time.perf_counter() - started) / steps, 3)


def time_decode_step(model, prompts, *, rows: int, settings, steps: int, backends=None, eager: bool = False,
                     profile: bool = False, fusion: str = "qkv+layers") -> dict:
    """One new generator of ``rows`` rows: capture, prefill, then ms per replayed step (eager: per step run
    without the graph). Each timing starts from a fresh prefill, so the steps never outrun the cache."""
    import torch

    from components.common.generation import DECODE_ATTENTION_BACKENDS, StaticBatchGenerator, attention_kernel

    batch = prompts[:rows]
    reset_peak()
    projections, decode_layers = FUSIONS[fusion]
    gen = StaticBatchGenerator(model, rows=rows, max_prompt_len=max(map(len, batch)), settings=settings,
                               pad_token_id=PAD_ID, eos_token_ids=EOS_IDS, use_cuda_graph=torch.cuda.is_available(),
                               attention_backends=backends or DECODE_ATTENTION_BACKENDS,
                               fused_projections=projections, decode_layers=decode_layers)
    out: dict = {"rows": rows, "cache_len": gen.cache_len, "fusion": fusion, "fused_groups": len(gen.fused_groups),
                 "decode_layers": len(gen.decode_layers),
                 "allocated_at_start_gib": round(torch.cuda.memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}
    with torch.inference_mode():
        sync()
        started = time.perf_counter()
        if gen.use_cuda_graph:
            gen._capture()
        sync()
        out["capture_s"] = round(time.perf_counter() - started, 2)
        out["backend"] = gen.attention_backend
        gen._prefill(batch)
        step = gen.graph.replay if gen.graph is not None else gen._decode_step
        out["ms_per_step"] = _ms_per_step(step, steps)
        if eager:
            gen._prefill(batch)
            with attention_kernel(gen.attention_backend):
                out["eager_ms_per_step"] = _ms_per_step(gen._decode_step, steps)
        if profile and torch.cuda.is_available():
            gen._prefill(batch)
            out["kernels_per_step"] = _profile_steps(step)
    out["peak_memory_gib"] = peak_gib()
    return out


def _profile_steps(step) -> dict:
    """Device time per kernel per decode step (torch.profiler; kernels replayed from a CUDA graph included)."""
    from profile_grpo_step import _top_kernels
    from torch.profiler import ProfilerActivity, profile

    step()  # warm
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        sync()
    table = _top_kernels(prof, limit=40)
    table["device_ms_total"] = round(table["device_ms_total"] / PROFILED_STEPS, 3)
    for kernel in table["kernels"]:
        kernel["calls"] //= PROFILED_STEPS
        kernel["device_ms"] = round(kernel["device_ms"] / PROFILED_STEPS, 3)
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


def greedy_agreement(model, prompts, *, new_tokens: int = 32) -> dict:
    """Greedy tokens (and whole rows) the captured step produces that the eager step, the captured step with
    the model's own layers, and the captured step without fusions, produce too. Every run, prefill included,
    uses the sdpa backend the graph is recorded under (the first of the list: this check is for cards that have
    it). On random-init weights the top two logits can be near-tied, so another kernel's rounding may pick the
    other one, and the row goes its own way; a wrong step would differ in every row from the first token."""
    from components.common.generation import DECODE_ATTENTION_BACKENDS, SamplingSettings, StaticBatchGenerator, attention_kernel

    def greedy(use_cuda_graph=True, fused_projections=FUSED_PROJECTIONS, decode_layers=True):
        generator = StaticBatchGenerator(model, rows=len(prompts), max_prompt_len=max(map(len, prompts)),
                                         settings=SamplingSettings(do_sample=False, max_new_tokens=new_tokens),
                                         pad_token_id=PAD_ID, eos_token_ids=EOS_IDS, use_cuda_graph=use_cuda_graph,
                                         fused_projections=fused_projections, decode_layers=decode_layers)
        return [r.token_ids for r in generator.generate(prompts)]

    def agreement(ours, other):
        same = sum(a == b for x, y in zip(ours, other) for a, b in zip(x, y))
        return {"tokens": f"{same}/{sum(map(len, other))}",
                "rows": f"{sum(x == y for x, y in zip(ours, other))}/{len(other)}", "backend": backend}

    backend = DECODE_ATTENTION_BACKENDS[0]
    with attention_kernel(backend):
        graph, eager = greedy(), greedy(use_cuda_graph=False)
        model_layers, unfused = greedy(decode_layers=False), greedy(fused_projections=(), decode_layers=False)
    return {"graph_vs_eager": agreement(graph, eager), "decode_vs_model_layers": agreement(graph, model_layers),
            "fused_vs_unfused": agreement(graph, unfused)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU smoke run")
    parser.add_argument("--rows", default="64,128,256", help="row counts to time, comma-separated")
    parser.add_argument("--prompt-len", type=int, default=250)
    parser.add_argument("--new-tokens", type=int, default=512, help="sets the cache length, as in the rollout")
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed per row count")
    parser.add_argument("--eager", action="store_true", help="also time the step run eagerly")
    parser.add_argument("--backends", default="", help="also time the graph under each of these sdpa backends alone")
    parser.add_argument("--profile", action="store_true", help="also list each step's kernels (GPU)")
    parser.add_argument("--liger", action="store_true", help="with Liger's kernels applied, as the GPU recipes run (GPU)")
    parser.add_argument("--eval-sampling", action="store_true", help="the evaluation's sampling instead of the rollout's")
    parser.add_argument("--fusions", default="qkv+layers", help=f"comma-separated, of {', '.join(FUSIONS)}; the first fills 'steps'")
    parser.add_argument("--blas", default="", help="torch.backends.cuda.preferred_blas_library for the whole run (cublas, cublaslt)")
    parser.add_argument("--output", default="bench_decode_step.json")
    args = parser.parse_args(argv)
    fusions = [f for f in args.fusions.split(",") if f]
    if not fusions or any(f not in FUSIONS for f in fusions):
        parser.error(f"--fusions takes names from {', '.join(FUSIONS)}")
    if max(args.steps, PROFILED_STEPS) + 1 > args.new_tokens - 1:  # the prefill samples the first token
        parser.error(f"--steps {args.steps} needs --new-tokens of at least {max(args.steps, PROFILED_STEPS) + 2}")

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    model = build_model(args.tiny, device)
    if args.liger and device == "cuda":
        from components.common.modeling import apply_liger_kernels

        apply_liger_kernels(model)
    rows_list = [int(r) for r in args.rows.split(",") if r]
    prompts = make_prompts(max(rows_list), args.prompt_len, model.config.get_text_config().vocab_size)
    settings = sampling_settings(args.new_tokens, args.eval_sampling)
    report: dict = {**run_header(args.tiny), "liger": bool(args.liger and device == "cuda"),
                    "sampling": "evaluation" if args.eval_sampling else "rollout", "new_tokens": args.new_tokens,
                    "blas": str(torch.backends.cuda.preferred_blas_library()) if device == "cuda" else None}
    if device == "cuda":
        agreement = greedy_agreement(model, prompts[:8])
        report["greedy_graph_vs_eager_same"] = agreement["graph_vs_eager"]
        report["greedy_decode_vs_model_layers_same"] = agreement["decode_vs_model_layers"]
        report["greedy_fused_vs_unfused_same"] = agreement["fused_vs_unfused"]
    by_fusion = {}
    for fusion in fusions:
        points = []
        for rows in rows_list:
            points.append(time_decode_step(model, prompts, rows=rows, settings=settings, steps=args.steps,
                                           eager=args.eager, profile=args.profile, fusion=fusion))
            print(json.dumps({"decode_step": points[-1]}), flush=True)
        by_fusion[fusion] = {"steps": points, "fit": fit_fixed_and_per_row(points)}
    report.update(by_fusion[fusions[0]])
    if len(fusions) > 1:
        report["by_fusion"] = by_fusion
    backends = [b for b in args.backends.split(",") if b]
    if backends and device != "cuda":
        report["by_backend"] = "GPU only: on CPU nothing is captured"
    elif backends:
        report["by_backend"] = {}
        for backend in backends:
            for rows in rows_list:
                try:
                    entry = time_decode_step(model, prompts, rows=rows, settings=settings, steps=args.steps,
                                             backends=(backend,))
                except RuntimeError as error:  # this backend cannot take the step (mask, shape, device)
                    entry = {"rows": rows, "error": str(error).splitlines()[0][:200]}
                report["by_backend"].setdefault(backend, []).append(entry)
                print(json.dumps({backend: entry}), flush=True)
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
