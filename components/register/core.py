"""Register the tuned model: a file registry for local runs, the Vertex AI Model Registry on Vertex.

Both backends keep the same rules:
- one registered model per ``model_name``; each registration adds a version (1, 2, ...);
- the new version gets the alias ``challenger``; ``champion`` (and ``default``, which serving uses when no
  version is named) moves to it only when it passed the gate against the base model AND, when a champion
  exists, beats the champion in a paired test on the same test questions (the champion's stored
  predictions); when the question sets differ or the champion has no stored predictions, the champion
  stays and a log line says why (move the alias by hand to promote). The first version is always
  ``default``, as Vertex requires;
- each version keeps its test predictions (the file registry copies them; on Vertex their ``gs://`` URI
  is in the version's imported evaluation), so that the next challenger can be tested against it;
- an alias names one version at a time: giving it to the new version takes it from the old one;
- idempotent by the ``pipeline_run`` label: a retried task finds its version and creates none.

``registry_uri`` picks the backend: a local folder, or ``vertex://projects/P/locations/L``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.common import gcs
from components.common.artifacts import (
    ChampionDecision,
    Comparison,
    Prediction,
    RegistrationRecord,
    artifact_file,
    iter_rows,
    read_document,
    read_rows,
)
from components.common.errors import UserError, choices_error
from components.common.jsonl import write_json
from components.common.recipes import ServingSpec, load_recipe
from components.common.vertex import init_vertex
from components.compare.core import PREDICTIONS_FILE, QuestionScores, paired_test, question_scores

logger = logging.getLogger(__name__)

SERVING_MODES = ("adapter", "merged")
CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"
DEFAULT_ALIAS = "default"
RUN_LABEL = "pipeline_run"
VERTEX_SCHEME = "vertex://"
# Model Garden's vLLM serving image (what Model Garden deploys Gemma/MedGemma with); override per run.
DEFAULT_VLLM_IMAGE = (
    "us-docker.pkg.dev/vertex-ai/vertex-vision-model-garden-dockers/pytorch-vllm-serve:20251211_0916_RC01_stable"
)
VLLM_PORT = 8080
# Vertex has no schema for multiple-choice QA; accuracy-style metrics fit the classification schema best.
EVALUATION_METRICS_SCHEMA_URI = "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
COMPARISON_FILE = "comparison.json"
PREDICTIONS_URI_KEY = "predictions_uri"
_VERTEX_LOCATION = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/?$")
_LABEL_MAX = 63


@dataclass
class RegisteredModel:
    """Where a registration landed. ``created`` is False when an earlier attempt of the run had done it."""

    resource_name: str
    uri: str
    version: str
    aliases: list[str]
    created: bool
    backend: str
    labels: dict[str, str] = field(default_factory=dict)
    predictions_uri: str | None = None
    champion_decision: ChampionDecision | None = None
    report: str = field(default="", repr=False)  # base, champion and challenger side by side (Markdown)

    def to_record(self) -> RegistrationRecord:
        return RegistrationRecord(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "report"}
        )

    def to_dict(self) -> dict[str, Any]:
        """registration.json's content (the RegistrationRecord schema)."""
        return self.to_record().model_dump(mode="json")


REGISTRATION_FILE = "registration.json"


