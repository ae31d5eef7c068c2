"""The register step's file registry (local runs), its CLI and its KFP wrapper function."""

import json
import re
from pathlib import Path

import pytest
from fakes.artifacts import FakeArtifact

from components.common.artifacts import Comparison
from components.common.errors import UserError
from components.common.jsonl import write_jsonl
from components.register.__main__ import main
from components.register.core import (
    DEFAULT_VLLM_IMAGE,
    build_labels,
    load_comparison,
    register_model,
    results_table,
    sanitize_label,
)

COMPARISON = {
    "schema_version": 1,
    "model": "google/medgemma-4b-it",
    "tuned_model": "google/medgemma-4b-it",
    "baseline_accuracy": 0.5,
    "tuned_accuracy": 0.6,
    "delta": 0.1,
    "delta_ci_low": 0.02,
    "delta_ci_high": 0.18,
    "test": "mcnemar_exact",
    "p_value": 0.004,
    "favours": "tuned",
    "passes_gate": True,
    "margin": 0.0,
    "alpha": 0.05,
    "n": 200,
    "samples_per_question": {"baseline": 1, "tuned": 1},
    "questions_baseline_better": 10,
    "questions_tuned_better": 30,
    "bootstrap": {"resamples": 10000, "seed": 0, "confidence": 0.95},
}


def make_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "base_model_name_or_path": "google/medgemma-4b-it"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (folder / "training_summary.json").write_text(json.dumps({"global_step": 10}))
    return folder


def make_comparison(folder: Path, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "comparison.json"
    path.write_text(json.dumps({**COMPARISON, **overrides}))
    return path


def write_predictions(folder: Path, correct: list[bool], first_id: int = 0) -> Path:
    """evaluate's predictions.jsonl: question ``first_id + i`` answered correctly when ``correct[i]``."""
    rows = [{"id": f"q{first_id + i}", "gold": "A", "extracted": "A" if ok else "B", "correct": ok,
             "truncated": False, "tokens": 7} for i, ok in enumerate(correct)]
    write_jsonl(folder / "predictions.jsonl", rows)
    return folder


def register(tmp_path: Path, run: str, passes_gate: bool = True, correct: list[bool] | None = None,
             first_id: int = 0, **kwargs):
    """Register the run's model; ``correct``: its per-question test results, stored with the version."""
    adapter = make_adapter(tmp_path / "train" / "adapter")
    n = len(correct) if correct else COMPARISON["n"]
    tuned_accuracy = sum(correct) / n if correct else COMPARISON["tuned_accuracy"]
    comparison = make_comparison(tmp_path / f"compare-{run}", passes_gate=passes_gate, n=n,
                                 tuned_accuracy=tuned_accuracy)
    if correct is not None:
        kwargs["predictions_path"] = str(write_predictions(tmp_path / f"eval-{run}", correct, first_id))
    return register_model(
        str(adapter),
        str(comparison),
        str(tmp_path / "registry"),
        model_name="medgemma-medqa",
        base_model="google/medgemma-4b-it",
        recipe="medgemma-4b",
        data_fingerprint="sha256-0123abcd",
        pipeline_run=run,
        **{"serving_mode": "adapter", **kwargs},
    )


def aliases(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "registry" / "medgemma-medqa" / "aliases.json").read_text())


def test_first_version_gets_challenger_and_champion_and_default_when_gate_passed(tmp_path):
    result = register(tmp_path, "run-1")
    version_dir = tmp_path / "registry" / "medgemma-medqa" / "versions" / "1"
    assert (result.version, result.created, result.backend) == ("1", True, "file")
    assert result.resource_name == str(version_dir)
    assert result.aliases == ["challenger", "champion", "default"]
    assert aliases(tmp_path) == {"challenger": 1, "champion": 1, "default": 1}
    assert sorted(p.name for p in (version_dir / "model").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_summary.json",
    ]
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["labels"] == {
        "pipeline_run": "run-1",
        "base_model": "google-medgemma-4b-it",
        "recipe": "medgemma-4b",
        "data_fingerprint": "sha256-0123abcd",
        "serving_mode": "adapter",
        "passed_gate": "true",
    }
    assert manifest["serving_container"]["image_uri"] == DEFAULT_VLLM_IMAGE
    assert "--enable-lora" in manifest["serving_container"]["args"]
    assert json.loads((version_dir / "evaluation.json").read_text())["tuned_accuracy"] == 0.6
    assert "| Tuned accuracy | 60.0% |" in (version_dir / "description.md").read_text()


