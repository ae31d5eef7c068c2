"""The files the steps hand each other, one pydantic model each, and the strict readers and writers for them.

Prepared rows (data prep -> training, evaluation), predictions and metrics (evaluate -> compare, register),
the comparison (compare -> register), the registration record (register), the results table (one row per
model of the run) and the run summary (the pipeline's exit handler, with the deploy smoke test's numbers).
Types are strict: ``"false"`` is not a boolean and ``"1"`` is not an integer. JSON documents carry
``schema_version``; a reader refuses a bad file with one line naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.common.errors import UserError
from components.common.jsonl import write_json, write_jsonl

SCHEMA_VERSION = 1
_SHOWN_VALUE_CHARS = 24  # longer strings are described, not quoted: they may hold question text

Model = TypeVar("Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class _Document(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION


# ---------------------------------------------------------------------------------------------- rows


class ChatMessage(_Strict):
    role: str
    content: str


class PreparedRow(_Strict):
    """One question of data prep's train/validation/test.jsonl."""

    id: str = Field(min_length=1)
    prompt: list[ChatMessage] = Field(min_length=1)
    answer: str
    letters: list[str] = Field(min_length=2)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _answer_is_a_letter(self) -> PreparedRow:
        if self.answer not in self.letters:
            shown = _describe(self.answer)
            shown = shown if shown.startswith("'") else f"({shown})"
            raise ValueError(f"answer {shown} is not one of letters {self.letters}")
        return self


class Prediction(_Strict):
    """One sample of one question in evaluate's predictions.jsonl; ``sample`` only when k > 1."""

    id: str = Field(min_length=1)
    gold: str
    extracted: str | None
    correct: bool  # the strict rule's (components.common.answers.extract_answer): the reward's and the gate's
    # The notebook's rule (notebook_extract_answer), reported only; None in a file written without it.
    notebook_correct: bool | None = None
    truncated: bool
    tokens: int = Field(ge=0)
    completion: str | None = None
    sample: int | None = Field(default=None, ge=0)


# ---------------------------------------------------------------------------------------------- documents


class EvaluationMetrics(_Document):
    """evaluate's metrics.json: the fields other steps read are typed; the breakdowns ride along."""

    model_config = ConfigDict(extra="allow")

    n: int = Field(ge=1)
    samples: int = Field(ge=1)
    accuracy: float = Field(ge=0, le=1)
    ci_low: float = Field(ge=0, le=1)
    ci_high: float = Field(ge=0, le=1)
    notebook_accuracy: float = Field(ge=0, le=1)  # the notebook's extraction rule: reported, never gated
    notebook_ci_low: float = Field(ge=0, le=1)
    notebook_ci_high: float = Field(ge=0, le=1)
    format_rate: float = Field(ge=0, le=1)  # samples with exactly one <answer> pair holding an option letter
    model: str
    adapter: str | None = None


class Comparison(_Document):
    """compare's comparison.json: the tuned model against the base model on the same questions."""

    model: str
    tuned_model: str
    baseline_accuracy: float = Field(ge=0, le=1)
    tuned_accuracy: float = Field(ge=0, le=1)
    # The notebook's extraction rule, reported and never gated; None when a side's predictions lack it.
    baseline_notebook_accuracy: float | None = Field(default=None, ge=0, le=1)
    tuned_notebook_accuracy: float | None = Field(default=None, ge=0, le=1)
    delta: float = Field(ge=-1, le=1)
    delta_ci_low: float = Field(ge=-1, le=1)
    delta_ci_high: float = Field(ge=-1, le=1)
    test: Literal["mcnemar_exact", "paired_sign_flip"]
    p_value: float = Field(ge=0, le=1)
    favours: Literal["tuned", "baseline", "neither"]
    passes_gate: bool
    margin: float
    alpha: float = Field(gt=0, le=1)
    n: int = Field(ge=1)
    samples_per_question: dict[Literal["baseline", "tuned"], int]
    questions_baseline_better: int = Field(ge=0)
    questions_tuned_better: int = Field(ge=0)
    bootstrap: dict[str, float | int]
    sign_flip_resamples: int | None = None


class ChampionDecision(_Strict):
    """Why the new version did or did not take the ``champion`` alias."""

    rule: Literal["no_champion_yet", "paired_test", "champion_kept_not_comparable", "gate_failed"]
    becomes_champion: bool
    champion_version: str | None = None
    champion_accuracy: float | None = None
    challenger_accuracy: float | None = None
    delta: float | None = None
    p_value: float | None = None
    test: str | None = None
    n: int | None = None
    reason: str


