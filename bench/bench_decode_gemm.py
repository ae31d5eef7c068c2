"""The decode step's matmuls alone, at Gemma-3-4B's shapes: how close each way of computing them gets to the
card's memory bandwidth (a decode step reads every weight once; at 128-256 rows that read sets the pace).

For each projection shape and row count, 34 different weights (one a layer, so the L2 cache does not hold them)
are multiplied in one captured CUDA graph, as in the decode step, by:

- ``linear``: ``F.linear`` (cuBLAS; what the model runs);
- ``linear_lt``: the same under cuBLASLt;
- ``triton``: a split-K Triton kernel, each config in ``CONFIGS`` tried (the best is reported, all are kept).

    python bench/bench_decode_gemm.py --rows 128,256 --output bench/results/decode_gemm_h200.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from components.common.jsonl import write_json
from components.generator.step_timing import decode_matmul_shapes
from components.tiny_model.core import GEMMA3_4B_TEXT

SHAPES = decode_matmul_shapes(GEMMA3_4B_TEXT)
LAYERS = GEMMA3_4B_TEXT["num_hidden_layers"]
# (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)
CONFIGS = list(itertools.product((32, 64, 128), (128,), (1, 2, 4, 8), (4, 8), (3,)))


def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def skinny(x_ptr, w_ptr, out_ptr, M, N, K, k_per_split,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        # out[M, N] (+)= x[M, K] @ w[N, K]^T over this program's K range; all M rows in one tile.
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rows = tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_start = pid_k * k_per_split
        for k in range(k_start, k_start + k_per_split, BLOCK_K):
            ks = k + tl.arange(0, BLOCK_K)
            a = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=rows[:, None] < M, other=0.0)
            b = tl.load(w_ptr + cols[None, :] * K + ks[:, None], mask=cols[None, :] < N, other=0.0)
            acc = tl.dot(a, b, acc)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        if SPLIT_K == 1:
            tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptr + pid_k * M * N + rows[:, None] * N + cols[None, :], acc, mask=mask)

    @triton.jit
    def reduce_splits(part_ptr, out_ptr, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < MN
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in range(SPLIT_K):
            acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    return triton, skinny, reduce_splits


def triton_matmul(config, rows, n, k):
    """A function (x, w, out) for one config, or None where the config does not fit the shape."""
    import torch

    triton, skinny, reduce_splits = _kernels()
    block_n, block_k, split_k, warps, stages = config
    if k % (split_k * block_k):
        return None
    part = torch.empty(split_k, rows, n, dtype=torch.float32, device="cuda") if split_k > 1 else None
    grid = (triton.cdiv(n, block_n), split_k)
    block_m = max(16, triton.next_power_of_2(rows))

    def run(x, w, out):
        target = out if split_k == 1 else part
        skinny[grid](x, w, target, rows, n, k, k // split_k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                     SPLIT_K=split_k, num_warps=warps, num_stages=stages)
        if split_k > 1:
            reduce_splits[(triton.cdiv(rows * n, 1024),)](part, out, rows * n, SPLIT_K=split_k, BLOCK=1024)

    return run


def time_in_graph(fn, xs, ws, outs, replays=20) -> float:
    """Microseconds a call, all calls of one step captured in one graph and replayed."""
    import torch

    for x, w, o in zip(xs, ws, outs):  # warm-up (compiles Triton kernels) outside the capture
        fn(x, w, o)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph.capture_begin()
        for x, w, o in zip(xs, ws, outs):
            fn(x, w, o)
        graph.capture_end()
    torch.cuda.synchronize()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / replays / len(xs) * 1e6


def main() -> int:
    import torch
    import torch.nn.functional as F

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="128,256")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--output", default="decode_gemm.json")
    a = parser.parse_args()
    torch.manual_seed(0)
    report = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "results": {}}
    for name in a.shapes.split(","):
        n, k, calls = SHAPES[name]
        layers = 1 if name == "lm_head" else LAYERS
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(layers)]
        weight_bytes = n * k * 2
        for rows in map(int, a.rows.split(",")):
            xs = [torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]
            outs = [torch.empty(rows, n, device="cuda", dtype=torch.bfloat16) for _ in range(layers)]
            expected = F.linear(xs[0], ws[0]).float()
            entry = {}

            def linear(x, w, o):
                torch.mm(x, w.t(), out=o)

            entry["linear"] = time_in_graph(linear, xs, ws, outs)
            torch.backends.cuda.preferred_blas_library("cublaslt")
            entry["linear_lt"] = time_in_graph(linear, xs, ws, outs)
            torch.backends.cuda.preferred_blas_library("cublas")
            tried = {}
            for config in CONFIGS:
                fn = triton_matmul(config, rows, n, k)
                if fn is None:
                    continue
                try:
                    us = time_in_graph(fn, xs, ws, outs, replays=10)
                except Exception as error:  # a config the compiler rejects (shared memory): skip it
                    tried[str(config)] = f"failed: {str(error).splitlines()[0][:80]}"
                    torch.cuda.synchronize()
                    continue
                fn(xs[0], ws[0], outs[0])
                err = (outs[0].float() - expected).abs().max().item()
                tried[str(config)] = {"us": round(us, 2), "max_abs_err": round(err, 4)}
            ok = {c: v for c, v in tried.items() if isinstance(v, dict) and v["max_abs_err"] < 0.1}
            best = min(ok, key=lambda c: ok[c]["us"]) if ok else None
            entry["triton_best"] = {"config": best, **(ok[best] if best else {})}
            result = {
                "us_per_call": {"linear": round(entry["linear"], 2), "linear_lt": round(entry["linear_lt"], 2),
                                "triton_best": entry["triton_best"]},
                "tb_per_s": {key: round(weight_bytes / (entry[key] if key != "triton_best" else ok[best]["us"]) / 1e6, 2)
                             for key in ("linear", "linear_lt", "triton_best") if key != "triton_best" or best},
                "ms_per_step": {"linear": round(entry["linear"] * calls / 1e3, 3),
                                "triton_best": round(ok[best]["us"] * calls / 1e3, 3) if best else None},
                "triton_configs": tried,
            }
            report["results"][f"{name}@{rows}"] = {"out_in_features": [n, k], **result}
            print(name, rows, json.dumps({k: v for k, v in result.items() if k != "triton_configs"}), flush=True)
            del xs, outs
        del ws
        torch.cuda.empty_cache()
    write_json(a.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
