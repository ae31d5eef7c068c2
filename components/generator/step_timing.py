"""One decode step of the generator, timed and checked: what the benchmarks (bench/bench_decode_step.py,
bench/bench_decode_gemm.py) measure, kept here so they stay scripts over the package.

A data-parallel rollout on N GPUs gives each GPU 1/N of the rows, so what limits its speed-up is the part of
a decode step that does not shrink with the rows (every weight read once, one launch per kernel): timing the
step at a few row counts splits it into ``fixed_ms + per_row_ms * rows`` (``fit_fixed_and_per_row``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from components.generator.engine import DECODE_ATTENTION_BACKENDS, StaticBatchGenerator, attention_kernel
from components.generator.projections import FUSED_PROJECTIONS, GATE_UP
from components.generator.sampling import SamplingSettings

# What a decode step can fuse: (the sibling projections read as one matmul, whether DecodeLayer takes the
# layers); "qkv+layers" is what the training rollout runs, "qkv" what the evaluate step runs.
FUSIONS = {
    "qkv+layers": (FUSED_PROJECTIONS, True),
    "qkv": (FUSED_PROJECTIONS, False),
    "none": ((), False),
    "qkv+gate_up": (FUSED_PROJECTIONS + (GATE_UP,), False),
}


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _ms_per_step(step, steps: int) -> float:
    step()  # warm
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return round(1000 * (time.perf_counter() - started) / steps, 3)


def time_decode_step(model, prompts, *, rows: int, settings: SamplingSettings, steps: int, pad_token_id: int,
                     eos_token_ids: list[int], backends=None, eager: bool = False,
                     profile: Callable[[Callable[[], None]], dict] | None = None, fusion: str = "qkv+layers") -> dict:
    """One new generator of ``rows`` rows (as each rollout builds one): capture, prefill, then ms per replayed
    step (``eager``: also per step run without the graph). Each timing starts from a fresh prefill, so the steps
    never outrun the cache. ``profile``, on a GPU, gets the step function and returns its kernel table."""
    import torch

    batch = prompts[:rows]
    reset_peak()
    projections, decode_layers = FUSIONS[fusion]
    gen = StaticBatchGenerator(model, rows=rows, max_prompt_len=max(map(len, batch)), settings=settings,
                               pad_token_id=pad_token_id, eos_token_ids=eos_token_ids,
                               use_cuda_graph=torch.cuda.is_available(),
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
        if profile is not None and torch.cuda.is_available():
            gen._prefill(batch)
            out["kernels_per_step"] = profile(step)
    out["peak_memory_gib"] = peak_gib()
    return out


def fit_fixed_and_per_row(points: list[dict]) -> dict:
    """Least-squares line ms = fixed + per_row * rows through the timings ({} for fewer than two row counts)."""
    xs, ys = [p["rows"] for p in points], [p["ms_per_step"] for p in points]
    n, mean_x, mean_y = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if n < 2 or spread == 0:
        return {}
    per_row = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    return {"fixed_ms": round(mean_y - per_row * mean_x, 3), "per_row_ms": round(per_row, 5)}


def greedy_agreement(model, prompts, *, pad_token_id: int, eos_token_ids: list[int], new_tokens: int = 32) -> dict:
    """Greedy tokens (and whole rows) the captured step produces that the eager step, the captured step with
    the model's own layers, and the captured step without fusions, produce too. Every run, prefill included,
    uses the sdpa backend the graph is recorded under (the first of the list: this check is for cards that have
    it). On random-init weights the top two logits can be near-tied, so another kernel's rounding may pick the
    other one, and the row goes its own way; a wrong step would differ in every row from the first token."""

    def greedy(use_cuda_graph=True, fused_projections=FUSED_PROJECTIONS, decode_layers=True):
        generator = StaticBatchGenerator(model, rows=len(prompts), max_prompt_len=max(map(len, prompts)),
                                         settings=SamplingSettings(do_sample=False, max_new_tokens=new_tokens),
                                         pad_token_id=pad_token_id, eos_token_ids=eos_token_ids,
                                         use_cuda_graph=use_cuda_graph, fused_projections=fused_projections,
                                         decode_layers=decode_layers)
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


def decode_matmul_shapes(text: dict) -> dict[str, tuple[int, int, int]]:
    """A decode step's matmuls for a Gemma 3 text config (a dict of its sizes): name -> (out features, in
    features, calls a step), q/k/v fused as the generator reads them."""
    hidden, heads, layers = text["hidden_size"], text["head_dim"], text["num_hidden_layers"]
    q, kv, mlp = text["num_attention_heads"] * heads, text["num_key_value_heads"] * heads, text["intermediate_size"]
    return {
        "qkv": (q + 2 * kv, hidden, layers),
        "o_proj": (hidden, q, layers),
        "gate|up": (mlp, hidden, 2 * layers),
        "down": (hidden, mlp, layers),
        "lm_head": (text["vocab_size"], hidden, 1),
    }
