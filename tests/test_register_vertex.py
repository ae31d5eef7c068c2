"""The register step against the Vertex AI REST API as the real aiplatform SDK speaks it.

Servers on loopback, started here: a Vertex REST stand-in that records request bodies, and
gcp-storage-emulator as GCS. Credentials are anonymous; nothing leaves the machine.
"""

import json
import logging
from pathlib import Path

import pytest
from fakes.gcs import FakeGcs
from fakes.vertex import FakeVertex
from google.auth.credentials import AnonymousCredentials

from components.common.errors import UserError
from components.register.core import DEFAULT_VLLM_IMAGE, EVALUATION_METRICS_SCHEMA_URI, register_model

PROJECT, LOCATION, BUCKET = "test-project", "us-central1", "pipeline-bucket"
REGISTRY = f"vertex://projects/{PROJECT}/locations/{LOCATION}"
MODEL_PATH = rf"/v1/projects/{PROJECT}/locations/{LOCATION}/models"
QUESTION_TEXT = "A 23-year-old pregnant woman at 22 weeks gestation presents with burning upon urination"


@pytest.fixture
def vertex():
    with FakeVertex() as server:
        yield server


@pytest.fixture(scope="module")
def gcs_server():
    with FakeGcs(default_bucket=BUCKET) as server:
        yield server


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    gcs_server.wipe(keep_buckets=True)  # one emulator per module (stopping one takes a second), clean per test
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    return gcs_server


@pytest.fixture
def model_dir(tmp_path):
    adapter = tmp_path / "train" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 128)
    (adapter / "training_summary.json").write_text(json.dumps({"global_step": 3}))
    return adapter


def write_comparison(folder: Path, passes_gate: bool, n: int = 400, tuned_accuracy: float = 0.625) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    comparison = {
        "schema_version": 1,
        "model": "google/medgemma-4b-it",
        "tuned_model": "google/medgemma-4b-it",
        "baseline_accuracy": 0.5,
        "tuned_accuracy": tuned_accuracy,
        "delta": 0.125,
        "delta_ci_low": 0.05,
        "delta_ci_high": 0.2,
        "test": "mcnemar_exact",
        "p_value": 0.003,
        "favours": "tuned",
        "passes_gate": passes_gate,
        "margin": 0.0,
        "alpha": 0.05,
        "n": n,
        "samples_per_question": {"baseline": 1, "tuned": 1},
        "questions_baseline_better": 20,
        "questions_tuned_better": 70,
        "bootstrap": {"resamples": 10000, "seed": 0, "confidence": 0.95},
    }
    (folder / "comparison.json").write_text(json.dumps(comparison))
    return folder / "comparison.json"


def write_predictions(folder: Path, correct: list[bool]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"q{i}", "gold": "A", "extracted": "A" if ok else "B", "correct": ok, "truncated": False,
             "tokens": 5} for i, ok in enumerate(correct)]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def register(vertex, tmp_path, model_dir, run, passes_gate=True, correct=None, **overrides):
    kwargs = dict(
        model_name="medgemma-medqa",
        base_model="google/medgemma-4b-it",
        recipe="medgemma-4b-h100",
        data_fingerprint="sha256-feedbeef",
        pipeline_run=run,
        serving_mode="adapter",
        staging_uri=f"gs://{BUCKET}/root/{run}/register-model/registered_model/model",
        api_endpoint=vertex.endpoint,
        credentials=AnonymousCredentials(),
    )
    kwargs.update(overrides)
    if correct is not None:
        kwargs["predictions_path"] = str(write_predictions(tmp_path / f"eval-{run}", correct))
        comparison = write_comparison(tmp_path / f"compare-{run}", passes_gate, n=len(correct),
                                      tuned_accuracy=sum(correct) / len(correct))
    else:
        comparison = write_comparison(tmp_path / f"compare-{run}", passes_gate)
    return register_model(str(model_dir), str(comparison), REGISTRY, **kwargs)


def uploads(vertex):
    return [r.body["model"] | {"parentModel": r.body.get("parentModel")} for r in vertex.requests_to("POST", r"models:upload$")]


def gcs_objects(prefix):
    from google.cloud import storage

    client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
    return sorted(blob.name for blob in client.list_blobs(BUCKET, prefix=prefix))