HALF = [i % 2 == 0 for i in range(200)]  # 100 of 200 right
BETTER = [i % 2 == 0 or i % 10 in (1, 3, 5) for i in range(200)]  # the same 100 plus 60 more: 160 of 200


def test_champion_moves_only_to_a_version_that_beats_the_champion(tmp_path):
    first = register(tmp_path, "run-1", correct=HALF)
    assert first.champion_decision.rule == "no_champion_yet" and "champion" in first.aliases
    stored = tmp_path / "registry" / "medgemma-medqa" / "versions" / "1" / "predictions.jsonl"
    assert stored.read_text() == (tmp_path / "eval-run-1" / "predictions.jsonl").read_text()
    assert first.predictions_uri == str(stored)

    # Beats the base model (its gate passed) but only ties the champion: stays challenger.
    tie = register(tmp_path, "run-2", correct=HALF[1:] + HALF[:1])
    assert tie.aliases == ["challenger"]
    decision = tie.champion_decision
    assert (decision.rule, decision.becomes_champion, decision.champion_version) == ("paired_test", False, "1")
    assert decision.delta == 0.0 and decision.n == 200
    assert aliases(tmp_path) == {"challenger": 2, "champion": 1, "default": 1}

    better = register(tmp_path, "run-3", correct=BETTER)
    assert better.aliases == ["challenger", "champion", "default"]
    assert better.champion_decision.champion_accuracy == 0.5 and better.champion_decision.delta == pytest.approx(0.3)
    assert better.champion_decision.p_value == pytest.approx(2 * 0.5**60)
    assert aliases(tmp_path) == {"challenger": 3, "champion": 3, "default": 3}
    description = (Path(better.resource_name) / "description.md").read_text()
    assert "| | Base model | Champion (version 1) | Challenger (this version) |" in description
    assert "| Test accuracy | 50.0% | 50.0% | 80.0% |" in description
    assert "Champion: moves to this version (the challenger beats the champion on the same 200 questions" in description

    failed = register(tmp_path, "run-4", passes_gate=False, correct=[True] * 200)
    assert failed.aliases == ["challenger"] and failed.champion_decision.rule == "gate_failed"
    assert aliases(tmp_path)["champion"] == 3


def test_a_champion_tested_on_other_questions_stays_and_the_log_says_why(tmp_path, caplog):
    register(tmp_path, "run-1", correct=HALF)
    with caplog.at_level("WARNING"):
        other = register(tmp_path, "run-2", correct=[True] * 200, first_id=100)
    assert other.aliases == ["challenger"] and other.champion_decision.rule == "champion_kept_not_comparable"
    assert ("champion: stays (the champion was tested on other questions (200 vs 200 ids, 100 shared); "
            "move the alias by hand to promote)") in caplog.text
    assert aliases(tmp_path)["champion"] == 1


def test_a_champion_without_stored_predictions_stays(tmp_path):
    register(tmp_path, "run-1")  # registered without its predictions
    second = register(tmp_path, "run-2", correct=[True] * 200)
    assert second.aliases == ["challenger"]
    assert second.champion_decision.reason.startswith("no usable stored test predictions for the champion")


def test_a_champion_whose_stored_predictions_are_broken_stays_and_the_log_names_the_file(tmp_path, caplog):
    register(tmp_path, "run-1", correct=HALF)
    stored = tmp_path / "registry" / "medgemma-medqa" / "versions" / "1" / "predictions.jsonl"
    stored.write_text(stored.read_text().replace('"correct": true', '"correct": "true"', 1))
    with caplog.at_level("WARNING"):
        second = register(tmp_path, "run-2", correct=BETTER)
    assert second.aliases == ["challenger"] and second.champion_decision.rule == "champion_kept_not_comparable"
    assert (f"champion version 1: its stored predictions are unusable: {stored} line 1: field 'correct': "
            "expected a boolean, got 'true'") in caplog.text


def test_first_version_is_default_even_when_the_gate_failed(tmp_path):
    result = register(tmp_path, "run-1", passes_gate=False)
    assert result.aliases == ["challenger", "default"]
    assert "champion" not in aliases(tmp_path)


def test_explicit_passed_gate_overrides_comparison(tmp_path):
    register(tmp_path, "run-1")
    result = register(tmp_path, "run-2", passes_gate=True, passed_gate=False)
    assert result.aliases == ["challenger"]


