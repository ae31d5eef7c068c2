"""Evaluate a model (base, or base + LoRA adapter) on the MedQA test split with the notebook's protocol.

Same prompt (the chat messages data prep wrote) and the same answer extraction as the training reward
(:func:`components.common.answers.extract_answer`); the notebook's looser extraction is scored alongside
(``notebook_correct``, ``notebook_accuracy``) for comparison with its table, never for the gate. Writes
``metrics.json`` and ``predictions.jsonl``; completion text goes only to ``predictions.jsonl``, logs carry
counts and progress.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from components.common.answers import extract_answer, notebook_extract_answer
from components.common.errors import UserError
from components.common.artifacts import (
    EvaluationMetrics,
    Prediction,
    PreparedRow,
    read_rows,
    write_document,
    write_rows,
)
from components.common.modeling import (
    apply_liger_kernels,
    choose_generation_backend,
    default_device,
    load_model,
    load_processor,
    prefer_expandable_segments,
)
from components.common.recipes import load_recipe
from components.common.stats import wilson_interval

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
NO_ANSWER = "none"  # confusion-matrix column for completions with no valid answer


def load_questions(data_path: str | Path, limit: int = 0) -> list[dict[str, Any]]:
    """Rows of data prep's test.jsonl, checked against its schema; the first ``limit`` rows when ``limit`` > 0."""
    if limit < 0:
        raise UserError(f"limit must be >= 0 (0 = the full split), got {limit}")
    path = Path(data_path)
    if not path.is_file():
        raise UserError(f"test data {data_path} does not exist")
    rows = read_rows(PreparedRow, path)
    if limit:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"test data {data_path} holds no rows")
    first_line: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if row.id in first_line:
            raise UserError(f"{path} row {number}: duplicate id {row.id!r} (also row {first_line[row.id]})")
        first_line[row.id] = number
    return [row.model_dump(mode="json") for row in rows]


def summarize(rows: list[dict[str, Any]], predictions: list[dict[str, Any]], samples_per_question: int) -> dict[str, Any]:
    """Metrics over all samples: accuracy with its Wilson CI (over questions when k = 1), rates, confusion, by meta."""
    n_samples = len(predictions)
    correct = sum(p["correct"] for p in predictions)
    low, high = wilson_interval(correct, n_samples)
    notebook_correct = sum(p["notebook_correct"] for p in predictions)
    notebook_low, notebook_high = wilson_interval(notebook_correct, n_samples)
    letters = sorted({letter for row in rows for letter in row["letters"]})
    confusion = {gold: {pred: 0 for pred in letters + [NO_ANSWER]} for gold in letters}
    for p in predictions:
        confusion[p["gold"]][p["extracted"] or NO_ANSWER] += 1
    by_meta: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    meta_by_id = {str(r["id"]): r.get("meta") or {} for r in rows}
    for p in predictions:
        for key, value in meta_by_id[p["id"]].items():
            if isinstance(value, (str, int, bool)):
                counts = by_meta[key][str(value)]
                counts[0] += p["correct"]
                counts[1] += 1
    metrics: dict[str, Any] = {
        "n": len(rows),
        "samples": n_samples,
        "accuracy": correct / n_samples,
        "ci_low": low,
        "ci_high": high,
        "notebook_accuracy": notebook_correct / n_samples,
        "notebook_ci_low": notebook_low,
        "notebook_ci_high": notebook_high,
        "format_rate": sum(p["extracted"] is not None for p in predictions) / n_samples,
        "truncation_rate": sum(p["truncated"] for p in predictions) / n_samples,
        "confusion": {"labels": letters, "predicted_labels": letters + [NO_ANSWER], "matrix": confusion},
        "accuracy_by_meta": {
            key: {value: {"accuracy": c[0] / c[1], "n": c[1]} for value, c in sorted(values.items())}
            for key, values in sorted(by_meta.items())
        },
        "mean_completion_tokens": sum(p["tokens"] for p in predictions) / n_samples,
    }
    if samples_per_question > 1:
        per_sample_accuracy = []
        for k in range(samples_per_question):
            sample = [p for p in predictions if p["sample"] == k]
            per_sample_accuracy.append(sum(p["correct"] for p in sample) / len(sample))
        mean = sum(per_sample_accuracy) / samples_per_question
        std = (sum((a - mean) ** 2 for a in per_sample_accuracy) / (samples_per_question - 1)) ** 0.5
        metrics["accuracy_per_sample"] = per_sample_accuracy
        metrics["accuracy_std_across_samples"] = std
    return metrics


