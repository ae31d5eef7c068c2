"""The deploy and smoke-test steps against the Vertex AI REST API as the real aiplatform SDK speaks it.

The loopback Vertex stand-in (tests/fakes/vertex.py) records each request body and keeps endpoints, deployed
models and traffic splits; its predict route answers as Model Garden's vLLM container would (a chat completion).
"""

import json
import logging

import pytest
from builders import passed_comparison
from fakes.vertex import FakeVertex
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.types import AcceleratorType

from components.common.artifacts import Deployment, write_document
from components.common.errors import UserError
from components.deploy.core import DeploymentSpec, deploy_model, load_deployment, write_deployment
from components.deploy.smoke_test import SmokeTestFailed, smoke_test
from components.register.core import register_model

PROJECT, LOCATION = "test-project", "us-central1"
REGISTRY = f"vertex://projects/{PROJECT}/locations/{LOCATION}"
MODEL = f"projects/{PROJECT}/locations/{LOCATION}/models/1000"
QUESTION_TEXT = "A 23-year-old pregnant woman at 22 weeks gestation presents with burning upon urination"


@pytest.fixture
def vertex():
    with FakeVertex() as server:
        yield server


def register(vertex, tmp_path, run, serving_mode="merged"):
    comparison = tmp_path / f"compare-{run}" / "comparison.json"
    comparison.parent.mkdir(parents=True)
    write_document(comparison, passed_comparison(0.5, 0.6))
    result = register_model(f"gs://bucket/root/{run}/train/{serving_mode}", str(comparison), REGISTRY,
                            model_name="medgemma-medqa", base_model="google/medgemma-4b-it", recipe="medgemma-4b",
                            data_fingerprint="f", pipeline_run=run, serving_mode=serving_mode,
                            api_endpoint=vertex.endpoint, credentials=AnonymousCredentials())
    return result.to_dict()


def deploy(vertex, registration, **spec):
    return deploy_model(registration, DeploymentSpec(endpoint_name="medqa-endpoint", **spec),
                        api_endpoint=vertex.endpoint, credentials=AnonymousCredentials())


def deploy_requests(vertex):
    return [r.body for r in vertex.requests_to("POST", r":deployModel$")]


def write_test_data(tmp_path, answers="ABCD"):
    rows = [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"{QUESTION_TEXT} ({i})"}], "answer": answer,
             "letters": ["A", "B", "C", "D"]} for i, answer in enumerate(answers)]
    path = tmp_path / "prepared" / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path.parent