def test_retried_registration_returns_the_existing_version_and_creates_none(tmp_path):
    first = register(tmp_path, "run-1")
    retry = register(tmp_path, "run-1")
    assert retry.created is False
    assert (retry.version, retry.resource_name, retry.aliases) == (first.version, first.resource_name, first.aliases)
    assert sorted(p.name for p in (tmp_path / "registry" / "medgemma-medqa" / "versions").iterdir()) == ["1"]


def test_retry_finishes_aliases_an_interrupted_attempt_left_unset(tmp_path):
    register(tmp_path, "run-1", correct=HALF)
    register(tmp_path, "run-2", correct=BETTER)
    # Simulate a crash of run-2 after its version was written but before aliases moved.
    (tmp_path / "registry" / "medgemma-medqa" / "aliases.json").write_text(
        json.dumps({"challenger": 1, "champion": 1, "default": 1})
    )
    retry = register(tmp_path, "run-2", correct=BETTER)
    assert retry.created is False and retry.aliases == ["challenger", "champion", "default"]
    assert aliases(tmp_path) == {"challenger": 2, "champion": 2, "default": 2}


def test_merged_mode_uses_merged_child_of_training_output(tmp_path):
    train = tmp_path / "train"
    make_adapter(train / "adapter")
    (train / "merged").mkdir()
    (train / "merged" / "config.json").write_text("{}")
    (train / "merged" / "model.safetensors").write_bytes(b"\x01" * 8)
    result = register_model(
        str(train),
        str(make_comparison(tmp_path / "compare")),
        str(tmp_path / "registry"),
        model_name="medgemma-medqa",
        base_model="google/medgemma-4b-it",
        recipe="medgemma-4b",
        data_fingerprint="",
        pipeline_run="run-merged",
        serving_mode="merged",
    )
    model_files = sorted(p.name for p in Path(result.uri).iterdir())
    assert model_files == ["config.json", "model.safetensors"]
    manifest = json.loads((Path(result.resource_name) / "manifest.json").read_text())
    assert "--model=$(AIP_STORAGE_URI)" in manifest["serving_container"]["args"]
    assert "--enable-lora" not in manifest["serving_container"]["args"]
    assert "data_fingerprint" not in manifest["labels"]  # empty values are left out, not blank labels


def test_model_already_in_gcs_is_referenced_not_copied(tmp_path):
    result = register_model(
        "gs://bucket/root/train/adapter",
        str(make_comparison(tmp_path / "compare")),
        str(tmp_path / "registry"),
        model_name="medgemma-medqa",
        base_model="google/medgemma-4b-it",
        recipe="medgemma-4b",
        data_fingerprint="x",
        pipeline_run="run-gcs",
    )
    assert result.uri == "gs://bucket/root/train/adapter"
    assert not (Path(result.resource_name) / "model").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"serving_mode": "gguf"}, "unknown serving_mode 'gguf'; valid choices: adapter, merged"),
        ({"model_name": "bad name!"}, "model_name must be"),
        ({"pipeline_run": " "}, "pipeline_run must not be empty"),
        ({"registry_uri": "vertex://projects/p"}, "registry_uri must look like vertex://projects/PROJECT/locations/REGION"),
        ({"registry_uri": "gs://bucket/registry"}, "registry_uri: a gs:// registry is not supported"),
    ],
)
def test_bad_parameters_are_named(tmp_path, change, message):
    kwargs = {
        "model_name": "medgemma-medqa",
        "base_model": "google/medgemma-4b-it",
        "recipe": "tiny-cpu",
        "data_fingerprint": "",
        "pipeline_run": "run-1",
        "serving_mode": "adapter",
    }
    registry_uri = change.pop("registry_uri", str(tmp_path / "registry"))
    kwargs.update(change)
    adapter = make_adapter(tmp_path / "adapter")
    with pytest.raises(UserError, match=re.escape(message)):
        register_model(str(adapter), str(make_comparison(tmp_path)), registry_uri, **kwargs)


def test_model_dir_without_adapter_files_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="model_dir: .* has no adapter_config.json"):
        register_model(str(tmp_path / "empty"), str(make_comparison(tmp_path)), str(tmp_path / "reg"),
                       model_name="m", base_model="b", recipe="tiny-cpu", data_fingerprint="", pipeline_run="x",
                       serving_mode="adapter")


def test_comparison_must_hold_the_gate_fields(tmp_path):
    (tmp_path / "comparison.json").write_text(json.dumps({"schema_version": 1, "tuned_accuracy": 0.5}))
    with pytest.raises(UserError, match=r"comparison.json: field 'model': missing \(and 16 more problems\)$"):
        load_comparison(tmp_path)
    with pytest.raises(UserError, match="comparison_path: .* not found"):
        load_comparison(tmp_path / "missing")


