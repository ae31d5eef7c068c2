"""MedQA-shaped evaluation benchmark: the notebook's ``generate`` loop vs our evaluate step's transformers path.

Builds a random-init Gemma-3-4B (MedGemma-4B's real shapes, Gemma3ForConditionalGeneration, bf16) and
1,273 prompts of ~250 tokens, then measures in one run:
  - notebook: ``model.generate`` on batches of 64 in dataset order, sampling T=0.7, top-p 0.9 (plus the
    model's generation config, top-k 64, as the notebook gets it), 512 new tokens. A fixed number of its
    batches is timed and the full split extrapolated (the whole loop takes ~15 min);
  - ours: ``components.generator.generate_completions`` on all 1,273 prompts (length-sorted,
    batch size from free memory, static cache, CUDA-graph decode step), same decoding;
(Decode-step timings, graph vs eager and by rows, are bench_decode_step.py's.)
Imports only torch, transformers and our generator package (no kfp/trl). Random weights rarely emit EOS,
so nearly every row runs to the 512-token cap; tokens/s counts the tokens actually generated.

    python bench/bench_eval.py --output bench_eval.json            # GPU (H100/H200)
    python bench/bench_eval.py --tiny --prompts 16 --new-tokens 8  # CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

from components.common.recipes import EvalSpec
from components.generator.step_timing import peak_gib, reset_peak, sync
from components.tiny_model.core import GEMMA3_4B_TEXT

# CPU smoke-run sizes; the short sliding window makes ~250-token prompts cross it.
TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, vocab_size=4096, query_pre_attn_scalar=16, sliding_window=64,
)
# MedGemma-4B's generation config: what the notebook's generate() picks up besides its own arguments.
GENERATION_CONFIG = dict(bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, do_sample=True, top_k=64, top_p=0.95)
PAD_ID, EOS_IDS = 0, [1, 106]
# The evaluate step's protocol (the recipe's defaults) with the generation config's top-k, as the notebook samples.
PROTOCOL = EvalSpec()


def build_model(tiny: bool, device: str):
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, GenerationConfig

    text = dict(TINY_TEXT if tiny else GEMMA3_4B_TEXT)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14) if tiny else {}
    config = Gemma3Config(text_config=text, vision_config=vision or None, mm_tokens_per_image=4 if tiny else 256)
    config.text_config.attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.config._attn_implementation = "sdpa"
    model.generation_config = GenerationConfig(**GENERATION_CONFIG)
    return model.eval()


def make_prompts(count: int, mean_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Token ids of chat-formatted questions: bos + ~mean_len tokens (spread +-30%)."""
    rng = random.Random(seed)
    spread = max(1, int(mean_len * 0.3))
    return [[2] + [rng.randrange(1000, vocab - 10) for _ in range(rng.randint(mean_len - spread, mean_len + spread))] for _ in range(count)]


def run_header(tiny: bool) -> dict:
    """What every benchmark report starts with: the card, the library versions, the model shapes."""
    import torch
    import transformers

    return {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "shapes": "tiny" if tiny else "gemma-3-4b (random init, bf16)",
    }


def write_report(output: str, report: dict) -> None:
    """The report as JSON at ``output`` (folders made) and on stdout."""
    from components.common.jsonl import write_json

    write_json(output, report)
    print(json.dumps(report, indent=2))


def run_notebook_loop(model, prompts, *, batch_size: int, batches: int, new_tokens: int, device: str) -> dict:
    """The notebook's run_inference_batched, minus its bugs that break it: EOS as pad, left padding, plain generate."""
    import torch

    reset_peak()
    timings, generated = [], 0
    for b in range(batches):
        batch = prompts[b * batch_size : (b + 1) * batch_size]
        width = max(map(len, batch))
        pad = EOS_IDS[0]  # the notebook pads with EOS
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True,
                temperature=PROTOCOL.temperature, top_p=PROTOCOL.top_p, pad_token_id=pad,
            )
        sync()
        timings.append(time.perf_counter() - start)
        new = out[:, width:]
        generated += int((new != pad).sum())
    per_batch = sum(timings) / len(timings)
    total_batches = math.ceil(len(prompts) / batch_size)
    return {
        "batch_size": batch_size,
        "batches_timed": batches,
        "seconds_per_batch": round(per_batch, 2),
        "ms_per_decode_step": round(1000 * per_batch / new_tokens, 1),
        "tokens_per_s": round(generated / sum(timings), 1),
        "extrapolated_wall_s_full_split": round(per_batch * total_batches, 1),
        "peak_memory_gib": peak_gib(),
    }


def run_ours(model, prompts, *, new_tokens: int, batch_size: int) -> dict:
    from components.generator import SamplingSettings, generate_completions

    settings = SamplingSettings(do_sample=True, temperature=PROTOCOL.temperature, top_p=PROTOCOL.top_p,
                                top_k=GENERATION_CONFIG["top_k"], max_new_tokens=new_tokens)
    reset_peak()
    sync()
    start = time.perf_counter()
    results = generate_completions(
        model, prompts, settings=settings, pad_token_id=PAD_ID, eos_token_ids=EOS_IDS, batch_size=batch_size, seed=42
    )
    sync()
    wall = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in results)
    return {
        "prompts": len(prompts),
        "batch_size": batch_size or "auto",
        "wall_s": round(wall, 2),
        "tokens_generated": tokens,
        "truncated_rows": sum(r.truncated for r in results),
        "tokens_per_s": round(tokens / wall, 1),
        "peak_memory_gib": peak_gib(),
    }


