"""The deploy and smoke-test steps locally: a folder endpoint next to the file registry, served by a real
``transformers serve`` process over the registered tiny model; and the chat client against a broken server."""

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from builders import passed_comparison
from fakes.loopback import LoopbackServer

from components.common.artifacts import write_document
from components.common.errors import UserError
from components.deploy.chat import ChatClient, OpenAIServer
from components.deploy.core import DeploymentSpec, deploy_model, rollback, share_traffic, split_without
from components.deploy.smoke_test import SmokeTestFailed, run_prompts, smoke_test
from components.register.core import register_model


def serving_available() -> bool:
    from transformers.utils.import_utils import is_serve_available

    return is_serve_available()


needs_serving = pytest.mark.skipif(not serving_available(), reason="transformers serve's packages are not installed "
                                   "(pip install -e '.[serve]')")


def register(tmp_path: Path, model_dir: str, run: str, serving_mode: str = "merged") -> dict:
    comparison = tmp_path / f"compare-{run}" / "comparison.json"
    comparison.parent.mkdir(parents=True, exist_ok=True)
    write_document(comparison, passed_comparison(0.25, 0.5))
    return register_model(model_dir, str(comparison), str(tmp_path / "registry"), model_name="tiny-medqa",
                          base_model="tiny", recipe="tiny-cpu", data_fingerprint="f", pipeline_run=run,
                          serving_mode=serving_mode).to_dict()


def fake_merged_model(folder: Path) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return str(folder)


def endpoint_state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "registry" / "_endpoints" / "local" / "endpoint.json").read_text())


def test_traffic_shares_sum_to_100_and_keep_proportions():
    assert share_traffic({}, "3", 10) == {"3": 100}  # the first version takes all
    assert share_traffic({"1": 100}, "2", 10) == {"1": 90, "2": 10}
    assert share_traffic({"1": 50, "2": 50}, "3", 25) == {"1": 38, "2": 37, "3": 25}
    assert share_traffic({"1": 100}, "2", 100) == {"2": 100}
    assert split_without({"1": 90, "2": 10}, "2") == {"1": 100}
    assert split_without({"1": 0, "2": 100}, "2") == {"1": 100}
    assert split_without({"2": 100}, "2") == {}


def test_folder_endpoint_canary_and_rollback(tmp_path):
    first = deploy_model(register(tmp_path, fake_merged_model(tmp_path / "m1"), "run-1"),
                         DeploymentSpec(endpoint_name="local"))
    assert first.created and first.traffic_split == {"1": 100} and first.previous_traffic_split == {}
    canary = deploy_model(register(tmp_path, fake_merged_model(tmp_path / "m2"), "run-2"),
                          DeploymentSpec(endpoint_name="local", traffic_percentage=20))
    assert canary.traffic_split == {"1": 80, "2": 20} and canary.previous_traffic_split == {"1": 100}
    assert canary.model_uri.endswith("tiny-medqa/versions/2/model")
    again = deploy_model(register(tmp_path, fake_merged_model(tmp_path / "m3"), "run-2"),  # a retried run
                         DeploymentSpec(endpoint_name="local", traffic_percentage=20))
    assert (again.deployed_model_id, again.created) == ("2", False)
    assert [m["id"] for m in endpoint_state(tmp_path)["deployed_models"]] == ["1", "2"]

    assert rollback(canary)
    state = endpoint_state(tmp_path)
    assert state["traffic_split"] == {"1": 100} and [m["id"] for m in state["deployed_models"]] == ["1"]
    assert not rollback(first)  # nothing held traffic before the first version
    assert endpoint_state(tmp_path)["traffic_split"] == {"1": 100}