def write_registration(result: RegisteredModel, folder: str | Path, report_path: str | Path) -> None:
    """registration.json in ``folder`` and the champion report at ``report_path``."""
    write_json(Path(folder) / REGISTRATION_FILE, result.to_dict())
    report = result.report or f"Version {result.version} was registered by an earlier attempt of this run.\n"
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(report, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- inputs


def load_comparison(comparison_path: str | Path) -> Comparison:
    """comparison.json (compare's output) from a file path or the directory holding it, checked against its schema."""
    path = artifact_file(comparison_path, COMPARISON_FILE, "comparison_path", "compare")
    try:
        return read_document(Comparison, path)
    except UserError as err:
        raise UserError(f"comparison_path: {err}") from None


def load_predictions(predictions_path: str | Path) -> tuple[Path, QuestionScores]:
    """The challenger's predictions.jsonl (from a file path or evaluate's output folder) and its per-question scores."""
    path = artifact_file(predictions_path, PREDICTIONS_FILE, "predictions_path", "evaluate")
    return path, question_scores(read_rows(Prediction, path), str(path))


def resolve_model_files(model_dir: str, serving_mode: str) -> str:
    """The directory to register: ``model_dir`` itself, or its ``adapter/``/``merged/`` child (grpo_train's
    output layout). A local directory is checked for the files its mode needs; a GCS URI is taken as given."""
    if serving_mode not in SERVING_MODES:
        raise choices_error("serving_mode", serving_mode, SERVING_MODES)
    if gcs.is_gcs_uri(model_dir):
        return model_dir.rstrip("/")
    path = Path(model_dir)
    if (path / serving_mode).is_dir():
        path = path / serving_mode
    if not path.is_dir():
        raise UserError(f"model_dir: {model_dir!r} is not a directory")
    needed = "adapter_config.json" if serving_mode == "adapter" else "config.json"
    if not (path / needed).is_file():
        raise UserError(f"model_dir: {str(path)!r} has no {needed}, so it is not a {serving_mode} model")
    return str(path)


def sanitize_label(text: str) -> str:
    """A Vertex label key/value: lowercase letters, digits, ``_`` and ``-``, at most 63 characters.

    A long value keeps a hash of the full text at its end so two runs never share a truncated label.
    """
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", str(text).lower()).strip("-")
    if len(cleaned) > _LABEL_MAX:
        digest = hashlib.sha256(str(text).encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: _LABEL_MAX - 9].rstrip('-')}-{digest}"
    return cleaned