def test_register_accepts_the_compare_steps_real_output(tmp_path):
    from components.common.jsonl import write_json, write_jsonl
    from components.compare.core import compare_evaluations

    for name, correct in (("base", [True, False, False, False]), ("tuned", [True, True, True, False])):
        rows = [{"id": str(i), "gold": "A", "extracted": "A" if ok else "B", "correct": ok, "notebook_correct": ok,
                 "truncated": False, "tokens": 5} for i, ok in enumerate(correct)]
        write_jsonl(tmp_path / name / "predictions.jsonl", rows)
        write_json(tmp_path / name / "metrics.json", {"schema_version": 1, "model": "m", "n": 4, "samples": 4,
                                                      "accuracy": sum(correct) / 4, "ci_low": 0.0, "ci_high": 1.0,
                                                      "notebook_accuracy": sum(correct) / 4, "notebook_ci_low": 0.0,
                                                      "notebook_ci_high": 1.0, "format_rate": 1.0})
    comparison = compare_evaluations(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "compare"))
    result = register_model(str(make_adapter(tmp_path / "adapter")), str(tmp_path / "compare"),
                            str(tmp_path / "registry"), model_name="m", base_model="b", recipe="tiny-cpu",
                            data_fingerprint="", pipeline_run="run-1", serving_mode="adapter",
                            predictions_path=str(tmp_path / "tuned"))
    assert result.labels["passed_gate"] == str(comparison["passes_gate"]).lower()


def test_labels_follow_vertex_rules_and_long_values_stay_distinct():
    long_a = "medgemma-grpo-pipeline-" + "x" * 60 + "-a"
    long_b = "medgemma-grpo-pipeline-" + "x" * 60 + "-b"
    labels = build_labels(pipeline_run=long_a, base_model="Google/MedGemma-4B-IT", recipe="a b/c")
    for key, value in labels.items():
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) and re.fullmatch(r"[a-z0-9_-]{0,63}", value)
    assert labels["base_model"] == "google-medgemma-4b-it" and labels["recipe"] == "a-b-c"
    assert sanitize_label(long_a) != sanitize_label(long_b)
    assert len(sanitize_label(long_a)) == 63


def test_results_table_shows_the_comparison_numbers():
    table = results_table(Comparison.model_validate(COMPARISON))
    assert "| Baseline accuracy | 50.0% |" in table
    assert "| Delta | 10.0% (95% CI 2.0% to 18.0%) |" in table
    assert "| p-value (McNemar) | 0.004 |" in table
    assert "| Gate passed | yes |" in table