class RegistrationRecord(_Document):
    """register's registration.json."""

    resource_name: str
    uri: str
    version: str
    aliases: list[str]
    created: bool
    backend: Literal["file", "vertex"]
    labels: dict[str, str]
    predictions_uri: str | None = None
    champion_decision: ChampionDecision | None = None


class Deployment(_Document):
    """deploy's deployment.json: a version on an endpoint, and the traffic split it found there (what the smoke
    test's rollback restores)."""

    backend: Literal["file", "vertex"]
    endpoint: str  # Vertex endpoint resource name, or the folder endpoint's directory
    endpoint_name: str
    deployed_model_id: str
    model: str  # the registered version (resource name or version folder)
    model_uri: str  # the model files (a folder endpoint serves them)
    traffic_split: dict[str, int]
    previous_traffic_split: dict[str, int]
    created: bool
    spec: dict[str, Any] = Field(default_factory=dict)  # the DeploymentSpec it was deployed with


class SmokeTestNumbers(_Strict):
    """The deploy smoke test's numbers in the run summary (counts and timings only)."""

    n: int = Field(ge=1)
    format_rate: float | None = Field(default=None, ge=0, le=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    latency_p50_s: float | None = Field(default=None, ge=0)
    latency_p95_s: float | None = Field(default=None, ge=0)


class ModelSummary(_Strict):
    """One model of a run in its summary; a value no step recorded is None."""

    name: str
    base_model: str | None = None
    recipe: str | None = None
    data_fingerprint: str | None = None
    baseline_accuracy: float | None = Field(default=None, ge=0, le=1)
    baseline_ci: list[float] | None = Field(default=None, min_length=2, max_length=2)  # [low, high]
    tuned_accuracy: float | None = Field(default=None, ge=0, le=1)
    tuned_ci: list[float] | None = Field(default=None, min_length=2, max_length=2)
    baseline_notebook_accuracy: float | None = Field(default=None, ge=0, le=1)  # the notebook's rule, not gated
    tuned_notebook_accuracy: float | None = Field(default=None, ge=0, le=1)
    delta: float | None = Field(default=None, ge=-1, le=1)
    delta_ci: list[float] | None = Field(default=None, min_length=2, max_length=2)
    test: Literal["mcnemar_exact", "paired_sign_flip"] | None = None
    p_value: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    passes_gate: bool | None = None
    registered: bool = False
    registered_at: str | None = None  # the version's resource name (Vertex) or folder (file registry)
    registered_version: str | None = None
    registered_aliases: list[str] | None = None
    deployed_to: str | None = None  # the endpoint's resource name (Vertex) or folder; None: not deployed
    smoke_test: SmokeTestNumbers | None = None

    @classmethod
    def from_result(cls, result: ModelResult) -> ModelSummary:
        """A row of the results table as the run summary shows it (the table has no fingerprint or aliases)."""
        return cls(
            name=result.name, base_model=result.base_model, recipe=result.recipe,
            baseline_accuracy=result.baseline.strict.accuracy,
            baseline_ci=[result.baseline.strict.ci_low, result.baseline.strict.ci_high],
            tuned_accuracy=result.tuned.strict.accuracy,
            tuned_ci=[result.tuned.strict.ci_low, result.tuned.strict.ci_high],
            baseline_notebook_accuracy=result.baseline.notebook.accuracy,
            tuned_notebook_accuracy=result.tuned.notebook.accuracy,
            delta=result.delta, delta_ci=[result.delta_ci_low, result.delta_ci_high], test=result.test,
            p_value=result.p_value, n=result.n, passes_gate=result.passes_gate,
            registered=result.registered is not None, registered_at=result.registered,
            registered_version=result.registered_version,
        )


class RunSummary(_Document):
    """How a pipeline run ended, written by its exit task (run_summary): a block per model of the run."""

    state: str
    failed_task: str | None = None
    failed_model: str | None = None  # the model whose branch holds failed_task (None: a step of the whole run)
    error: str | None = None
    models: list[ModelSummary] = Field(default_factory=list)  # empty: the run ended before any model's numbers


class Accuracy(_Strict):
    """One accuracy with its 95% CI (Wilson, over all samples)."""

    accuracy: float = Field(ge=0, le=1)
    ci_low: float = Field(ge=0, le=1)
    ci_high: float = Field(ge=0, le=1)


class EvaluationScores(_Strict):
    """One side (baseline or tuned) of a model's row in the results table."""

    strict: Accuracy  # exactly one <answer> pair: the reward's and the gate's rule
    notebook: Accuracy  # the notebook's rule (text after the last <answer>): reported, never gated
    format_rate: float = Field(ge=0, le=1)


class ModelResult(_Document):
    """results_table's model_result.json: one model of the run, its two evaluations, comparison and registration."""

    name: str = Field(min_length=1)  # the model entry's name, unique in the run
    base_model: str
    recipe: str
    baseline: EvaluationScores
    tuned: EvaluationScores
    delta: float = Field(ge=-1, le=1)  # strict, paired
    delta_ci_low: float = Field(ge=-1, le=1)
    delta_ci_high: float = Field(ge=-1, le=1)
    test: Literal["mcnemar_exact", "paired_sign_flip"]
    p_value: float = Field(ge=0, le=1)
    n: int = Field(ge=1)
    passes_gate: bool
    registered: str | None = None  # the version's resource name (Vertex) or folder (file registry); None: not registered
    registered_version: str | None = None
    # The evaluated test questions (a digest of their ids): rows compare across models only when it is the same.
    test_questions: str | None = None


class ResultsTable(_Document):
    """results_table's table.json: every model of the run, in the order given."""

    models: list[ModelResult] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_are_unique(self) -> ResultsTable:
        first: dict[str, int] = {}
        for number, model in enumerate(self.models, start=1):
            if model.name in first:
                raise ValueError(f"model name {model.name!r} appears twice (models {first[model.name]} and {number})")
            first[model.name] = number
        return self


# ---------------------------------------------------------------------------------------------- readers


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value) if len(value) <= _SHOWN_VALUE_CHARS else f"a string of {len(value)} characters"
    if isinstance(value, bool | int | float):
        return repr(value)
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