def build_labels(**values: str) -> dict[str, str]:
    labels = {}
    for key, value in values.items():
        if value in (None, ""):
            continue
        label_key = sanitize_label(key)
        if not label_key or not label_key[0].isalpha():
            label_key = f"k-{label_key}"[:_LABEL_MAX]
        labels[label_key] = sanitize_label(value)
    return labels


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def results_table(comparison: Comparison) -> str:
    """The markdown table shown in the registry's description (numbers only, no data)."""
    test = "McNemar" if comparison.test == "mcnemar_exact" else "paired sign-flip"
    rows = [
        ("Baseline accuracy", _pct(comparison.baseline_accuracy)),
        ("Tuned accuracy", _pct(comparison.tuned_accuracy)),
        ("Delta", f"{_pct(comparison.delta)} (95% CI {_pct(comparison.delta_ci_low)} to {_pct(comparison.delta_ci_high)})"),
        (f"p-value ({test})", f"{comparison.p_value:.4g}"),
        ("Questions (n)", str(comparison.n)),
        ("Gate passed", "yes" if comparison.passes_gate else "no"),
    ]
    return "\n".join(["| Metric | Value |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)])


def champion_table(comparison: Comparison, decision: ChampionDecision) -> str:
    """Base model, current champion and challenger side by side (numbers only)."""
    champion = f"Champion (version {decision.champion_version})" if decision.champion_version else "Champion (none)"
    same_questions = decision.rule == "paired_test"
    champion_accuracy = _pct(decision.champion_accuracy) + ("" if same_questions or decision.champion_accuracy is None
                                                            else " (other questions)")
    versus_champion = (f"{_pct(decision.delta)}, p = {decision.p_value:.4g} ({decision.test})"
                       if same_questions and decision.delta is not None and decision.p_value is not None else "n/a")
    lines = [
        f"| | Base model | {champion} | Challenger (this version) |",
        "| --- | --- | --- | --- |",
        f"| Test accuracy | {_pct(comparison.baseline_accuracy)} | {champion_accuracy} | {_pct(comparison.tuned_accuracy)} |",
        f"| Challenger minus it | {_pct(comparison.delta)}, p = {comparison.p_value:.4g} | {versus_champion} | |",
        "",
        f"Champion: {'moves to this version' if decision.becomes_champion else 'stays'} ({decision.reason}).",
    ]
    return "\n".join(lines)


def vllm_container(serving_mode: str, base_model: str, adapter_name: str, serving: ServingSpec) -> dict[str, Any]:
    """vLLM server arguments for Vertex's Model Garden image, with the recipe's serving flags. Vertex copies
    the artifact to a location it puts in ``AIP_STORAGE_URI`` and expands ``$(AIP_STORAGE_URI)`` in args."""
    args = ["python", "-m", "vllm.entrypoints.api_server", "--host=0.0.0.0", f"--port={VLLM_PORT}"]
    if serving_mode == "merged":
        args.append("--model=$(AIP_STORAGE_URI)")
    else:
        # The base is pulled at deploy time (a gated model: the endpoint needs HF_TOKEN set at deploy).
        args += [f"--model={base_model}", "--enable-lora", f"--lora-modules={adapter_name}=$(AIP_STORAGE_URI)"]
    args += [f"--max-model-len={serving.max_model_len}",
             f"--gpu-memory-utilization={serving.gpu_memory_utilization}", "--disable-log-stats"]
    return {
        "args": args,
        "env": {"MODEL_ID": base_model, "DEPLOY_SOURCE": "medgemma-grpo-pipeline"},
        "ports": [VLLM_PORT],
        "predict_route": "/generate",
        "health_route": "/ping",
        "shared_memory_size_mb": serving.shared_memory_size_mb,
        "deployment_timeout_s": serving.deployment_timeout_s,
    }


def new_version_aliases(becomes_champion: bool, first_version: bool) -> list[str]:
    aliases = [CHALLENGER_ALIAS]
    if becomes_champion:
        aliases.append(CHAMPION_ALIAS)
    if becomes_champion or first_version:
        aliases.append(DEFAULT_ALIAS)
    return aliases


@dataclass(frozen=True)
class ChampionEvidence:
    """The current champion: its version, its stored per-question scores (None when it stored none) and the
    test accuracy its registration recorded."""

    version: str
    scores: QuestionScores | None
    accuracy: float | None


def decide_champion(
    passed_gate: bool,
    comparison: Comparison,
    challenger: QuestionScores | None,
    champion: ChampionEvidence | None,
) -> ChampionDecision:
    """Whether the new version takes ``champion``: it must pass the gate against the base model and, when a
    champion exists, beat it on the same questions (same margin and alpha as the gate)."""
    common = {"challenger_accuracy": comparison.tuned_accuracy}
    if champion is not None:
        common.update(champion_version=champion.version, champion_accuracy=champion.accuracy)
    if not passed_gate:
        return ChampionDecision(rule="gate_failed", becomes_champion=False,
                                reason="the challenger did not pass the gate against the base model", **common)
    if champion is None:
        return ChampionDecision(rule="no_champion_yet", becomes_champion=True,
                                reason="no champion yet and the challenger beats the base model", **common)
    if champion.scores is None or challenger is None:
        missing = "the champion" if champion.scores is None else "this registration"
        return ChampionDecision(
            rule="champion_kept_not_comparable", becomes_champion=False,
            reason=f"no usable stored test predictions for {missing}, so no paired test; move the alias by hand to promote",
            **common,
        )
    if set(champion.scores.scores) != set(challenger.scores):
        return ChampionDecision(
            rule="champion_kept_not_comparable", becomes_champion=False,
            reason=f"the champion was tested on other questions ({len(champion.scores.scores)} vs "
            f"{len(challenger.scores)} ids, {len(set(champion.scores.scores) & set(challenger.scores))} shared); "
            "move the alias by hand to promote",
            **common,
        )
    result = paired_test(champion.scores, challenger)
    beats = result.delta >= comparison.margin - 1e-12 and result.p_value < comparison.alpha and result.favours == "tuned"
    verdict = "beats" if beats else "does not beat"
    return ChampionDecision(
        rule="paired_test", becomes_champion=beats, champion_version=champion.version,
        champion_accuracy=result.baseline_accuracy, challenger_accuracy=result.tuned_accuracy, delta=result.delta,
        p_value=result.p_value, test=result.test, n=result.n,
        reason=f"the challenger {verdict} the champion on the same {result.n} questions "
        f"(delta {result.delta:+.4f}, p {result.p_value:.3g}; needs delta >= {comparison.margin:g} and p < "
        f"{comparison.alpha:g})",
    )


# ---------------------------------------------------------------------------------------------- entry


def register_model(
    model_dir: str,
    comparison_path: str,
    registry_uri: str,
    *,
    model_name: str,
    base_model: str,
    recipe: str,
    data_fingerprint: str,
    pipeline_run: str,
    serving_mode: str = "merged",
    recipe_overrides: list[str] | None = None,
    passed_gate: bool | None = None,
    predictions_path: str | None = None,
    serving_image: str = DEFAULT_VLLM_IMAGE,
    staging_uri: str | None = None,
    api_endpoint: str | None = None,
    encryption_key: str | None = None,
    credentials: Any = None,
) -> RegisteredModel:
    """Register ``model_dir`` as a new version of ``model_name`` (or return the version this run made).

    ``passed_gate`` defaults to comparison.json's ``passes_gate``. The serving flags come from the recipe's
    ``serving`` section (with ``recipe_overrides``). ``predictions_path``: the tuned model's
    evaluate output (folder or predictions.jsonl), stored with the version and tested against the current
    champion's. ``staging_uri`` (gs://, e.g. under the pipeline root) is the folder local model files are
    copied to before a Vertex upload; local predictions go next to it, as ``test_predictions.jsonl``.
    ``encryption_key``: the Cloud KMS key (CMEK) the uploaded Vertex model is encrypted with.
    """
    check_model_name(model_name)
    if not pipeline_run.strip():
        raise UserError("pipeline_run must not be empty (it makes a retried registration idempotent)")
    if not base_model:
        raise UserError("base_model must not be empty")
    if not serving_image:
        raise UserError("serving_image must not be empty")
    comparison = load_comparison(comparison_path)
    if passed_gate is None:
        passed_gate = comparison.passes_gate
    elif not isinstance(passed_gate, bool):
        raise UserError(f"passed_gate must be true or false, got {passed_gate!r}")
    predictions_file, challenger = load_predictions(predictions_path) if predictions_path else (None, None)
    if challenger is not None and len(challenger.scores) != comparison.n:
        raise UserError(
            f"predictions_path: {predictions_file} covers {len(challenger.scores)} questions but the comparison "
            f"has n = {comparison.n}: they come from different evaluations"
        )
    source = resolve_model_files(model_dir, serving_mode)
    labels = build_labels(
        pipeline_run=pipeline_run,
        base_model=base_model,
        recipe=recipe,
        data_fingerprint=data_fingerprint,
        serving_mode=serving_mode,
        passed_gate=str(passed_gate).lower(),
    )
    request = _Registration(
        model_name=model_name,
        source=source,
        serving_mode=serving_mode,
        base_model=base_model,
        recipe=recipe,
        data_fingerprint=data_fingerprint,
        pipeline_run=pipeline_run,
        passed_gate=passed_gate,
        comparison=comparison,
        predictions_file=predictions_file,
        challenger=challenger,
        labels=labels,
        serving_image=serving_image,
        container=vllm_container(serving_mode, base_model, adapter_name=sanitize_label(model_name),
                                 serving=load_recipe(recipe, recipe_overrides).serving),
    )
    if registry_uri.startswith(VERTEX_SCHEME):
        project, location = parse_vertex_registry_uri(registry_uri)
        result = _register_on_vertex(
            request, project, location, staging_uri=staging_uri, api_endpoint=api_endpoint,
            encryption_key=encryption_key, credentials=credentials,
        )
    else:
        check_registry_uri(registry_uri)
        result = _register_in_folder(request, Path(registry_uri))
    logger.info(
        "registered %s version %s (%s) aliases=%s created=%s",
        model_name,
        result.version,
        result.resource_name,
        result.aliases,
        result.created,
    )
    return result


def resolve_registry_uri(registry_uri: str, run_project: str = "", run_location: str = "") -> str:
    """``registry_uri`` with the pipeline's default ``vertex://`` made ``vertex://projects/P/locations/L`` from
    the run's own project and region (Vertex fills ``run_project``/``run_location`` in; kfp.local cannot)."""
    if registry_uri.strip() != VERTEX_SCHEME:
        check_registry_uri(registry_uri)
        return registry_uri
    if not run_project or not run_location or "{{" in run_project + run_location:
        raise UserError("registry_uri 'vertex://' means this run's own project and region, which only Vertex AI "
                        "Pipelines supplies: give a folder or vertex://projects/P/locations/L")
    return f"{VERTEX_SCHEME}projects/{run_project}/locations/{run_location}"


def check_registry_uri(registry_uri: str) -> None:
    """Refuse a ``registry_uri`` of the wrong form before any work: empty, ``gs://``, or a malformed vertex:// one."""
    if not registry_uri.strip():
        raise UserError("registry_uri must not be empty: give a folder, vertex:// or vertex://projects/P/locations/L")
    if registry_uri.strip() == VERTEX_SCHEME:
        return
    if registry_uri.startswith(VERTEX_SCHEME):
        parse_vertex_registry_uri(registry_uri)
    elif gcs.is_gcs_uri(registry_uri):
        raise UserError(
            "registry_uri: a gs:// registry is not supported; use a local folder (a /gcs/ FUSE path works on "
            "Vertex) or vertex://projects/P/locations/L"
        )


def check_model_name(model_name: str, parameter: str = "model_name") -> None:
    if not model_name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", model_name):
        raise UserError(
            f"{parameter} must be 1-128 letters, digits, '_', '-', '.' starting with a letter/digit, got {model_name!r}"
        )


def parse_vertex_registry_uri(registry_uri: str) -> tuple[str, str]:
    if registry_uri == VERTEX_SCHEME:
        raise UserError("registry_uri 'vertex://' names no project: give vertex://projects/P/locations/L "
                        "(in a pipeline run the register step fills in the run's own)")
    match = _VERTEX_LOCATION.match(registry_uri[len(VERTEX_SCHEME) :])
    if not match:
        raise UserError(f"registry_uri must look like vertex://projects/PROJECT/locations/REGION, got {registry_uri!r}")
    return match["project"], match["location"]


@dataclass
class _Registration:
    model_name: str
    source: str
    serving_mode: str
    base_model: str
    recipe: str
    data_fingerprint: str
    pipeline_run: str
    passed_gate: bool
    comparison: Comparison
    predictions_file: Path | None
    challenger: QuestionScores | None
    labels: dict[str, str]
    serving_image: str
    container: dict[str, Any]

    def decide(self, champion: ChampionEvidence | None) -> ChampionDecision:
        decision = decide_champion(self.passed_gate, self.comparison, self.challenger, champion)
        log = logger.warning if decision.rule == "champion_kept_not_comparable" else logger.info
        log("champion: %s (%s)", "moves to the new version" if decision.becomes_champion else "stays", decision.reason)
        return decision

    def description(self, decision: ChampionDecision) -> str:
        return (
            f"GRPO + LoRA tuned {self.base_model} ({self.serving_mode}) from recipe {self.recipe}.\n\n"
            + results_table(self.comparison) + "\n\n" + champion_table(self.comparison, decision)
        )

    def report(self, decision: ChampionDecision) -> str:
        return "# Champion gate\n\n" + champion_table(self.comparison, decision) + "\n"


# ---------------------------------------------------------------------------------------------- file registry

MANIFEST_FILE = "manifest.json"
ALIASES_FILE = "aliases.json"


def _read_aliases(model_root: Path) -> dict[str, int]:
    path = model_root / ALIASES_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _versions(model_root: Path) -> list[int]:
    versions_dir = model_root / "versions"
    if not versions_dir.is_dir():
        return []
    return sorted(int(p.name) for p in versions_dir.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file())


def _aliases_of(aliases: dict[str, int], version: int) -> list[str]:
    return sorted(alias for alias, target in aliases.items() if target == version)


def _folder_champion(model_root: Path, aliases: dict[str, int]) -> ChampionEvidence | None:
    """The champion version's stored predictions and recorded accuracy (None when no version is champion)."""
    if CHAMPION_ALIAS not in aliases:
        return None
    version_dir = model_root / "versions" / str(aliases[CHAMPION_ALIAS])
    evaluation = version_dir / "evaluation.json"
    # Read loosely: an older version may hold an older comparison schema; only the accuracy is shown.
    recorded = json.loads(evaluation.read_text(encoding="utf-8")) if evaluation.is_file() else {}
    accuracy = recorded.get("tuned_accuracy")
    predictions = version_dir / PREDICTIONS_FILE
    scores = None
    if predictions.is_file():
        try:
            scores = question_scores(read_rows(Prediction, predictions), str(predictions))
        except UserError as err:  # an unreadable stored file must not block registering a new version
            logger.warning("champion version %s: its stored predictions are unusable: %s", aliases[CHAMPION_ALIAS], err)
    return ChampionEvidence(
        str(aliases[CHAMPION_ALIAS]), scores, accuracy if isinstance(accuracy, float | int) else None
    )


def _register_in_folder(request: _Registration, registry: Path) -> RegisteredModel:
    model_root = registry / request.model_name
    versions = _versions(model_root)
    aliases = _read_aliases(model_root)
    run_label = request.labels[RUN_LABEL]
    for version in versions:
        manifest = json.loads((model_root / "versions" / str(version) / MANIFEST_FILE).read_text(encoding="utf-8"))
        if manifest["labels"].get(RUN_LABEL) == run_label:
            # An attempt that stopped between writing the version and moving aliases left it unaliased;
            # finish its job, unless a newer version exists (then moving aliases back would be wrong).
            if not _aliases_of(aliases, version) and version == versions[-1]:
                recorded = manifest.get("champion_decision")
                becomes_champion = recorded["becomes_champion"] if recorded else manifest["passed_gate"]
                wanted = new_version_aliases(becomes_champion, first_version=version == versions[0])
                aliases = _move_aliases(model_root, aliases, version, wanted)
            return _folder_result(model_root, version, manifest, aliases, created=False)

    decision = request.decide(_folder_champion(model_root, aliases))
    (model_root / "versions").mkdir(parents=True, exist_ok=True)
    # Build the version in a scratch folder and rename it into place, so a reader never sees half a version.
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=model_root))
    try:
        manifest = _write_folder_version(request, decision, staging)
        version = (versions[-1] if versions else 0) + 1
        while True:
            try:
                staging.rename(model_root / "versions" / str(version))
                break
            except OSError:  # another registration took this number first
                version += 1
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    manifest["version"] = str(version)
    write_json(model_root / "versions" / str(version) / MANIFEST_FILE, manifest)
    aliases = _move_aliases(
        model_root, aliases, version, new_version_aliases(decision.becomes_champion, first_version=not versions)
    )
    result = _folder_result(model_root, version, manifest, aliases, created=True)
    result.report = request.report(decision)
    return result