def test_first_registration_uploads_files_and_a_deployable_vllm_model(vertex, gcs, tmp_path, model_dir):
    result = register(vertex, tmp_path, model_dir, "run-1")

    staged = "root/run-1/register-model/registered_model/model"
    assert gcs_objects(staged) == [
        f"{staged}/adapter_config.json",
        f"{staged}/adapter_model.safetensors",
        f"{staged}/training_summary.json",
    ]
    [upload] = uploads(vertex)
    assert upload["displayName"] == "medgemma-medqa"
    assert upload["artifactUri"] == f"gs://{BUCKET}/{staged}"
    assert upload["parentModel"] is None  # no model of this name yet
    assert sorted(upload["versionAliases"]) == ["challenger", "champion", "default"]
    assert upload["labels"] == {
        "pipeline_run": "run-1",
        "base_model": "google-medgemma-4b-it",
        "recipe": "medgemma-4b-h100",
        "data_fingerprint": "sha256-feedbeef",
        "serving_mode": "adapter",
        "passed_gate": "true",
    }
    assert "| Tuned accuracy | 62.5% |" in upload["description"]
    assert "| Delta | 12.5% (95% CI 5.0% to 20.0%) |" in upload["description"]
    container = upload["containerSpec"]
    assert container["imageUri"] == DEFAULT_VLLM_IMAGE
    assert container["args"][:3] == ["python", "-m", "vllm.entrypoints.api_server"]
    assert "--model=google/medgemma-4b-it" in container["args"]
    assert "--enable-lora" in container["args"]
    assert "--lora-modules=medgemma-medqa=$(AIP_STORAGE_URI)" in container["args"]
    assert container["ports"] == [{"containerPort": 8080}]
    assert (container["predictRoute"], container["healthRoute"]) == ("/generate", "/ping")
    assert {"name": "MODEL_ID", "value": "google/medgemma-4b-it"} in container["env"]

    [imported] = vertex.requests_to("POST", r"evaluations:import$")
    assert imported.path == f"{MODEL_PATH}/1000@1/evaluations:import"
    evaluation = imported.body["modelEvaluation"]
    assert evaluation["metricsSchemaUri"] == EVALUATION_METRICS_SCHEMA_URI
    assert evaluation["metrics"]["tuned_accuracy"] == 0.625
    assert evaluation["metrics"]["passes_gate"] is True
    assert evaluation["metadata"]["pipeline_job_id"] == "run-1"

    assert result.resource_name == f"projects/{PROJECT}/locations/{LOCATION}/models/1000@1"
    assert (result.version, result.created, result.backend) == ("1", True, "vertex")
    assert result.aliases == ["challenger", "champion", "default"]


HALF = [i % 2 == 0 for i in range(200)]
BETTER = [i % 2 == 0 or i % 10 in (1, 3, 5) for i in range(200)]


def test_next_run_is_a_new_version_of_the_parent_and_champion_stays_when_gate_failed(vertex, gcs, tmp_path, model_dir):
    register(vertex, tmp_path, model_dir, "run-1", passes_gate=True, correct=HALF)
    second = register(vertex, tmp_path, model_dir, "run-2", passes_gate=False, correct=BETTER)

    first_upload, second_upload = uploads(vertex)
    assert second_upload["parentModel"] == f"projects/{PROJECT}/locations/{LOCATION}/models/1000"
    assert second_upload["versionAliases"] == ["challenger"]  # not default, not champion
    assert second.version == "2" and second.aliases == ["challenger"]
    v1, v2 = vertex.model_versions("1000")
    assert sorted(v1["versionAliases"]) == ["champion", "default"]  # challenger moved to version 2
    assert v2["versionAliases"] == ["challenger"]
    # the parent was looked up by display name, and this run's label was checked before uploading
    lookups = [r.query["filter"] for r in vertex.requests_to("GET", r"/models$")]
    assert lookups == ['display_name="medgemma-medqa"'] * 2
    run_query, champion_query = vertex.requests_to("GET", r":listVersions$")
    assert run_query.query["filter"] == 'labels.pipeline_run="run-2"'
    assert "filter" not in champion_query.query  # every version, to find the one holding 'champion'

    third = register(vertex, tmp_path, model_dir, "run-3", passes_gate=True, correct=BETTER)
    assert sorted(uploads(vertex)[2]["versionAliases"]) == ["challenger", "champion", "default"]
    assert third.aliases == ["challenger", "champion", "default"]
    assert [sorted(v["versionAliases"]) for v in vertex.model_versions("1000")] == [
        [],
        [],
        ["challenger", "champion", "default"],
    ]
    assert third.champion_decision.rule == "paired_test" and third.champion_decision.champion_version == "1"


def test_retried_registration_sends_no_second_upload_or_evaluation(vertex, gcs, tmp_path, model_dir):
    first = register(vertex, tmp_path, model_dir, "run-1")
    register(vertex, tmp_path, model_dir, "run-2", passes_gate=False)
    retry = register(vertex, tmp_path, model_dir, "run-1")

    assert len(vertex.requests_to("POST", r"models:upload$")) == 2
    assert len(vertex.requests_to("POST", r"evaluations:import$")) == 2
    assert retry.created is False
    assert retry.resource_name == first.resource_name
    assert retry.aliases == ["champion", "default"]  # what version 1 holds now


