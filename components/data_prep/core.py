"""Data prep: MedQA-style multiple-choice data -> the notebook's prompts, bad rows quarantined, no leakage.

Splits follow the notebook: train = train; validation = dev shuffled with ``seed`` (the same permutation as
``datasets.Dataset.shuffle(seed=...)``), first ``val_size`` usable rows; test = the whole test split.
Every row that cannot be used goes to ``rejected.jsonl`` with a machine-readable reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common.artifacts import PreparedRow, write_rows
from components.common.errors import UserError, choices_error
from components.common.jsonl import json_kind, write_json, write_jsonl
from components.common.prompts import NOTEBOOK_PROMPT_TEMPLATE, render_prompt, validate_template
from components.data_prep.sources import DEFAULT_HF_DATASET, SPLITS, RawSplits, UnreadableRow, load_source

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "hf", "medqa")
OUTPUT_SPLITS = ("train", "validation", "test")
# Machine-readable reasons in rejected.jsonl. A row gets the first that applies: reading, then its fields in
# order (question, options, answer, id), then duplicates, leakage and the token budget. Each rejection also has
# a one-line ``detail`` for people, naming the file, line or field (never the question's text).
REJECT_REASONS = (
    # the row could not be read from its file (components/data_prep/sources.py)
    "not_utf8",
    "invalid_json",
    "not_an_object",
    "wrong_cell_count",
    # a field holds a list, an object, a number or a boolean where text (or a letter) is expected
    "wrong_type",
    "missing_question",
    "missing_option",
    "bad_option_letters",
    "answer_not_in_options",
    "answer_text_mismatch",
    "duplicate_id",
    "duplicate_question",
    "leakage",
    "prompt_too_long",
)
TOKEN_PERCENTILES = (50, 90, 95, 99)
_TOKENIZE_BATCH = 2048


@dataclass
class Question:
    """One usable row of a source split."""

    split: str
    row: int
    id: str
    question: str
    options: dict[str, str]
    answer: str
    meta: dict[str, Any]
    stem: str = ""
    prompt: list[dict[str, str]] = field(default_factory=list)
    prompt_tokens: int | None = None


@dataclass
class Rejection:
    split: str
    row: int
    id: str
    reason: str
    detail: str
    raw: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "row": self.row,
            "id": self.id,
            "reason": self.reason,
            "detail": self.detail,
            "raw": self.raw,
        }


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# ---------------------------------------------------------------- layouts


def detect_layout(splits: RawSplits, layout: str = "auto") -> str:
    """``hf`` (``data.Question`` ...) or ``medqa`` (``question``, ``options``, ``answer_idx``).

    Errors name the fields found, so a wrong source is recognisable from the message alone.
    """
    if layout not in LAYOUTS:
        raise choices_error("layout", layout, LAYOUTS)
    sample = [row for split in SPLITS for row in _readable(splits[split])[:50]]
    fields = ", ".join(sorted({key for row in sample for key in row})) or "none"
    looks_hf = any(isinstance(_as_mapping(row.get("data")), dict) for row in sample)
    looks_medqa = any("question" in row and "options" in row for row in sample)
    expected = (
        "expected the hf layout (data.Question, data.Options, data['Correct Option']) "
        "or the medqa layout (question, options, answer_idx)"
    )
    if layout == "hf" and not looks_hf:
        raise UserError(f"layout 'hf' requested but no row has a 'data' object; fields found: {fields}")
    if layout == "medqa" and not looks_medqa:
        raise UserError(f"layout 'medqa' requested but no row has 'question' and 'options'; fields found: {fields}")
    if layout != "auto":
        return layout
    if looks_hf and not looks_medqa:
        return "hf"
    if looks_medqa and not looks_hf:
        return "medqa"
    if looks_hf and looks_medqa:
        raise UserError("rows look like both the hf and the medqa layout; pass layout 'hf' or 'medqa'")
    raise UserError(f"unknown data layout: fields found: {fields}; {expected}")


def _readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if not isinstance(row, UnreadableRow)]


def _as_mapping(value: Any) -> Any:
    """Nested objects may arrive as JSON text (CSV cells)."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _fields(row: dict[str, Any], layout: str) -> dict[str, Any]:
    """The layout-independent fields of one raw row."""
    if layout == "hf":
        data = _as_mapping(row.get("data"))
        data = data if isinstance(data, dict) else {}  # parse_row tells a missing from a wrong-typed data field
        return {
            "question": data.get("Question"),
            "options": data.get("Options"),
            "answer": data.get("Correct Option"),
            "answer_text": data.get("Correct Answer"),
            "source_id": row.get("id"),
            "meta_info": row.get("subject_name"),
        }
    return {
        "question": row.get("question"),
        "options": row.get("options"),
        "answer": row.get("answer_idx"),
        "answer_text": row.get("answer"),
        "source_id": row.get("id", row.get("realidx")),
        "meta_info": row.get("meta_info"),
    }