def chat_completion(text):
    return {"id": "c1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}


def run_smoke_test(vertex, tmp_path, deployment, **kwargs):
    path = tmp_path / "deployment.json"
    path.write_text(deployment.model_dump_json())
    return smoke_test(path, write_test_data(tmp_path), tmp_path / "smoke", recipe="tiny-cpu",
                      api_endpoint=vertex.endpoint, credentials=AnonymousCredentials(), **kwargs)


def test_first_deploy_creates_the_endpoint_and_sends_the_machine_spec_with_all_traffic(vertex, tmp_path):
    registration = register(vertex, tmp_path, "run-1")
    deployment = deploy(vertex, registration, machine_type="g2-standard-12", accelerator_type="NVIDIA_L4",
                        accelerator_count=1, min_replica_count=1, max_replica_count=2, traffic_percentage=100)

    [created] = [r.body for r in vertex.requests_to("POST", r"/endpoints$")]
    assert created["displayName"] == "medqa-endpoint"
    [request] = deploy_requests(vertex)
    deployed = request["deployedModel"]
    assert deployed["model"] == f"{MODEL}@1"
    assert deployed["displayName"] == "medgemma-medqa-v1"
    resources = deployed["dedicatedResources"]
    # The REST transport sends enums by number.
    assert resources["machineSpec"] == {"machineType": "g2-standard-12", "acceleratorType": AcceleratorType.NVIDIA_L4,
                                        "acceleratorCount": 1}
    assert (resources["minReplicaCount"], resources["maxReplicaCount"]) == (1, 2)
    assert request["trafficSplit"] == {"0": 100}  # "0": the model being deployed

    # What the endpoint serves: the registered version's vLLM container, merged weights, the recipe's flags.
    [version] = vertex.model_versions("1000")
    container = version["containerSpec"]
    assert "--model=$(AIP_STORAGE_URI)" in container["args"] and "--enable-lora" not in container["args"]
    assert "--max-model-len=4096" in container["args"] and "--gpu-memory-utilization=0.9" in container["args"]
    assert {"name": "MODEL_ID", "value": "google/medgemma-4b-it"} in container["env"]
    assert (container["predictRoute"], container["sharedMemorySizeMb"]) == ("/generate", "16384")

    endpoint = vertex.endpoint_named("medqa-endpoint")
    assert deployment.endpoint == endpoint["name"] and deployment.created
    assert deployment.traffic_split == {deployment.deployed_model_id: 100} == endpoint["trafficSplit"]
    assert deployment.previous_traffic_split == {}
    assert deployment.model == f"{MODEL}@1"


def test_canary_deploy_keeps_the_rest_on_the_previous_version_and_a_retry_deploys_nothing(vertex, tmp_path):
    first = deploy(vertex, register(vertex, tmp_path, "run-1"))
    registration = register(vertex, tmp_path, "run-2")
    canary = deploy(vertex, registration, traffic_percentage=10)

    assert len(vertex.requests_to("POST", r"/endpoints$")) == 1  # found by name the second time
    second_request = deploy_requests(vertex)[1]
    assert second_request["deployedModel"]["model"] == f"{MODEL}@2"
    assert second_request["trafficSplit"] == {first.deployed_model_id: 90, "0": 10}
    assert canary.previous_traffic_split == {first.deployed_model_id: 100}
    assert canary.traffic_split == {first.deployed_model_id: 90, canary.deployed_model_id: 10}
    assert not canary.created

    retry = deploy(vertex, registration, traffic_percentage=10)
    assert len(deploy_requests(vertex)) == 2
    assert retry.deployed_model_id == canary.deployed_model_id
    assert retry.previous_traffic_split == {first.deployed_model_id: 100}


def test_an_adapter_is_refused_before_anything_is_deployed(vertex, tmp_path):
    registration = register(vertex, tmp_path, "run-1", serving_mode="adapter")
    refused = r"serving_mode 'adapter' cannot be deployed: .*vllm#32758.*serving_mode=merged"
    with pytest.raises(UserError, match=refused):
        deploy(vertex, registration)
    assert deploy_requests(vertex) == [] and vertex.requests_to("POST", r"/endpoints$") == []


def test_bad_deploy_parameters_are_named(vertex, tmp_path):
    registration = register(vertex, tmp_path, "run-1")
    for spec, message in [({"traffic_percentage": 0}, "traffic_percentage must be 1-100"),
                          ({"min_replica_count": 2, "max_replica_count": 1}, "min_replica_count <= max_replica_count"),
                          ({"accelerator_type": "", "accelerator_count": 1}, "accelerator_type and accelerator_count")]:
        with pytest.raises(UserError, match=message):
            deploy(vertex, registration, **spec)
    with pytest.raises(UserError, match="endpoint_name must be"):
        deploy_model(registration, DeploymentSpec(endpoint_name="bad name"))
    assert deploy_requests(vertex) == []


def test_smoke_test_sends_openai_chat_requests_through_predict_and_parses_the_answers(vertex, tmp_path, caplog):
    vertex.answer_predictions_with(lambda instance, deployed: chat_completion("Finding. <answer>A</answer>"))
    deployment = deploy(vertex, register(vertex, tmp_path, "run-1"))
    with caplog.at_level(logging.DEBUG):
        report = run_smoke_test(vertex, tmp_path, deployment, prompts=3)

    predicts = vertex.requests_to("POST", r":predict$")
    assert len(predicts) == 3
    instance = predicts[0].body["instances"][0]
    assert instance["@requestFormat"] == "chatCompletions"
    assert instance["messages"] == [{"role": "user", "content": f"{QUESTION_TEXT} (0)"}]
    # the tiny-cpu recipe's evaluation decoding
    assert (instance["max_tokens"], instance["temperature"], instance["top_p"], instance["seed"]) == (16, 0.7, 0.9, 42)
    assert (report["n"], report["answered"], report["errors"]) == (3, 3, 0)
    assert report["format_rate"] == 1.0 and report["accuracy"] == pytest.approx(1 / 3)  # golds A, B, C
    assert 0 < report["latency_p50_s"] <= report["latency_p95_s"]
    assert report["served_by"] == {deployment.deployed_model_id: 3}
    assert report["passed"] and not report["rolled_back"] and not report["undeployed"]
    saved = (tmp_path / "smoke" / "smoke_test.json").read_text()
    assert json.loads(saved)["format_rate"] == 1.0
    assert QUESTION_TEXT not in saved and QUESTION_TEXT not in caplog.text and "<answer>" not in caplog.text


def test_garbage_answers_fail_the_smoke_test_and_roll_the_canary_back(vertex, tmp_path):
    first = deploy(vertex, register(vertex, tmp_path, "run-1"))
    canary = deploy(vertex, register(vertex, tmp_path, "run-2"), traffic_percentage=10)
    vertex.answer_predictions_with(lambda instance, deployed: chat_completion("the answer is probably B"))

    with pytest.raises(SmokeTestFailed) as failure:
        run_smoke_test(vertex, tmp_path, canary, prompts=4)
    message = str(failure.value)
    assert "\n" not in message and "format rate 0.000 is below min_format_rate 0.9" in message
    assert "rolled back to the previous version" in message
    [undeploy] = vertex.requests_to("POST", r":undeployModel$")
    assert undeploy.body == {"deployedModelId": canary.deployed_model_id,
                             "trafficSplit": {first.deployed_model_id: 100}}
    endpoint = vertex.endpoint_named("medqa-endpoint")
    assert endpoint["trafficSplit"] == {first.deployed_model_id: 100}
    assert [m["id"] for m in endpoint["deployedModels"]] == [first.deployed_model_id]
    report = json.loads((tmp_path / "smoke" / "smoke_test.json").read_text())
    assert report["rolled_back"] and not report["passed"]


def test_endpoint_errors_fail_the_smoke_test_and_a_first_version_stays(vertex, tmp_path):
    deployment = deploy(vertex, register(vertex, tmp_path, "run-1"))
    vertex.answer_predictions_with(lambda instance, deployed: (500, "model server crashed"))
    with pytest.raises(SmokeTestFailed, match=r"4 of 4 requests failed \(first: InternalServerError \(500\) from "
                                              r".*:predict\); no previous version to roll back to"):
        run_smoke_test(vertex, tmp_path, deployment, prompts=4)
    assert vertex.requests_to("POST", r":undeployModel$") == []


def test_undeploy_after_takes_the_new_version_off(vertex, tmp_path):
    first = deploy(vertex, register(vertex, tmp_path, "run-1"))
    canary = deploy(vertex, register(vertex, tmp_path, "run-2"), traffic_percentage=50)
    vertex.answer_predictions_with(lambda instance, deployed: chat_completion("<answer>(b)</answer>"))
    report = run_smoke_test(vertex, tmp_path, canary, prompts=4, undeploy_after=True)
    assert report["passed"] and report["undeployed"]
    # a 50% canary: the endpoint's traffic split decides which version answers each prompt
    assert set(report["served_by"]) == {first.deployed_model_id, canary.deployed_model_id}
    assert sum(report["served_by"].values()) == 4
    assert vertex.endpoint_named("medqa-endpoint")["trafficSplit"] == {first.deployed_model_id: 100}


def test_cli_smoke_test_failure_is_one_line_and_exit_2(vertex, tmp_path, capsys, monkeypatch):
    import google.auth

    from components.deploy.__main__ import main

    # The CLI uses Application Default Credentials, as on Vertex; here they are anonymous.
    monkeypatch.setattr(google.auth, "default", lambda *args, **kwargs: (AnonymousCredentials(), PROJECT))
    deployment = deploy(vertex, register(vertex, tmp_path, "run-1"))
    (tmp_path / "deployment.json").write_text(deployment.model_dump_json())
    vertex.answer_predictions_with(lambda instance, deployed: {"not": "a chat completion"})
    argv = ["smoke-test", str(tmp_path / "deployment.json"), str(write_test_data(tmp_path)), "--output-dir",
            str(tmp_path / "out"), "--recipe", "tiny-cpu", "--prompts", "2", "--api-endpoint", vertex.endpoint]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: smoke test failed on") and "\n" not in err
    assert "not a chat completion" in err


def test_deployment_record_round_trips(tmp_path):
    record = Deployment(backend="file", endpoint="/e", endpoint_name="e", deployed_model_id="1", model="/m",
                        model_uri="/m/model", traffic_split={"1": 100}, previous_traffic_split={}, created=True)
    write_deployment(record, tmp_path)
    assert load_deployment(tmp_path) == record
    with pytest.raises(UserError, match="deployment: .* not found"):
        load_deployment(tmp_path / "missing")
    # Strict, like every document between steps: a string where a count belongs names the field.
    bad = record.model_dump(mode="json") | {"traffic_split": {"1": "100"}}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "deployment.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"deployment.json: field 'traffic_split.1': expected an integer"):
        load_deployment(tmp_path / "bad")