def test_retry_imports_the_evaluation_an_interrupted_attempt_did_not(vertex, gcs, tmp_path, model_dir):
    register(vertex, tmp_path, model_dir, "run-1")
    vertex.state.evaluations.clear()  # as if the first attempt died between upload and evaluation import
    register(vertex, tmp_path, model_dir, "run-1")
    assert len(vertex.requests_to("POST", r"models:upload$")) == 1
    assert len(vertex.requests_to("POST", r"evaluations:import$")) == 2


def test_model_already_in_gcs_is_not_copied(vertex, gcs, tmp_path, model_dir):
    register(vertex, tmp_path, "gs://other-bucket/root/train/adapter", "run-gs")
    [upload] = uploads(vertex)
    assert upload["artifactUri"] == "gs://other-bucket/root/train/adapter"
    assert gcs_objects("root/") == []


def test_merged_weights_serve_from_the_artifact(vertex, gcs, tmp_path):
    merged = tmp_path / "train" / "merged"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"\x01" * 16)
    register(vertex, tmp_path, tmp_path / "train", "run-merged", serving_mode="merged")
    [upload] = uploads(vertex)
    args = upload["containerSpec"]["args"]
    assert "--model=$(AIP_STORAGE_URI)" in args and "--enable-lora" not in args
    assert upload["labels"]["serving_mode"] == "merged"
    assert gcs_objects("root/run-merged/") == [
        "root/run-merged/register-model/registered_model/model/config.json",
        "root/run-merged/register-model/registered_model/model/model.safetensors",
    ]


def test_local_files_need_a_gcs_staging_uri(vertex, gcs, tmp_path, model_dir):
    with pytest.raises(UserError, match="staging_uri"):
        register(vertex, tmp_path, model_dir, "run-x", staging_uri=None)
    with pytest.raises(UserError, match="staging_uri must start with gs://"):
        register(vertex, tmp_path, model_dir, "run-x", staging_uri="/tmp/somewhere")
    assert vertex.requests_to("POST", r"models:upload$") == []


def test_no_question_text_reaches_the_registry_or_the_logs(vertex, gcs, tmp_path, model_dir, caplog):
    """Evaluation outputs next to comparison.json hold question text; none of it may be forwarded."""
    compare_dir = tmp_path / "compare-run-q"
    write_comparison(compare_dir, passes_gate=True)
    (compare_dir / "report.md").write_text(f"Example: {QUESTION_TEXT}\n")
    (model_dir / "sample_completions.jsonl").write_text(json.dumps({"prompt": QUESTION_TEXT}) + "\n")
    with caplog.at_level(logging.DEBUG):
        register_model(
            str(model_dir), str(compare_dir), REGISTRY, model_name="medgemma-medqa", base_model="google/medgemma-4b-it",
            recipe="tiny-cpu", data_fingerprint="f", pipeline_run="run-q", serving_mode="adapter", staging_uri=f"gs://{BUCKET}/root/run-q",
            api_endpoint=vertex.endpoint, credentials=AnonymousCredentials(),
        )
    sent = json.dumps([r.body for r in vertex.requests])
    assert "medgemma-medqa" in sent  # the bodies were recorded
    assert QUESTION_TEXT not in sent
    assert QUESTION_TEXT not in caplog.text


def test_kfp_wrapper_stages_local_files_under_its_output_in_the_pipeline_root(vertex, gcs, tmp_path, model_dir,
                                                                            monkeypatch):
    import google.auth
    from kfp import dsl

    # The wrapper uses Application Default Credentials, as on Vertex; here they are anonymous.
    monkeypatch.setattr(google.auth, "default", lambda *args, **kwargs: (AnonymousCredentials(), PROJECT))

    from components.register.component import register_model as register_component

    model = dsl.Model(uri=str(model_dir))
    model.path = str(model_dir)
    comparison_file = write_comparison(tmp_path / "compare", passes_gate=True, n=len(HALF))
    comparison = dsl.Artifact(uri=str(comparison_file))
    comparison.path = str(comparison_file)
    evaluation = dsl.Artifact(uri=str(tmp_path / "eval"))
    evaluation.path = str(write_predictions(tmp_path / "eval", HALF))
    output_uri = f"gs://{BUCKET}/root/run-kfp/register-model/registered_model"
    registered = dsl.Artifact(uri=output_uri)
    registered.custom_path = str(tmp_path / "gcs-mount" / "registered_model")  # stands in for the /gcs/ mount
    report = dsl.Markdown(uri=f"gs://{BUCKET}/root/run-kfp/register-model/champion_report")
    report.custom_path = str(tmp_path / "gcs-mount" / "champion_report")

    returned = register_component(
        model=model, comparison=comparison, tuned_evaluation=evaluation, registered_model=registered,
        champion_report=report, registry_uri=REGISTRY, model_name="medgemma-medqa", recipe="medgemma-4b-h100",
        pipeline_run="run-kfp", api_endpoint=vertex.endpoint, serving_mode="adapter",
    )
    [upload] = uploads(vertex)
    assert upload["artifactUri"] == f"{output_uri}/model"
    assert len(gcs_objects("root/run-kfp/register-model/registered_model/model/")) == 3
    assert returned == f"projects/{PROJECT}/locations/{LOCATION}/models/1000@1"
    assert registered.metadata["resource_name"] == returned
    assert json.loads((Path(registered.path) / "registration.json").read_text())["version"] == "1"
    assert "Champion: moves to this version (no champion yet" in Path(report.path).read_text()