def _option_mapping(options: Any) -> dict[str, Any] | None:
    """Options as ``{letter: text}``: a dict, a list of ``{key, value}`` (bigbio style) or a plain list (A, B, ...)."""
    options = _as_mapping(options)
    if isinstance(options, dict):
        return {str(k): v for k, v in options.items()}
    if isinstance(options, list) and options:
        if all(isinstance(o, dict) and set(o) == {"key", "value"} for o in options):
            return {str(o["key"]): o["value"] for o in options}
        if len(options) <= len(string.ascii_uppercase):
            return dict(zip(string.ascii_uppercase, options, strict=False))
    return None


def expected_letters(splits: RawSplits, layout: str, num_options: int = 0) -> list[str]:
    """``A..`` up to ``num_options``; 0: the most common option count in the data (4 for MedQA, 5 for its variant)."""
    if num_options:
        if not 2 <= num_options <= len(string.ascii_uppercase):
            raise UserError(f"num_options must be 0 (from the data) or between 2 and 26, got {num_options}")
        return list(string.ascii_uppercase[:num_options])
    counts: Counter[int] = Counter()
    for split in SPLITS:
        for row in splits[split]:
            options = _option_mapping(_fields(row, layout)["options"])
            if options:
                # Columnar formats (parquet, HF) pad a missing struct field with None.
                counts[sum(1 for v in options.values() if v is not None)] += 1
    if not counts:
        raise UserError("no row has any options; cannot tell the answer letters")
    most_common = max(counts.items(), key=lambda item: (item[1], item[0]))[0]
    return list(string.ascii_uppercase[: max(most_common, 2)])


# ---------------------------------------------------------------- row checks