_EXPECTED = {
    "bool_type": "expected a boolean",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "tuple_type": "expected a list",
    "extra_forbidden": "unexpected field",
}


def validation_message(err: ValidationError) -> str:
    """The first problem of a pydantic error as ``field 'x': expected a boolean, got 'False'``."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "missing":
        text = f"field {loc!r}: missing"
    elif kind == "extra_forbidden":
        text = f"field {loc!r}: unexpected field"
    elif kind in _EXPECTED:
        text = f"field {loc!r}: {_EXPECTED[kind]}, got {_describe(first['input'])}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        text = f"field {loc!r}: {message[0].lower() + message[1:]}" if loc else message
        if kind not in ("value_error", "assertion_error"):
            text += f", got {_describe(first['input'])}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text


def validate_row(model: type[Model], row: Any, where: str) -> Model:
    """One row; ``where`` (e.g. ``predictions.jsonl line 7``) starts the error line."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {_describe(row)}")
    try:
        return model.model_validate(row)
    except ValidationError as err:
        raise UserError(f"{where}: {validation_message(err)}") from None


def iter_rows(model: type[Model], lines: Iterable[str], name: str) -> Iterator[Model]:
    """Validated rows of a JSON Lines text (a file's lines or a downloaded object's); blank lines skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{name} line {number}: not valid JSON ({err.msg})") from None
        yield validate_row(model, row, f"{name} line {number}")


def _decoded_lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path} line {number}: not UTF-8 text (byte {err.start + 1} of the line)") from None


def artifact_file(path: str | Path, file_name: str, parameter: str, producer: str) -> Path:
    """``path`` itself, or ``file_name`` inside it when it is a folder (a step's output); one line when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise UserError(f"{parameter}: {str(path)!r} not found (expected {producer}'s {file_name})")
    return path


def read_rows(model: type[Model], path: str | Path) -> list[Model]:
    """Every row of a JSON Lines file as ``model``; a missing, undecodable or bad file is a ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return list(iter_rows(model, _decoded_lines(path), str(path)))


def parse_document(model: type[Model], text: str, name: str) -> Model:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{name}: not valid JSON ({err.msg}: line {err.lineno} column {err.colno})") from None
    if not isinstance(document, dict):
        raise UserError(f"{name}: expected a JSON object, got {_describe(document)}")
    if issubclass(model, _Document) and "schema_version" not in document:
        raise UserError(f"{name}: field 'schema_version': missing (expected {SCHEMA_VERSION})")
    try:
        return model.model_validate(document)
    except ValidationError as err:
        raise UserError(f"{name}: {validation_message(err)}") from None


def read_document(model: type[Model], path: str | Path) -> Model:
    """A JSON document as ``model``; a missing, truncated or bad file is a ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start + 1})") from None
    return parse_document(model, text, str(path))


# ---------------------------------------------------------------------------------------------- writers


def row_dict(row: BaseModel) -> dict[str, Any]:
    """A row as written: optional fields that were never set are left out."""
    return row.model_dump(mode="json", exclude_unset=True)


def write_rows(path: str | Path, rows: Iterable[BaseModel]) -> int:
    """Write model rows as JSON Lines (atomically); returns the count."""
    return write_jsonl(path, (row_dict(row) for row in rows))


def write_document(path: str | Path, document: BaseModel) -> None:
    write_json(path, document.model_dump(mode="json"))