def evaluate_model(
    model: str,
    data_path: str | Path,
    output_dir: str | Path,
    *,
    adapter: str | None = None,
    recipe: str = "medgemma-4b",
    overrides: list[str] | None = None,
    limit: int = 0,
) -> dict[str, Any]:
    """Generate for every test question, extract answers, write metrics.json + predictions.jsonl; return the metrics."""
    spec = load_recipe(recipe, overrides)
    settings = spec.evaluation
    if settings.do_sample and not (settings.temperature > 0 and 0 < settings.top_p <= 1):
        raise UserError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {settings.temperature}, {settings.top_p}")
    if settings.batch_size < 0:
        raise UserError(f"evaluation.batch_size must be >= 0 (0 = from free memory), got {settings.batch_size}")
    rows = load_questions(data_path, limit)
    backend = choose_generation_backend(settings.backend, setting="evaluation.backend")
    log.info("evaluating %d questions x %d samples with backend %s (requested %s)", len(rows), settings.samples_per_question, backend, settings.backend)

    tokenizer = load_processor(model).tokenizer
    prompts = [_prompt_ids(tokenizer, row["prompt"]) for row in rows]
    log.info("tokenized %d prompts (longest %d tokens)", len(prompts), max(map(len, prompts)))
    started = time.perf_counter()
    if backend == "vllm":
        completions, decoding = _generate_with_vllm(model, adapter, prompts, tokenizer, spec)
    else:
        if default_device() == "cuda":
            prefer_expandable_segments()
        completions, decoding = _generate_with_transformers(model, adapter, prompts, tokenizer, spec)
    generation_s = time.perf_counter() - started

    predictions = []
    for sample in range(settings.samples_per_question):
        for row, result in zip(rows, completions[sample]):
            extracted = extract_answer(result["completion"], row["letters"])
            prediction = {
                "id": str(row["id"]),
                "gold": row["answer"],
                "extracted": extracted,
                "correct": extracted == row["answer"],
                "notebook_correct": notebook_extract_answer(result["completion"]) == row["answer"],
                "truncated": result["truncated"],
                "tokens": result["tokens"],
                "completion": result["completion"],
            }
            if settings.samples_per_question > 1:
                prediction["sample"] = sample
            predictions.append(prediction)

    metrics = summarize(rows, predictions, settings.samples_per_question)
    metrics.update(
        {
            "model": model,
            "adapter": adapter,
            "recipe": spec.name,
            "backend": backend,
            "decoding": decoding,
            "generation_seconds": round(generation_s, 2),
        }
    )
    output_dir = Path(output_dir)
    write_rows(output_dir / PREDICTIONS_FILE, (Prediction(**p) for p in predictions))
    document = EvaluationMetrics(**metrics)
    write_document(output_dir / METRICS_FILE, document)
    metrics = document.model_dump(mode="json")
    log.info(
        "accuracy %.4f [%.4f, %.4f] (notebook's extraction %.4f) on %d questions; format rate %.3f, "
        "truncation rate %.3f; generation %.1f s",
        metrics["accuracy"], metrics["ci_low"], metrics["ci_high"], metrics["notebook_accuracy"], metrics["n"],
        metrics["format_rate"], metrics["truncation_rate"], generation_s,
    )
    return metrics


def _eos_ids(model, tokenizer) -> list[int]:
    """EOS ids of the model's generation config (Gemma: <eos> and <end_of_turn>), else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _generate_with_vllm(model_id, adapter, prompts, tokenizer, spec) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    from components.evaluate.vllm_backend import generate_with_vllm

    samples, top_k = generate_with_vllm(model_id, adapter, prompts, spec)
    completions = [
        [{"completion": text.strip(), "truncated": r["truncated"], "tokens": len(r["token_ids"])}
         for text, r in zip(tokenizer.batch_decode([r["token_ids"] for r in sample], skip_special_tokens=True), sample)]
        for sample in samples
    ]
    return completions, spec.evaluation.decoding(top_k)


def _generate_with_transformers(model_id, adapter, prompts, tokenizer, spec) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    from components.generator import SamplingSettings, generate_completions

    e = spec.evaluation
    model = load_model(model_id, dtype=spec.model.dtype, attn_implementation=spec.model.attn_implementation, adapter=adapter)
    if e.liger_kernels and model.device.type == "cuda":
        apply_liger_kernels(model)
    # The notebook's generate() also applies the model's generation-config top_k (64 for MedGemma): keep it.
    top_k = int(getattr(model.generation_config, "top_k", 0) or 0)
    settings = SamplingSettings(
        do_sample=e.do_sample, temperature=e.temperature, top_p=e.top_p, top_k=top_k, max_new_tokens=e.max_new_tokens
    )
    eos_ids = _eos_ids(model, tokenizer)
    samples = []
    for k in range(e.samples_per_question):
        results = generate_completions(
            model, prompts, settings=settings, pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos_ids,
            batch_size=e.batch_size, seed=e.seed + k,
        )
        texts = tokenizer.batch_decode([r.token_ids for r in results], skip_special_tokens=True)
        samples.append(
            [{"completion": text.strip(), "truncated": r.truncated, "tokens": len(r.token_ids)} for text, r in zip(texts, results)]
        )
    decoding = e.decoding(top_k)
    decoding["batch_size"] = e.batch_size or "auto"
    return samples, decoding


def _prompt_ids(tokenizer, messages) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return list(ids)