def test_champion_moves_only_to_a_version_that_beats_it_on_the_stored_predictions(vertex, gcs, tmp_path, model_dir):
    first = register(vertex, tmp_path, model_dir, "run-1", correct=HALF)
    stored = f"gs://{BUCKET}/root/run-1/register-model/registered_model/test_predictions.jsonl"
    assert first.predictions_uri == stored
    assert gcs_objects("root/run-1/register-model/registered_model/test_")  == [stored.removeprefix(f"gs://{BUCKET}/")]
    [imported] = vertex.requests_to("POST", r"evaluations:import$")
    assert imported.body["modelEvaluation"]["metadata"]["predictions_uri"] == stored

    tie = register(vertex, tmp_path, model_dir, "run-2", correct=HALF[1:] + HALF[:1])
    assert tie.aliases == ["challenger"]
    assert (tie.champion_decision.rule, tie.champion_decision.champion_version) == ("paired_test", "1")
    assert [sorted(v["versionAliases"]) for v in vertex.model_versions("1000")] == [["champion", "default"], ["challenger"]]
    assert "| | Base model | Champion (version 1) | Challenger (this version) |" in uploads(vertex)[1]["description"]

    better = register(vertex, tmp_path, model_dir, "run-3", correct=BETTER)
    assert better.aliases == ["challenger", "champion", "default"]
    assert better.champion_decision.p_value == pytest.approx(2 * 0.5**60)
    assert "| Test accuracy | 50.0% | 50.0% | 80.0% |" in uploads(vertex)[2]["description"]


def test_a_champion_tested_on_other_questions_stays_on_vertex(vertex, gcs, tmp_path, model_dir, caplog):
    register(vertex, tmp_path, model_dir, "run-1", correct=HALF)
    with caplog.at_level(logging.WARNING):
        other = register(vertex, tmp_path, model_dir, "run-2", correct=[True] * 150)
    assert other.aliases == ["challenger"]
    assert "champion: stays (the champion was tested on other questions (200 vs 150 ids, 150 shared)" in caplog.text


def test_a_staging_bucket_that_does_not_exist_is_one_line(vertex, gcs, tmp_path, model_dir):
    with pytest.raises(UserError) as raised:
        register(vertex, tmp_path, model_dir, "run-x", staging_uri="gs://no-such-bucket/root/model")
    assert str(raised.value) == (
        "staging_uri: bucket 'no-such-bucket' does not exist or these credentials cannot see it (NotFound)"
    )
    assert vertex.requests_to("POST", r"models:upload$") == []


def test_cmek_key_reaches_the_model_upload(vertex, gcs, tmp_path, model_dir):
    key = f"projects/{PROJECT}/locations/{LOCATION}/keyRings/ml/cryptoKeys/models"
    register(vertex, tmp_path, model_dir, "run-cmek", encryption_key=key)
    [upload] = uploads(vertex)
    assert upload["encryptionSpec"] == {"kmsKeyName": key}


def test_without_a_key_the_upload_asks_for_no_cmek(vertex, gcs, tmp_path, model_dir):
    register(vertex, tmp_path, model_dir, "run-google-managed")
    [upload] = uploads(vertex)
    assert "encryptionSpec" not in upload


def test_data_fingerprint_is_a_label_of_the_version(vertex, gcs, tmp_path, model_dir):
    from components.data_prep.outputs import data_fingerprint

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split in ("train", "validation", "test"):
        (prepared / f"{split}.jsonl").write_text(json.dumps({"id": split}) + "\n")
    fingerprint = data_fingerprint(prepared)
    register(vertex, tmp_path, model_dir, "run-fingerprint", data_fingerprint=fingerprint)
    [upload] = uploads(vertex)
    assert upload["labels"]["data_fingerprint"] == fingerprint