def _write_folder_version(request: _Registration, decision: ChampionDecision, version_dir: Path) -> dict[str, Any]:
    if gcs.is_gcs_uri(request.source):
        artifact_uri = request.source  # already in GCS: keep a reference, copy nothing
    else:
        shutil.copytree(request.source, version_dir / "model")
        artifact_uri = "model"
    write_json(version_dir / "evaluation.json", request.comparison.model_dump(mode="json"))
    if request.predictions_file is not None:
        shutil.copyfile(request.predictions_file, version_dir / PREDICTIONS_FILE)
    (version_dir / "description.md").write_text(request.description(decision) + "\n", encoding="utf-8")
    manifest = {
        "model_name": request.model_name,
        "artifact_uri": artifact_uri,
        "source": request.source,
        "serving_mode": request.serving_mode,
        "base_model": request.base_model,
        "recipe": request.recipe,
        "data_fingerprint": request.data_fingerprint,
        "pipeline_run": request.pipeline_run,
        "passed_gate": request.passed_gate,
        "predictions": PREDICTIONS_FILE if request.predictions_file is not None else None,
        "champion_decision": decision.model_dump(mode="json"),
        "labels": request.labels,
        "serving_container": {"image_uri": request.serving_image, **request.container},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    write_json(version_dir / MANIFEST_FILE, manifest)
    return manifest


def _move_aliases(model_root: Path, aliases: dict[str, int], version: int, new_aliases: list[str]) -> dict[str, int]:
    updated = {**aliases, **{alias: version for alias in new_aliases}}
    write_json(model_root / ALIASES_FILE, dict(sorted(updated.items())))
    return updated


def _folder_result(
    model_root: Path, version: int, manifest: dict[str, Any], aliases: dict[str, int], created: bool
) -> RegisteredModel:
    version_dir = model_root / "versions" / str(version)
    artifact_uri = manifest["artifact_uri"]
    decision = manifest.get("champion_decision")
    return RegisteredModel(
        resource_name=str(version_dir),
        uri=artifact_uri if gcs.is_gcs_uri(artifact_uri) else str(version_dir / artifact_uri),
        version=str(version),
        aliases=_aliases_of(aliases, version),
        created=created,
        backend="file",
        labels=manifest["labels"],
        predictions_uri=str(version_dir / manifest["predictions"]) if manifest.get("predictions") else None,
        champion_decision=ChampionDecision.model_validate(decision) if decision else None,
    )


# ---------------------------------------------------------------------------------------------- Vertex AI


def _register_on_vertex(
    request: _Registration,
    project: str,
    location: str,
    *,
    staging_uri: str | None,
    api_endpoint: str | None,
    encryption_key: str | None,
    credentials: Any,
) -> RegisteredModel:
    from google.cloud import aiplatform

    init_vertex(project, location, api_endpoint, credentials)

    parent = _find_parent_model(request.model_name)
    run_filter = f'labels.{RUN_LABEL}="{request.labels[RUN_LABEL]}"'
    storage = gcs.storage_client(project, credentials)
    if parent is not None:
        existing = aiplatform.models.ModelRegistry(parent).list_versions(filter=run_filter)
        if existing:
            model = aiplatform.Model(parent.resource_name, version=existing[0].version_id)
            stored = _stored_evaluation(model)
            predictions_uri = stored[1].get(PREDICTIONS_URI_KEY) if stored else None
            if stored is None:
                predictions_uri = _stage_predictions(request, staging_uri, storage)
                _import_evaluation(model, request, predictions_uri)
            return _vertex_result(model, created=False, predictions_uri=predictions_uri)

    decision = request.decide(_vertex_champion(parent, storage) if parent is not None else None)
    artifact_uri = gcs.to_gcs_uri(request.source)
    if artifact_uri is None:
        if not staging_uri:
            raise UserError(
                "staging_uri (a gs:// folder, e.g. under the pipeline root) is needed to upload local model files"
            )
        gcs.split_gcs_uri(staging_uri, "staging_uri")
        artifact_uri = staging_uri.rstrip("/")
        gcs.upload_directory(request.source, artifact_uri, client=storage, parameter="staging_uri")
    predictions_uri = _stage_predictions(request, staging_uri, storage)

    container = request.container
    becomes_champion = decision.becomes_champion
    model = aiplatform.Model.upload(
        display_name=request.model_name,
        artifact_uri=artifact_uri,
        serving_container_image_uri=request.serving_image,
        serving_container_args=container["args"],
        serving_container_environment_variables=container["env"],
        serving_container_ports=container["ports"],
        serving_container_predict_route=container["predict_route"],
        serving_container_health_route=container["health_route"],
        serving_container_shared_memory_size_mb=container["shared_memory_size_mb"],
        serving_container_deployment_timeout=container["deployment_timeout_s"],
        parent_model=parent.resource_name if parent is not None else None,
        is_default_version=becomes_champion,
        version_aliases=[a for a in new_version_aliases(becomes_champion, False) if a != DEFAULT_ALIAS],
        version_description=f"pipeline run {request.pipeline_run}",
        description=request.description(decision),
        labels=request.labels,
        encryption_spec_key_name=encryption_key or None,
    )
    _import_evaluation(model, request, predictions_uri)
    result = _vertex_result(model, created=True, predictions_uri=predictions_uri, decision=decision)
    result.report = request.report(decision)
    return result


def _find_parent_model(model_name: str) -> Any:
    """The registered model with this display name (the oldest, if several), or None."""
    from google.cloud import aiplatform

    matches = aiplatform.Model.list(filter=f'display_name="{model_name}"', order_by="create_time")
    return matches[0] if matches else None


EVALUATION_DISPLAY_NAME = "medqa-test-comparison"


def _stage_predictions(request: _Registration, staging_uri: str | None, storage: Any) -> str | None:
    """The ``gs://`` URI of the challenger's predictions: where they already are (a /gcs/ path), or a copy
    next to the staged model files. None, with a log line, when there is nowhere to keep them."""
    if request.predictions_file is None:
        return None
    already = gcs.to_gcs_uri(str(request.predictions_file))
    if already is not None:
        return already
    if not staging_uri:
        logger.warning("test predictions not stored (no staging_uri): a later challenger cannot be tested against "
                       "this version")
        return None
    folder = staging_uri.rstrip("/")
    parent_folder = folder.rsplit("/", 1)[0] if folder.count("/") > 2 else folder
    return gcs.upload_file(request.predictions_file, f"{parent_folder}/test_{PREDICTIONS_FILE}", storage, "staging_uri")


def _stored_evaluation(model: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(metrics, metadata) of the evaluation this step imported into a model version, or None."""
    for evaluation in model.list_model_evaluations():
        if evaluation.display_name == EVALUATION_DISPLAY_NAME:
            resource = evaluation.gca_resource
            return _plain(resource.metrics), _plain(resource.metadata)
    return None


def _plain(value: Any) -> dict[str, Any]:
    """A protobuf Struct/Value (or proto-plus's mapping of one) as a dict."""
    from google.protobuf import json_format, message

    if isinstance(value, message.Message):
        value = json_format.MessageToDict(value)
    return dict(value) if hasattr(value, "keys") else {}


def _vertex_champion(parent: Any, storage: Any) -> ChampionEvidence | None:
    """The version holding ``champion``, with the predictions its imported evaluation points to."""
    from google.cloud import aiplatform

    versions = aiplatform.models.ModelRegistry(parent).list_versions()
    champion = next((v for v in versions if CHAMPION_ALIAS in (v.version_aliases or [])), None)
    if champion is None:
        return None
    model = aiplatform.Model(parent.resource_name, version=champion.version_id)
    stored = _stored_evaluation(model)
    metrics, metadata = stored if stored else ({}, {})
    accuracy = metrics.get("tuned_accuracy")
    accuracy = float(accuracy) if isinstance(accuracy, float | int) and not isinstance(accuracy, bool) else None
    uri = metadata.get(PREDICTIONS_URI_KEY)
    scores = None
    if isinstance(uri, str) and uri:
        try:
            text = gcs.download_text(uri, storage, "champion predictions")
            scores = question_scores(list(iter_rows(Prediction, text.splitlines(), uri)), uri)
        except UserError as err:  # an unreadable stored file must not block registering a new version
            logger.warning("champion version %s: its stored predictions are unusable: %s", champion.version_id, err)
    return ChampionEvidence(str(champion.version_id), scores, accuracy)


def _import_evaluation(model: Any, request: _Registration, predictions_uri: str | None) -> None:
    """Attach comparison.json to the model version as a ModelEvaluation, with the predictions' URI in its metadata.

    The high-level SDK has no import call; ModelService.ImportModelEvaluation is on the GAPIC client.
    """
    from google.cloud.aiplatform.compat.types import model_evaluation as gca_model_evaluation
    from google.protobuf import json_format, struct_pb2

    # Scalars only (accuracies, delta and its CI, p-value, gate, n); nested breakdowns stay in comparison.json.
    comparison = request.comparison.model_dump(mode="json")
    metrics = {key: value for key, value in comparison.items() if isinstance(value, (int, float, bool))}
    metadata = {"pipeline_job_id": request.pipeline_run, "evaluation_dataset_type": "medqa-test"}
    if predictions_uri:
        metadata[PREDICTIONS_URI_KEY] = predictions_uri
    evaluation = gca_model_evaluation.ModelEvaluation(
        display_name=EVALUATION_DISPLAY_NAME,
        metrics_schema_uri=EVALUATION_METRICS_SCHEMA_URI,
        metrics=json_format.ParseDict(metrics, struct_pb2.Value()),
        metadata=json_format.ParseDict(metadata, struct_pb2.Value()),
    )
    model.api_client.import_model_evaluation(parent=model.versioned_resource_name, model_evaluation=evaluation)


def _vertex_result(
    model: Any, created: bool, predictions_uri: str | None = None, decision: ChampionDecision | None = None
) -> RegisteredModel:
    return RegisteredModel(
        resource_name=model.versioned_resource_name,
        uri=model.uri or "",
        version=str(model.version_id),
        aliases=sorted(model.version_aliases),
        created=created,
        backend="vertex",
        labels=dict(model.labels),
        predictions_uri=predictions_uri,
        champion_decision=decision,
    )
