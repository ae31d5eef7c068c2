"""Cost of one captured decode step of our generator: by rows, eager vs graph, by sdpa backend, kernel by kernel.

A script over ``components.generator.step_timing``: timing the step at a few row counts splits it into
``fixed_ms + per_row_ms * rows`` (least squares), the part a data-parallel rollout cannot shrink and the
part it can. Each row count gets a new generator, as each rollout does. Options:

- ``--eager``: also time the same step run without the graph (what the graph saves);
- ``--backends``: also time the graph recorded under each of these sdpa backends alone;
- ``--profile``: each step's kernels with their device time (torch.profiler sees replayed kernels);
- ``--liger``: with Liger's kernels, as the GPU recipes run; ``--eval-sampling``: the evaluation's sampling
  (T 0.7, top-p 0.9, top-k 64) instead of the rollout's (T 1.0);
- ``--fusions``: what the step fuses, a timing for each: ``qkv+layers`` (what the training rollout runs: q/k/v
  as one matmul, and ``DecodeLayer``'s compiled norms, RoPE, cache writes and adds), ``qkv`` (the fused matmul
  in the model's own layers: what the evaluate step runs), ``none``, ``qkv+gate_up``.

On a GPU the report also checks that the graph computes what the eager step does (greedy tokens).

    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python bench/bench_decode_step.py --rows 128,256 --liger --profile --fusions qkv+layers --output bench/results/decode_step_h200.json
    python bench/bench_decode_step.py --rows 256 --backends EFFICIENT_ATTENTION,CUDNN_ATTENTION,MATH
    python bench/bench_decode_step.py --rows 64,256,384 --eager --eval-sampling
    python bench/bench_decode_step.py --rows 128,256 --liger --fusions qkv+layers,qkv,none,qkv+gate_up
    python bench/bench_decode_step.py --tiny --rows 2,4 --steps 4 --eager    # CPU smoke run (no graph on CPU)
"""

from __future__ import annotations

import argparse
import json

from bench_eval import EOS_IDS, GENERATION_CONFIG, PAD_ID, PROTOCOL, build_model, make_prompts, run_header, write_report

from components.generator.step_timing import FUSIONS, fit_fixed_and_per_row, greedy_agreement, time_decode_step

PROFILED_STEPS = 4


def sampling_settings(new_tokens: int, eval_sampling: bool):
    from components.generator import SamplingSettings

    if eval_sampling:  # the evaluate step's protocol, with MedGemma's top-k
        return SamplingSettings(do_sample=True, temperature=PROTOCOL.temperature, top_p=PROTOCOL.top_p,
                                top_k=GENERATION_CONFIG["top_k"], max_new_tokens=new_tokens)
    return SamplingSettings(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)  # GRPO's


def profile_steps(step) -> dict:
    """Device time per kernel per decode step (torch.profiler; kernels replayed from a CUDA graph included)."""
    from profile_grpo_step import _top_kernels
    from torch.profiler import ProfilerActivity, profile

    from components.generator.step_timing import sync

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
        agreement = greedy_agreement(model, prompts[:8], pad_token_id=PAD_ID, eos_token_ids=EOS_IDS)
        report["greedy_graph_vs_eager_same"] = agreement["graph_vs_eager"]
        report["greedy_decode_vs_model_layers_same"] = agreement["decode_vs_model_layers"]
        report["greedy_fused_vs_unfused_same"] = agreement["fused_vs_unfused"]
    by_fusion = {}
    for fusion in fusions:
        points = []
        for rows in rows_list:
            points.append(time_decode_step(model, prompts, rows=rows, settings=settings, steps=args.steps,
                                           pad_token_id=PAD_ID, eos_token_ids=EOS_IDS, eager=args.eager,
                                           profile=profile_steps if args.profile else None, fusion=fusion))
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
                                             pad_token_id=PAD_ID, eos_token_ids=EOS_IDS, backends=(backend,))
                except RuntimeError as error:  # this backend cannot take the step (mask, shape, device)
                    entry = {"rows": rows, "error": str(error).splitlines()[0][:200]}
                report["by_backend"].setdefault(backend, []).append(entry)
                print(json.dumps({backend: entry}), flush=True)
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
