"""One GRPO optimizer step at 4B scale: TRL configured as the notebook (no vLLM) vs our training step.

Builds a random-init Gemma-3-4B (MedGemma-4B's text shapes, ``bench_eval.build_model``), saves it with a
Gemma 3 processor (the tiny model's tokenizer and chat template: the model samples ids the tokenizer does not
know, which decode to nothing; rewards are then 0, which costs the same), and ~250-token prompts. Each variant
runs in its own process (clean peak memory) for ``--steps`` optimizer steps of 256 completions x 512 tokens;
the last step is the one reported (the first carries warm-up). Random weights never emit EOS, so every
completion runs to 512 tokens: the worst case, for both sides.

  - notebook: ``GRPOTrainer`` exactly as the notebook configures it, minus vLLM (eager attention, micro-batch 4,
    accumulation 64, gradient checkpointing non-reentrant, bf16, beta 0.04, loss bnpo, LoRA r64 all-linear);
  - ours[:label]: ``components.grpo_train.train_grpo`` with ``--recipe`` plus ``--set`` style overrides,
    e.g. ``ours:mb32=train.per_device_train_batch_size=32|train.gradient_accumulation_steps=8``.

    python bench/bench_grpo_step.py --output bench_grpo_step.json                      # GPU (H100/H200)
    python bench/bench_grpo_step.py --tiny --prompts-per-step 4 --completion-tokens 8  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

NUM_GENERATIONS = 4
# The run's own overrides: no evaluation or checkpoints inside the timed steps, no vLLM, no TensorBoard.
OURS_BASE_OVERRIDES = [
    "generation_backend=transformers", "train.eval_strategy='no'", "train.eval_on_start=false",
    "train.save_strategy='no'", "train.report_to=none", "train.logging_steps=1",
]


# -- setup (driver process) --------------------------------------------------------------------------------
def build_checkpoint(workdir: Path, tiny: bool) -> Path:
    """Random-init Gemma-3-4B (or tiny) saved with a Gemma 3 processor, loadable by ``from_pretrained``."""
    import torch
    from transformers import AutoProcessor

    from bench_eval import build_model
    from components.tiny_model.core import build_tiny_model

    model_dir = workdir / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    tokenizer_dir = build_tiny_model(workdir / "tokenizer_source")
    processor = AutoProcessor.from_pretrained(tokenizer_dir)
    tokenizer = processor.tokenizer
    model = build_model(tiny, "cuda" if torch.cuda.is_available() else "cpu")
    eos = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.get_text_config().eos_token_id = eos
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the variants run in child processes: leave them the whole card
    return model_dir


def write_prompts(data_dir: Path, model_dir: Path, *, rows: int, mean_tokens: int, seed: int = 0) -> float:
    """MedQA-shaped rows of ~``mean_tokens`` prompt tokens (+-30%) after the chat template; returns the mean."""
    from transformers import AutoProcessor

    from components.common.jsonl import write_jsonl
    from components.demo_data import demo_corpus

    tokenizer = AutoProcessor.from_pretrained(model_dir).tokenizer
    words = " ".join(demo_corpus()).split()
    rng = random.Random(seed)
    out, lengths = [], []
    for index in range(rows):
        target = rng.randint(int(mean_tokens * 0.7), int(mean_tokens * 1.3))
        text, length = "", 0
        while length < target:
            text += " " + " ".join(rng.choice(words) for _ in range(16))
            prompt = [{"role": "user", "content": text.strip()}]
            length = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        lengths.append(length)
        out.append({"id": f"q{index}", "prompt": prompt, "answer": "A", "letters": ["A", "B", "C", "D"], "meta": {}})
    data_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(data_dir / "train.jsonl", out)
    write_jsonl(data_dir / "validation.jsonl", out[:8])
    return sum(lengths) / len(lengths)


# -- one variant (child process) ---------------------------------------------------------------------------
def run_notebook(model_dir: Path, data_dir: Path, out_dir: Path, a) -> dict:
    """The notebook's GRPOConfig and LoRA config on TRL 1.16, use_vllm=False (TRL 0.21 defaults spelled out)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from components.common.jsonl import read_jsonl
    from components.grpo_train.core import make_step_timer
    from components.grpo_train.rewards import REWARDS

    cuda = torch.cuda.is_available()
    rows = read_jsonl(data_dir / "train.jsonl")
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "answer", "letters")} for r in rows])
    init = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": "eager"}
    if cuda:
        init["device_map"] = "auto"
    config = GRPOConfig(
        output_dir=str(out_dir), learning_rate=3e-5, optim="adamw_torch_fused" if cuda else "adamw_torch",
        per_device_train_batch_size=a.notebook_micro_batch, gradient_accumulation_steps=a.prompts_per_step * NUM_GENERATIONS // a.notebook_micro_batch,
        num_generations=NUM_GENERATIONS, max_completion_length=a.completion_tokens, max_steps=a.steps,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", use_vllm=False,
        bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        model_init_kwargs=init, disable_tqdm=True, log_completions=False,
        # TRL 0.21's defaults, which the notebook ran with (TRL 1.x changed them):
        loss_type="bnpo", beta=0.04, scale_rewards="group", temperature=1.0, top_p=1.0, mask_truncated_completions=False,
    )
    lora = LoraConfig(task_type="CAUSAL_LM", r=64, lora_alpha=64, target_modules="all-linear")
    timer = make_step_timer()
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[REWARDS["correctness"]], args=config,
                          train_dataset=dataset, processing_class=AutoProcessor.from_pretrained(model_dir), peft_config=lora, callbacks=[timer])
    generation_seconds = []
    generate = trainer._generate_single_turn

    def timed_generate(*args, **kwargs):  # TRL's generate call alone, to split the step
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = generate(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        generation_seconds.append(round(time.perf_counter() - started, 2))
        return result

    trainer._generate_single_turn = timed_generate
    trainer.train()
    return {"step_seconds": timer.seconds, "rollout_seconds": generation_seconds,
            "settings": "eager, micro-batch %d x accumulation %d, gradient checkpointing, TRL generate" % (
                config.per_device_train_batch_size, config.gradient_accumulation_steps)}


def run_ours(model_dir: Path, data_dir: Path, out_dir: Path, a, overrides: list[str], world_size: int = 1) -> dict:
    """``train_grpo`` on the job the training step would build; ``world_size``: this process is one of that many."""
    from components.grpo_train.core import train_grpo
    from components.grpo_train.job import TrainingJob

    sizes = [f"train.max_steps={a.steps}", f"train.max_completion_length={a.completion_tokens}"]
    if a.tiny:
        sizes.append(f"train.per_device_train_batch_size={a.prompts_per_step * NUM_GENERATIONS}")
        sizes.append("train.gradient_accumulation_steps=1")
    job = TrainingJob.build(a.recipe, data_dir, out_dir, model=str(model_dir), overrides=OURS_BASE_OVERRIDES + sizes + overrides,
                            show_progress=False, rollout=a.rollout)
    outcome = train_grpo(job.data_parallel(world_size))
    summary = json.loads((Path(outcome.adapter_dir) / "training_summary.json").read_text())
    train = summary["recipe_settings"]["train"]
    return {"step_seconds": summary["step_seconds"], "rollout_seconds": summary["rollout_seconds"] or [],
            "settings": "%s, micro-batch %d x accumulation %d, gradient checkpointing %s, rollout %s" % (
                summary["recipe_settings"]["model"]["attn_implementation"], train["per_device_train_batch_size"],
                train["gradient_accumulation_steps"], train.get("activation_checkpointing", train.get("gradient_checkpointing")),
                summary["rollout"]) + (" %s" % train["activation_checkpointing_kwargs"] if train.get("activation_checkpointing_kwargs") else "")}


def run_variant(a) -> int:
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    workdir = Path(a.workdir)
    name, _, overrides = a.variant.partition("=")
    out_dir = workdir / "runs" / name.replace(":", "_")
    # Bench-level settings among the overrides: recipe=NAME, cap_gib=N (allocator cap: a smaller card on a big one).
    items = [o for o in overrides.split("|") if o]
    bench_settings = dict(o.split("=", 1) for o in items if o.startswith(("recipe=", "cap_gib=")))
    items = [o for o in items if not o.startswith(("recipe=", "cap_gib="))]
    a.recipe = bench_settings.get("recipe", a.recipe)
    cap = float(bench_settings.get("cap_gib", 0))
    # CUDA starts inside the variant (a fresh process: peaks start at zero), so the step's own allocator settings
    # apply; a memory cap starts it earlier, so ours asks for them first.
    if cap and torch.cuda.is_available():
        if name != "notebook":
            from components.common.modeling import prefer_expandable_segments

            prefer_expandable_segments()
        torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    started = time.perf_counter()
    if name == "notebook":
        result = run_notebook(workdir / "model", workdir / "data", out_dir, a)
    else:
        result = run_ours(workdir / "model", workdir / "data", out_dir, a, items)
    completions = a.prompts_per_step * NUM_GENERATIONS
    step = result["step_seconds"][-1]
    result.update(
        variant=name, overrides=overrides, recipe=a.recipe if name != "notebook" else None, memory_cap_gib=cap or None,
        process_seconds=round(time.perf_counter() - started, 1),
        seconds_per_step=step, completions_per_step=completions,
        completion_tokens_per_s=round(completions * a.completion_tokens / step, 1),
        peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2) if torch.cuda.is_available() else None,
        allocator_settings=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    )
    (workdir / "results").mkdir(exist_ok=True)
    (workdir / "results" / f"{name.replace(':', '_')}.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    return 0


# -- driver ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU smoke run")
    parser.add_argument("--variants", default="notebook,ours",
                        help="comma-free list separated by ';': notebook, ours, ours:LABEL=SECTION.FIELD=V|SECTION.FIELD=V")
    parser.add_argument("--recipe", default="medgemma-4b-h100", help="our variants' recipe")
    parser.add_argument("--rollout", default="auto", help="our variants' rollout: auto, static-graph, trl")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per variant; the last is reported")
    parser.add_argument("--prompts-per-step", type=int, default=64, help="x4 generations = completions per step")
    parser.add_argument("--prompt-len", type=int, default=250)
    parser.add_argument("--completion-tokens", type=int, default=512)
    parser.add_argument("--notebook-micro-batch", type=int, default=4)
    parser.add_argument("--workdir", default="/tmp/bench_grpo_step")
    parser.add_argument("--output", default="bench_grpo_step.json")
    parser.add_argument("--run-variant", dest="variant", help=argparse.SUPPRESS)  # child process
    a = parser.parse_args(argv)
    if a.variant:
        return run_variant(a)

    import torch
    import transformers
    import trl

    workdir = Path(a.workdir)
    started = time.perf_counter()
    model_dir = build_checkpoint(workdir, a.tiny)
    mean_prompt = write_prompts(workdir / "data", model_dir, rows=a.prompts_per_step * (a.steps + 1), mean_tokens=a.prompt_len)
    import peft

    report = {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
        "shapes": "tiny" if a.tiny else "gemma-3-4b (random init, bf16)",
        "completions_per_step": a.prompts_per_step * NUM_GENERATIONS, "completion_tokens": a.completion_tokens,
        "mean_prompt_tokens": round(mean_prompt, 1), "steps_per_variant": a.steps, "recipe": a.recipe,
        "setup_s": round(time.perf_counter() - started, 1), "variants": [],
    }
    print(json.dumps(report), flush=True)
    passthrough = ["--workdir", a.workdir, "--recipe", a.recipe, "--rollout", a.rollout, "--steps", str(a.steps),
                   "--prompts-per-step", str(a.prompts_per_step), "--completion-tokens", str(a.completion_tokens),
                   "--notebook-micro-batch", str(a.notebook_micro_batch)] + (["--tiny"] if a.tiny else [])
    for variant in [v for v in a.variants.split(";") if v]:
        name = variant.partition("=")[0]
        result_file = workdir / "results" / f"{name.replace(':', '_')}.json"
        result_file.unlink(missing_ok=True)
        code = subprocess.call([sys.executable, __file__, "--run-variant", variant] + passthrough, env=os.environ.copy())
        entry = json.loads(result_file.read_text()) if result_file.is_file() else {"variant": name, "error": f"exit code {code}"}
        report["variants"].append(entry)
        Path(a.output).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    times = {v["variant"]: v["seconds_per_step"] for v in report["variants"] if "seconds_per_step" in v}
    if "notebook" in times:
        report["speedup_vs_notebook"] = {k: round(times["notebook"] / t, 2) for k, t in times.items() if k != "notebook"}
    Path(a.output).write_text(json.dumps(report, indent=2) + "\n")
    print("\nvariant | s/step | rollout s | completion tok/s | peak GiB")
    for v in report["variants"]:
        if "seconds_per_step" in v:
            print(f"{v['variant']} | {v['seconds_per_step']} | {(v['rollout_seconds'] or ['-'])[-1]} | {v['completion_tokens_per_s']} | {v['peak_memory_gib']}")
        else:
            print(f"{v['variant']} | {v['error']}")
    print(json.dumps(report.get("speedup_vs_notebook", {})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