def test_folder_endpoint_refuses_an_adapter(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    registration = register(tmp_path, str(adapter), "run-1", serving_mode="adapter")
    with pytest.raises(UserError, match="serving_mode 'adapter' cannot be deployed"):
        deploy_model(registration, DeploymentSpec(endpoint_name="local"))
    assert not (tmp_path / "registry" / "_endpoints").exists()


class _BrokenServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible server gone wrong: each request gets the next of these replies."""

    answer = {"choices": [{"message": {"content": "<answer>B</answer>"}, "finish_reason": "stop"}]}
    replies = [(500, b'{"detail": "boom"}'), (200, b"<html>not json</html>"), (200, b'{"choices": []}'),
               (200, json.dumps(answer).encode())]

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        count = type(self).count = getattr(type(self), "count", -1) + 1
        status, body = self.replies[count % len(self.replies)]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_errors_and_garbage_from_a_server_are_counted_in_one_line_each():
    rows = [{"id": str(i), "prompt": [{"role": "user", "content": "q"}], "answer": "B", "letters": ["A", "B"]}
            for i in range(4)]
    with LoopbackServer(type("Handler", (_BrokenServer,), {})) as server:
        client = ChatClient(OpenAIServer(server.endpoint), max_tokens=8, temperature=0.0, top_p=1.0, seed=0)
        report = run_prompts(client, rows)
    assert (report["n"], report["answered"], report["errors"]) == (4, 1, 3)
    assert report["first_error"] == f"HTTP 500 from {server.endpoint}/v1/chat/completions"
    assert report["format_rate"] == report["accuracy"] == 0.25


@needs_serving
def test_local_smoke_test_serves_the_registered_model_and_rolls_back_a_broken_one(
        tmp_path, warm_tiny_model_dir, tiny_model_dir, prepared_demo_dir):
    good = deploy_model(register(tmp_path, warm_tiny_model_dir, "run-good"), DeploymentSpec(endpoint_name="local"))
    (tmp_path / "good.json").write_text(good.model_dump_json())
    report = smoke_test(tmp_path / "good.json", prepared_demo_dir, tmp_path / "smoke-good", recipe="tiny-cpu",
                        prompts=6, min_format_rate=0.5)
    assert (report["n"], report["answered"], report["errors"]) == (6, 6, 0)
    assert report["format_rate"] >= 0.5 and 0 <= report["accuracy"] <= report["format_rate"]
    assert 0 < report["latency_p50_s"] <= report["latency_p95_s"] and report["passed"]
    server_log = (tmp_path / "smoke-good" / "local_server.log").read_text()
    assert server_log.count("POST /v1/chat/completions") == 6
    first_prompt = json.loads((prepared_demo_dir / "test.jsonl").read_text().splitlines()[0])["prompt"]
    question = first_prompt[0]["content"].split("Question: ")[1].splitlines()[0]
    assert question not in server_log  # the server logs requests, not their text

    # The random-init model answers garbage: the smoke test fails and the endpoint goes back to the good one.
    broken = deploy_model(register(tmp_path, tiny_model_dir, "run-broken"),
                          DeploymentSpec(endpoint_name="local", traffic_percentage=100))
    (tmp_path / "broken.json").write_text(broken.model_dump_json())
    with pytest.raises(SmokeTestFailed, match=r"format rate 0\.\d+ is below min_format_rate 0\.5 .*rolled back"):
        smoke_test(tmp_path / "broken.json", prepared_demo_dir, tmp_path / "smoke-broken", recipe="tiny-cpu",
                   prompts=4, min_format_rate=0.5)
    assert endpoint_state(tmp_path)["traffic_split"] == {good.deployed_model_id: 100}


@needs_serving
def test_a_local_server_that_cannot_start_fails_the_smoke_test_and_rolls_back(tmp_path, prepared_demo_dir):
    first = deploy_model(register(tmp_path, fake_merged_model(tmp_path / "m1"), "run-1"),
                         DeploymentSpec(endpoint_name="local"))
    second = deploy_model(register(tmp_path, fake_merged_model(tmp_path / "m2"), "run-2"),  # config.json "{}"
                          DeploymentSpec(endpoint_name="local"))
    (tmp_path / "second.json").write_text(second.model_dump_json())
    with pytest.raises(SmokeTestFailed) as failure:
        smoke_test(tmp_path / "second.json", prepared_demo_dir, tmp_path / "smoke", recipe="tiny-cpu", prompts=2)
    message = str(failure.value)
    assert "\n" not in message and "the local server (transformers serve) exited with code" in message
    assert message.endswith("traffic rolled back to the previous version")
    assert endpoint_state(tmp_path)["traffic_split"] == {first.deployed_model_id: 100}


def test_kfp_wrapper_writes_the_deployment_record(tmp_path):
    from kfp import dsl

    from components.deploy.component import deploy_model_component

    registration = register(tmp_path, fake_merged_model(tmp_path / "m1"), "run-1")
    registered = dsl.Artifact(uri=str(tmp_path / "registered"))
    registered.path = str(tmp_path / "registered")
    Path(registered.path).mkdir()
    (Path(registered.path) / "registration.json").write_text(json.dumps(registration))
    deployment = dsl.Artifact(uri=str(tmp_path / "deployment"))
    deployment.path = str(tmp_path / "deployment")

    returned = deploy_model_component(registered_model=registered, deployment=deployment, endpoint_name="local")
    written = json.loads((tmp_path / "deployment" / "deployment.json").read_text())
    assert returned == written["deployed_model_id"] == "1"
    assert written["traffic_split"] == {"1": 100} and written["model"] == registration["resource_name"]
    assert deployment.metadata["endpoint"] == str(tmp_path / "registry" / "_endpoints" / "local")


def test_kfp_wrapper_turns_a_bad_registration_into_one_line_and_exit_2(tmp_path, capsys):
    from kfp import dsl

    from components.deploy.component import deploy_model_component

    registered = dsl.Artifact(uri=str(tmp_path / "registered"))
    registered.path = str(tmp_path / "registered")
    Path(registered.path).mkdir()
    registration = register(tmp_path, fake_merged_model(tmp_path / "m1"), "run-1") | {"created": "false"}
    (Path(registered.path) / "registration.json").write_text(json.dumps(registration))
    deployment = dsl.Artifact(uri=str(tmp_path / "deployment"))
    deployment.path = str(tmp_path / "deployment")
    with pytest.raises(SystemExit) as exited:
        deploy_model_component(registered_model=registered, deployment=deployment, endpoint_name="local")
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: registered_model: ") and line.endswith("registration.json: field 'created': expected a boolean, got 'false'")
    assert not (tmp_path / "deployment").exists()