def normalize_stem(text: str) -> str:
    """Comparison key for duplicates and leakage: case, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _same_text(a: str, b: str) -> bool:
    return " ".join(unicodedata.normalize("NFKC", a).casefold().split()) == " ".join(
        unicodedata.normalize("NFKC", b).casefold().split()
    )


def row_id(split: str, index: int, row: dict[str, Any], layout: str) -> str:
    """The row's own id; MedQA's ``realidx`` is unique only within a split, so it gets the split as prefix.

    A row without a usable id (none, or not text or an integer) is named by its split and position.
    """
    source_id = _fields(row, layout)["source_id"]
    if not _is_id(source_id) or str(source_id).strip() == "":
        return f"{split}-{index}"
    if layout == "medqa" and "id" not in row:
        return f"{split}-{source_id}"
    return str(source_id)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_blank(value: Any) -> bool:
    """Empty text, or the NaN a columnar file holds for a missing number."""
    return (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value))


def parse_row(split: str, index: int, row: dict[str, Any], layout: str, letters: Sequence[str]) -> Question:
    """A usable question, or ``_Rejected`` with the first reason that applies."""
    if isinstance(row, UnreadableRow):
        raise _Rejected(row.reason, row.detail)
    if layout == "hf" and row.get("data") is not None and not isinstance(_as_mapping(row["data"]), dict):
        raise _Rejected("wrong_type", f"data is {json_kind(_as_mapping(row['data']))}, expected an object")
    fields = _fields(row, layout)
    question_id = row_id(split, index, row, layout)
    question = fields["question"]
    if question is None:
        absent = "question" if layout == "medqa" or row.get("data") is not None else "data"
        raise _Rejected("missing_question", f"no {absent} field")
    if not isinstance(question, str):
        raise _Rejected("wrong_type", f"question is {json_kind(question)}, expected text")
    if not question.strip():
        raise _Rejected("missing_question", "question is empty")

    raw_options = _as_mapping(fields["options"])
    if raw_options is not None and not isinstance(raw_options, (dict, list)):
        raise _Rejected("wrong_type", f"options is {json_kind(raw_options)}, expected letter: text pairs or a list")
    options = _option_mapping(raw_options)
    if options is None:
        raise _Rejected("missing_option", "no options")
    # Keys outside the expected letters that hold None are columnar padding, not options.
    options = {k: v for k, v in options.items() if k in letters or v is not None}
    unexpected = [k for k in options if k not in letters]
    if unexpected:
        raise _Rejected(
            "bad_option_letters", f"option keys {', '.join(sorted(options))}; expected {', '.join(letters)}"
        )
    absent = [letter for letter in letters if letter not in options]
    if absent:
        raise _Rejected("missing_option", f"option(s) {', '.join(absent)} absent")
    texts = {}
    for letter in letters:
        value = options[letter]
        if value is None or _is_blank(value):
            raise _Rejected("missing_option", f"option {letter} is empty")
        if not isinstance(value, str) and not _is_number(value):
            raise _Rejected("wrong_type", f"option {letter} is {json_kind(value)}, expected text")
        texts[letter] = str(value)

    answer = fields["answer"]
    if answer is not None and not isinstance(answer, str):
        raise _Rejected("wrong_type", f"answer letter is {json_kind(answer)}, expected one of {', '.join(letters)}")
    answer = answer.strip() if isinstance(answer, str) else answer
    if answer not in texts:
        shown = "missing" if answer in (None, "") else f"{answer!r}"
        raise _Rejected("answer_not_in_options", f"answer letter {shown} is not one of {', '.join(letters)}")
    answer_text = fields["answer_text"]
    if answer_text is not None and not isinstance(answer_text, str) and not _is_number(answer_text):
        raise _Rejected("wrong_type", f"answer text is {json_kind(answer_text)}, expected text")
    if answer_text is not None and not _is_blank(answer_text):
        if not _same_text(str(answer_text), texts[answer]):
            raise _Rejected("answer_text_mismatch", f"answer text differs from option {answer}")
    source_id = fields["source_id"]
    if source_id is not None and not _is_id(source_id):
        raise _Rejected("wrong_type", f"id is {json_kind(source_id)}, expected text or an integer")

    meta: dict[str, Any] = {"source_split": split, "source_row": index}
    if fields["meta_info"] not in (None, ""):
        meta["meta_info"] = fields["meta_info"]
    return Question(split, index, question_id, question, texts, answer, meta, stem=normalize_stem(question))


# ---------------------------------------------------------------- token budget


def load_prompt_tokenizer(model_id: str, hf_token: Callable[[], str | None] = lambda: None) -> Any:
    """The base model's processor: the object TRL and the evaluator apply the chat template with."""
    from components.common.modeling import load_processor

    # A local checkpoint needs no token; asking for one could reach Secret Manager for nothing.
    token = None if Path(model_id).expanduser().exists() else hf_token()
    return load_processor(model_id, token=token)


def _lazy_hf_token(secret_name: str | None) -> Callable[[], str | None]:
    """A function returning the Hugging Face token, read at most once and only if called."""
    cache: list[str | None] = []

    def token() -> str | None:
        if not cache:
            from components.common.secrets import resolve_hf_token

            cache.append(resolve_hf_token(secret_name or None))
        return cache[0]

    return token