def test_cli_registers_and_prints_json(tmp_path, capsys):
    adapter = make_adapter(tmp_path / "adapter")
    comparison = make_comparison(tmp_path / "compare")
    argv = [str(adapter), str(comparison), str(tmp_path / "registry"), "--model-name", "medgemma-medqa",
            "--recipe", "medgemma-4b", "--pipeline-run", "cli-run", "--failed-gate", "--serving-mode", "adapter"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == "1" and printed["labels"]["passed_gate"] == "false"


def test_cli_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    argv = [str(tmp_path / "nope"), str(tmp_path / "c.json"), str(tmp_path / "reg"), "--model-name", "m",
            "--recipe", "r", "--pipeline-run", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: comparison_path:") and "\n" not in err


def test_kfp_wrapper_writes_the_registered_reference(tmp_path):
    from kfp import dsl

    from components.register.component import register_model as register_component

    adapter = make_adapter(tmp_path / "adapter")
    comparison_dir = tmp_path / "compare"
    make_comparison(comparison_dir)
    model = dsl.Model(uri=str(adapter))
    model.path = str(adapter)
    comparison = dsl.Artifact(uri=str(comparison_dir))
    comparison.path = str(comparison_dir)
    make_comparison(comparison_dir, n=4)
    evaluation = FakeArtifact(write_predictions(tmp_path / "eval", [True, True, False, True]))
    registered = dsl.Artifact(uri=str(tmp_path / "out" / "registered_model"))
    registered.path = str(tmp_path / "out" / "registered_model")
    report = FakeArtifact(tmp_path / "out" / "champion_report")
    (tmp_path / "out").mkdir()

    returned = register_component(
        model=model, comparison=comparison, tuned_evaluation=evaluation, registered_model=registered,
        champion_report=report, registry_uri=str(tmp_path / "registry"),
        model_name="medgemma-medqa", recipe="medgemma-4b", pipeline_run="kfp-run", serving_mode="adapter",
    )
    assert returned == str(tmp_path / "registry" / "medgemma-medqa" / "versions" / "1")
    written = json.loads((Path(registered.path) / "registration.json").read_text())
    assert written["resource_name"] == returned and written["schema_version"] == 1
    assert written["champion_decision"]["rule"] == "no_champion_yet"
    assert registered.metadata["aliases"] == ["challenger", "champion", "default"]
    assert "| Test accuracy | 50.0% | n/a | 60.0% |" in Path(report.path).read_text()


def test_kfp_wrapper_turns_a_bad_comparison_into_one_line_and_exit_2(tmp_path, capsys):
    from components.register.component import register_model as register_component

    make_comparison(tmp_path / "compare", passes_gate="false")
    with pytest.raises(SystemExit) as exited:
        register_component(
            model=FakeArtifact(make_adapter(tmp_path / "adapter")), comparison=FakeArtifact(tmp_path / "compare"),
            tuned_evaluation=FakeArtifact(tmp_path / "eval"), registered_model=FakeArtifact(tmp_path / "out"),
            champion_report=FakeArtifact(tmp_path / "report"), registry_uri=str(tmp_path / "registry"),
            model_name="m", recipe="r", pipeline_run="run",
        )
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        f"error: comparison_path: {tmp_path / 'compare' / 'comparison.json'}: field 'passes_gate': expected a "
        "boolean, got 'false'\n"
    )


def test_kfp_wrapper_compiles_as_a_lightweight_component(tmp_path):
    from kfp import compiler, dsl

    from components.register.component import register_model as register_component

    component = dsl.component(register_component, base_image="python:3.11-slim", install_kfp_package=False)
    compiler.Compiler().compile(component, str(tmp_path / "register.yaml"))
    text = (tmp_path / "register.yaml").read_text()
    assert "registered_model" in text and "from components.register.core import register_model" in text



def test_bare_vertex_uri_is_refused_with_what_to_give(tmp_path):
    from components.register.core import parse_vertex_registry_uri

    with pytest.raises(UserError, match="vertex://projects/P/locations/L"):
        parse_vertex_registry_uri("vertex://")
    assert parse_vertex_registry_uri("vertex://projects/p1/locations/europe-west4") == ("p1", "europe-west4")


def test_serving_flags_come_from_the_recipe_and_its_overrides(tmp_path):
    register(tmp_path, "run-1", recipe_overrides=["serving.max_model_len=8192", "serving.deployment_timeout_s=3600"])
    manifest = json.loads((tmp_path / "registry" / "medgemma-medqa" / "versions" / "1" / "manifest.json").read_text())
    container = manifest["serving_container"]
    assert "--max-model-len=8192" in container["args"] and "--gpu-memory-utilization=0.9" in container["args"]
    assert (container["shared_memory_size_mb"], container["deployment_timeout_s"]) == (16384, 3600)


def test_vertex_default_resolves_to_the_runs_own_project_and_region():
    from components.register.core import resolve_registry_uri

    assert resolve_registry_uri("vertex://", "p1", "europe-west4") == "vertex://projects/p1/locations/europe-west4"
    assert resolve_registry_uri("vertex://projects/p2/locations/us-east1", "p1", "x") == (
        "vertex://projects/p2/locations/us-east1")
    assert resolve_registry_uri("/tmp/registry", "", "") == "/tmp/registry"


@pytest.mark.parametrize(("project", "location"), [("", ""), ("{{$.pipeline_google_cloud_project_id}}", "us-east1")])
def test_vertex_default_outside_vertex_says_what_to_give(project, location):
    from components.register.core import resolve_registry_uri

    with pytest.raises(UserError, match="registry_uri 'vertex://' means this run's own project and region"):
        resolve_registry_uri("vertex://", project, location)


@pytest.mark.parametrize(("uri", "message"), [
    ("", "registry_uri must not be empty"),
    ("gs://bucket/registry", "registry_uri: a gs:// registry is not supported"),
    ("vertex://projects/p1", "registry_uri must look like vertex://projects/PROJECT/locations/REGION"),
])
def test_registry_uri_of_the_wrong_form_is_refused(uri, message):
    from components.register.core import check_registry_uri

    with pytest.raises(UserError, match=message):
        check_registry_uri(uri)