def save_checkpoint(model, folder: Path) -> Path:
    """The model with the tiny model's Gemma 3 processor (tokenizer + chat template), as vLLM loads a checkpoint."""
    from transformers import AutoProcessor

    from components.common.modeling import save_for_serving
    from components.tiny_model.core import build_tiny_model

    processor = AutoProcessor.from_pretrained(build_tiny_model(folder.parent / "tokenizer_source"))
    return save_for_serving(model, processor, folder)


def run_vllm(checkpoint: Path, prompts, *, new_tokens: int) -> dict:
    """The evaluate step's vLLM backend on the same token ids: engine start, generation and shutdown timed apart."""
    from vllm import LLM

    from components.common.vllm_engine import engine_args, shutdown
    from components.evaluate.vllm_backend import generate_ids, sampling_args

    started = time.perf_counter()
    llm = LLM(**engine_args(str(checkpoint), dtype="bfloat16", seed=42, max_model_len=max(map(len, prompts)) + new_tokens))
    engine_start = time.perf_counter() - started
    sampling = sampling_args(do_sample=True, temperature=0.7, top_p=0.9, top_k=64, max_new_tokens=new_tokens, samples=1, seed=42)
    started = time.perf_counter()
    results = generate_ids(llm, prompts, sampling)[0]
    wall = time.perf_counter() - started
    started = time.perf_counter()
    shutdown(llm)
    tokens = sum(len(r["token_ids"]) for r in results)
    return {
        "prompts": len(prompts),
        "engine_start_s": round(engine_start, 1),
        "wall_s": round(wall, 2),
        "shutdown_s": round(time.perf_counter() - started, 1),
        "tokens_generated": tokens,
        "truncated_rows": sum(r["truncated"] for r in results),
        "tokens_per_s": round(tokens / wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU smoke run")
    parser.add_argument("--prompts", type=int, default=1273)
    parser.add_argument("--prompt-len", type=int, default=250)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--notebook-batch-size", type=int, default=64)
    parser.add_argument("--notebook-batches", type=int, default=1, help="batches of the notebook loop to time (0: skip)")
    parser.add_argument("--batch-size", type=int, default=0, help="ours: rows per batch (0: from free memory)")
    parser.add_argument("--liger", action="store_true", help="also run ours again with Liger's kernels applied (GPU)")
    parser.add_argument("--vllm", action="store_true", help="also run the evaluate step's vLLM backend (GPU, vllm installed)")
    parser.add_argument("--workdir", default="/tmp/bench_eval", help="where --vllm saves the checkpoint it loads")
    parser.add_argument("--skip-ours", action="store_true", help="run only the notebook loop and/or vLLM")
    parser.add_argument("--output", default="bench_eval.json")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    model = build_model(args.tiny, device)
    vocab = model.config.get_text_config().vocab_size
    prompts = make_prompts(args.prompts, args.prompt_len, vocab)
    report = {
        **run_header(args.tiny),
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "prompts": args.prompts,
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
        "new_tokens": args.new_tokens,
        "decoding": f"sampling T={PROTOCOL.temperature} top-p {PROTOCOL.top_p} top-k {GENERATION_CONFIG['top_k']}",
        "build_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report), flush=True)
    if args.notebook_batches:
        report["notebook_generate"] = run_notebook_loop(
            model, prompts, batch_size=args.notebook_batch_size, batches=args.notebook_batches, new_tokens=args.new_tokens, device=device
        )
        print(json.dumps({"notebook_generate": report["notebook_generate"]}), flush=True)
    if not args.skip_ours:
        report["ours"] = run_ours(model, prompts, new_tokens=args.new_tokens, batch_size=args.batch_size)
        print(json.dumps({"ours": report["ours"]}), flush=True)
    if args.liger and device == "cuda" and not args.skip_ours:  # the evaluate step's evaluation.liger_kernels, on the same model
        from components.common.modeling import apply_liger_kernels

        apply_liger_kernels(model)
        report["ours_liger"] = run_ours(model, prompts, new_tokens=args.new_tokens, batch_size=args.batch_size)
        print(json.dumps({"ours_liger": report["ours_liger"]}), flush=True)
    if args.vllm:
        checkpoint = save_checkpoint(model, Path(args.workdir) / "model")
        del model
        reset_peak()  # vLLM sizes its cache from the card's free memory
        report["vllm"] = run_vllm(checkpoint, prompts, new_tokens=args.new_tokens)
        report["versions"]["vllm"] = __import__("vllm").__version__
        print(json.dumps({"vllm": report["vllm"]}), flush=True)
    if "notebook_generate" in report:
        notebook = report["notebook_generate"]["extrapolated_wall_s_full_split"]
        for name in ("ours", "ours_liger", "vllm"):
            if name in report:
                report[f"speedup_vs_notebook_{name}"] = round(notebook / report[name]["wall_s"], 2)
    write_report(args.output, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