def count_prompt_tokens(prompts: Sequence[list[dict[str, str]]], processing_class: Any) -> list[int]:
    """Prompt lengths as TRL's GRPOTrainer sees them: chat template with the generation prompt, then tokenized.

    Works with a processor or a tokenizer. A tokenizer's template never adds special tokens; a processor adds
    them unless the rendered text already starts with BOS (transformers' ``ProcessorMixin.apply_chat_template``).
    """
    if not prompts:
        return []
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    is_processor = tokenizer is not processing_class
    counts: list[int] = []
    for start in range(0, len(prompts), _TOKENIZE_BATCH):
        batch = list(prompts[start : start + _TOKENIZE_BATCH])
        texts = processing_class.apply_chat_template(batch, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        add_special_tokens = is_processor and not (bos is not None and texts[0].startswith(bos))
        encoded = tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        counts.extend(len(ids) for ids in encoded)
    return counts


def _percentiles(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    # Nearest-rank percentiles: always a real prompt length.
    summary: dict[str, float] = {"min": ordered[0]}
    for p in TOKEN_PERCENTILES:
        summary[f"p{p}"] = ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
    summary["max"] = ordered[-1]
    summary["mean"] = round(sum(ordered) / len(ordered), 1)
    return summary


# ---------------------------------------------------------------- the step


def _check_parameters(
    val_size: int, seed: int, max_reject_rate: float, max_prompt_tokens: int, prompt_template: str
) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 1:
        raise UserError(f"val_size must be a positive integer, got {val_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(max_reject_rate, (int, float)) or not 0 <= max_reject_rate <= 1:
        raise UserError(f"max_reject_rate must be between 0 and 1, got {max_reject_rate!r}")
    if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) or max_prompt_tokens < 1:
        raise UserError(f"max_prompt_tokens must be a positive integer, got {max_prompt_tokens!r}")
    validate_template(prompt_template)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    # Parquet can hold dates, bytes...; rejected.jsonl keeps them as text.
    return json.loads(json.dumps(row, ensure_ascii=False, default=str))


def _output_row(q: Question) -> PreparedRow:
    return PreparedRow(id=q.id, prompt=q.prompt, answer=q.answer, letters=list(q.options), meta=q.meta)


class Quarantine:
    """The rejected rows, each with its raw content: nothing leaves the step silently."""

    def __init__(self, raw: RawSplits):
        self.raw = raw
        self.rejections: list[Rejection] = []

    def add(self, split: str, index: int, question_id: str, reason: str, detail: str) -> None:
        self.rejections.append(Rejection(split, index, question_id, reason, detail, _jsonable(self.raw[split][index])))

    def keep(self, questions: list[Question], why_not: Callable[[Question], tuple[str, str] | None]) -> list[Question]:
        """The questions ``why_not`` has nothing against; the others are quarantined with its (reason, detail)."""
        kept = []
        for q in questions:
            verdict = why_not(q)
            if verdict is None:
                kept.append(q)
            else:
                self.add(q.split, q.row, q.id, *verdict)
        return kept

    def sorted(self) -> list[Rejection]:
        return sorted(self.rejections, key=lambda r: (SPLITS.index(r.split), r.row))


def check_split(
    split: str, rows: list[dict[str, Any]], layout: str, letters: Sequence[str], quarantine: Quarantine
) -> list[Question]:
    """Row checks, then duplicates within the split (the first occurrence, in file order, is kept)."""
    kept: list[Question] = []
    seen_ids: dict[str, int] = {}
    seen_stems: dict[str, int] = {}
    for index, row in enumerate(rows):
        try:
            q = parse_row(split, index, row, layout, letters)
        except _Rejected as rejected:
            quarantine.add(split, index, row_id(split, index, row, layout), rejected.reason, rejected.detail)
            continue
        if q.id in seen_ids:
            quarantine.add(split, index, q.id, "duplicate_id", f"id also on {split} row {seen_ids[q.id]}")
        elif q.stem in seen_stems:
            quarantine.add(
                split, index, q.id, "duplicate_question", f"same question as {split} row {seen_stems[q.stem]}"
            )
        else:
            seen_ids[q.id], seen_stems[q.stem] = index, index
            kept.append(q)
    return kept


def select_validation(
    dev: list[Question], dev_rows: int, val_size: int, seed: int
) -> tuple[list[Question], list[Question]]:
    """The notebook's ``dev.shuffle(seed=seed).select(range(val_size))``, skipping rejected rows.

    ``datasets`` shuffles with ``np.random.default_rng(seed).permutation(len(dev))``; the permutation is taken
    over all ``dev_rows`` source rows so that clean data gives exactly the notebook's validation set.
    Returns (validation, unused usable dev rows).
    """
    import numpy as np

    by_row = {q.row: q for q in dev}
    ordered = [by_row[int(i)] for i in np.random.default_rng(seed).permutation(dev_rows) if int(i) in by_row]
    return ordered[:val_size], ordered[val_size:]


def apply_token_budget(
    usable: dict[str, list[Question]], processing_class: Any, max_prompt_tokens: int, quarantine: Quarantine
) -> dict[str, list[Question]]:
    """Count every prompt's tokens in one batch; quarantine those over the budget."""
    everything = [q for split in SPLITS for q in usable[split]]
    counts = count_prompt_tokens([q.prompt for q in everything], processing_class)
    for q, n_tokens in zip(everything, counts, strict=True):
        q.prompt_tokens = n_tokens

    def over_budget(q: Question) -> tuple[str, str] | None:
        if q.prompt_tokens > max_prompt_tokens:
            return "prompt_too_long", f"{q.prompt_tokens} prompt tokens > {max_prompt_tokens}"
        return None

    return {split: quarantine.keep(usable[split], over_budget) for split in SPLITS}


def prepare_medqa(
    source: str = DEFAULT_HF_DATASET,
    output_dir: str | Path = "prepared",
    *,
    tokenizer: str | Any | None,
    val_size: int = 100,
    seed: int = 42,
    max_reject_rate: float = 0.05,
    layout: str = "auto",
    prompt_template: str = NOTEBOOK_PROMPT_TEMPLATE,
    max_prompt_tokens: int = 512,
    num_options: int = 0,
    hf_token_secret: str | None = None,
) -> dict[str, Any]:
    """Prepare the train/validation/test splits in ``output_dir``; returns the stats also written to stats.json.

    ``tokenizer``: the base model id/path (its processor is loaded) or an already loaded processor/tokenizer;
    ``None`` skips the prompt-token budget (recorded in the stats). ``hf_token_secret``: a Secret Manager
    resource name, read only when the Hugging Face Hub is reached (else ``HF_TOKEN``, else anonymous).
    Raises ``UserError`` when a split's reject rate exceeds ``max_reject_rate``, after writing rejected.jsonl
    and stats.json so the cause can be inspected.
    """
    _check_parameters(val_size, seed, max_reject_rate, max_prompt_tokens, prompt_template)
    if layout not in LAYOUTS:
        raise choices_error("layout", layout, LAYOUTS)
    output_dir = Path(output_dir)
    if hf_token_secret:
        from components.common.secrets import secret_version_name

        secret_version_name(hf_token_secret, "hf_token_secret")  # refuses a token value passed by mistake
    hf_token = _lazy_hf_token(hf_token_secret)
    raw = load_source(source, hf_token=hf_token)
    layout = detect_layout(raw, layout)
    letters = expected_letters(raw, layout, num_options)
    logger.info("source rows: %s; layout %s; letters %s", {s: len(raw[s]) for s in SPLITS}, layout, "".join(letters))

    quarantine = Quarantine(raw)
    usable = {split: check_split(split, raw[split], layout, letters, quarantine) for split in SPLITS}

    # Every test stem is off limits, even that of a rejected test row.
    test_questions = (_fields(row, layout)["question"] for row in raw["test"])
    test_stems = {normalize_stem(q) for q in test_questions if isinstance(q, str) and q.strip()}
    for split in ("train", "dev"):
        usable[split] = quarantine.keep(
            usable[split], lambda q: ("leakage", "question also in test") if q.stem in test_stems else None
        )

    for split in SPLITS:
        for q in usable[split]:
            q.prompt = render_prompt(q.question, q.options, prompt_template)
    if tokenizer is not None:
        processing_class = load_prompt_tokenizer(tokenizer, hf_token) if isinstance(tokenizer, str) else tokenizer
        usable = apply_token_budget(usable, processing_class, max_prompt_tokens, quarantine)
    else:
        logger.warning("no tokenizer given: the %d-token prompt budget is NOT checked", max_prompt_tokens)

    validation, dev_unused = select_validation(usable["dev"], len(raw["dev"]), val_size, seed)
    # A train question also in validation would inflate the validation reward.
    validation_stems = {q.stem for q in validation}
    train = quarantine.keep(
        usable["train"], lambda q: ("leakage", "question also in validation") if q.stem in validation_stems else None
    )
    outputs = {"train": train, "validation": validation, "test": usable["test"]}

    rejections = quarantine.sorted()
    _check_every_row_is_accounted_for(raw, outputs, dev_unused, rejections)
    stats = _stats(
        source,
        layout,
        letters,
        raw,
        outputs,
        dev_unused,
        rejections,
        tokenizer,
        prompt_template,
        val_size=val_size,
        seed=seed,
        max_prompt_tokens=max_prompt_tokens,
        max_reject_rate=max_reject_rate,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(output_dir / "rejected.jsonl", (r.to_json() for r in rejections))
    write_json(output_dir / "stats.json", stats)
    logger.info("rejected %d row(s): %s", len(rejections), stats["rejected"]["by_reason"])
    _fail_on_unusable_output(stats, raw, max_reject_rate, output_dir)

    for split, questions in outputs.items():
        write_rows(output_dir / f"{split}.jsonl", (_output_row(q) for q in questions))
    logger.info("wrote %s", stats["output_rows"])
    return stats


def _check_every_row_is_accounted_for(
    raw: RawSplits, outputs: dict[str, list[Question]], dev_unused: list[Question], rejections: list[Rejection]
) -> None:
    """Each input row is written once: kept in an output (or among the unused dev rows) or quarantined."""
    kept = {"train": outputs["train"], "dev": outputs["validation"] + dev_unused, "test": outputs["test"]}
    for split in SPLITS:
        rows = sorted([q.row for q in kept[split]] + [r.row for r in rejections if r.split == split])
        if rows != list(range(len(raw[split]))):
            raise RuntimeError(f"data prep lost or repeated rows of split {split!r}: a bug, please report it")


def _fail_on_unusable_output(stats: dict[str, Any], raw: RawSplits, max_reject_rate: float, output_dir: Path) -> None:
    too_many = [s for s in SPLITS if stats["reject_rate"][s] > max_reject_rate]
    if too_many:
        split = too_many[0]
        by_reason = ", ".join(f"{k} {v}" for k, v in stats["rejected"]["by_split_reason"][split].items())
        raise UserError(
            f"split {split!r}: {stats['rejected']['by_split'][split]} of {len(raw[split])} rows rejected "
            f"({stats['reject_rate'][split]:.1%}), above max_reject_rate {max_reject_rate:.1%} ({by_reason}); "
            f"see {output_dir / 'rejected.jsonl'}"
        )
    if stats["output_rows"]["validation"] < stats["val_size"]:
        raise UserError(
            f"val_size {stats['val_size']} exceeds the {stats['output_rows']['validation']} usable dev rows"
        )
    for split in ("train", "test"):
        if not stats["output_rows"][split]:
            raise UserError(f"split {split!r} has no usable rows")


def _stats(
    source: str,
    layout: str,
    letters: list[str],
    raw: RawSplits,
    outputs: dict[str, list[Question]],
    dev_unused: list[Question],
    rejections: list[Rejection],
    tokenizer: Any,
    prompt_template: str,
    **parameters: Any,
) -> dict[str, Any]:
    by_split = Counter(r.split for r in rejections)
    by_split_reason = {s: dict(sorted(Counter(r.reason for r in rejections if r.split == s).items())) for s in SPLITS}
    total_in = sum(len(raw[s]) for s in SPLITS)
    return {
        "source": source,
        "layout": layout,
        "letters": letters,
        **parameters,
        "tokenizer": (
            tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        )
        if tokenizer is not None
        else None,
        "token_budget_checked": tokenizer is not None,
        "prompt_template_sha256": hashlib.sha256(prompt_template.encode("utf-8")).hexdigest(),
        "input_rows": {s: len(raw[s]) for s in SPLITS},
        "output_rows": {s: len(qs) for s, qs in outputs.items()},
        "dev_unused": len(dev_unused),
        "rejected": {
            "total": len(rejections),
            "by_split": {s: by_split.get(s, 0) for s in SPLITS},
            "by_reason": dict(sorted(Counter(r.reason for r in rejections).items())),
            "by_split_reason": by_split_reason,
        },
        "reject_rate": {
            "overall": round(len(rejections) / total_in, 6) if total_in else 0.0,
            **{s: round(by_split.get(s, 0) / len(raw[s]), 6) if raw[s] else 0.0 for s in SPLITS},
        },
        "answer_letters": {
            s: {letter: sum(1 for q in qs if q.answer == letter) for letter in letters} for s, qs in outputs.items()
        },
        "prompt_tokens": {s: _percentiles([q.prompt_tokens for q in qs]) for s, qs in outputs.items()}
        if tokenizer is not None
        else None,
    }


def render_summary(stats: dict[str, Any]) -> str:
    """Markdown summary for the Vertex AI UI: counts only, no question text."""
    lines = [
        "# Data prep",
        "",
        f"Source `{stats['source']}` (layout {stats['layout']}, letters {''.join(stats['letters'])}), "
        f"seed {stats['seed']}, validation size {stats['val_size']}, prompt budget {stats['max_prompt_tokens']} tokens"
        + ("" if stats["token_budget_checked"] else " (**not checked**: no tokenizer)")
        + ".",
        "",
        "| split | input rows | rejected | reject rate | output rows |",
        "|---|---:|---:|---:|---:|",
    ]
    outputs = {"train": "train", "dev": "validation", "test": "test"}
    for split, output in outputs.items():
        lines.append(
            f"| {split} → {output} | {stats['input_rows'][split]} | {stats['rejected']['by_split'][split]} "
            f"| {stats['reject_rate'][split]:.2%} | {stats['output_rows'][output]} |"
        )
    lines += ["", f"Unused dev rows (beyond the validation size): {stats['dev_unused']}.", ""]
    if stats["rejected"]["by_reason"]:
        lines += ["| reject reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {count} |" for reason, count in stats["rejected"]["by_reason"].items()]
    else:
        lines.append("No row rejected.")
    if stats["prompt_tokens"]:
        keys = ["min", *(f"p{p}" for p in TOKEN_PERCENTILES), "max", "mean"]
        lines += ["", "| prompt tokens | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for split, summary in stats["prompt_tokens"].items():
            if summary:
                lines.append(f"| {split} | " + " | ".join(str(summary[k]) for k in keys) + " |")
    lines += ["", "| answer letter | " + " | ".join(stats["letters"]) + " |", "|---|" + "---:|" * len(stats["letters"])]
    for split, counts in stats["answer_letters"].items():
        lines.append(f"| {split} | " + " | ".join(str(counts[letter]) for letter in stats["letters"]) + " |")
    return "\n".join(lines) + "\n"


def scalar_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """Flat numbers for a KFP Metrics artifact (the Vertex UI shows scalars only)."""
    metrics: dict[str, float] = {f"rows_{split}": n for split, n in stats["output_rows"].items()}
    metrics["rejected_total"] = stats["rejected"]["total"]
    metrics["reject_rate"] = stats["reject_rate"]["overall"]
    metrics.update({f"rejected_{reason}": n for reason, n in stats["rejected"]["by_reason"].items()})
    if stats["prompt_tokens"] and stats["prompt_tokens"]["train"]:
        metrics.update(
            {
                f"train_prompt_tokens_{k}": v
                for k, v in stats["prompt_tokens"]["train"].items()
                if k in ("p50", "p95", "max")
            }
        )
    return metrics
