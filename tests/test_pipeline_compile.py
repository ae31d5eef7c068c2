"""The compiled pipeline, parsed into KFP's PipelineSpec proto: tasks, images, GPU resources, the gate."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

BASE, TRAINER = "registry.example/p/base@sha256:" + "a" * 64, "registry.example/p/trainer@sha256:" + "b" * 64


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> pipeline_spec_pb2.PipelineSpec:
    from pipelines.compile import main

    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["--output", str(path), "--base-image", BASE, "--trainer-image", TRAINER]) == 0
    documents = list(yaml.safe_load_all(path.read_text()))
    return json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())


def tasks_by_name(spec) -> dict[str, tuple[str, object]]:
    """Every task of the pipeline, nested conditions included: name -> (enclosing DAG's component, task)."""
    found: dict[str, tuple[str, object]] = {}

    def walk(owner: str, dag) -> None:
        for name, task in dag.tasks.items():
            found[name] = (owner, task)
            inner = spec.components[task.component_ref.name]
            if inner.HasField("dag"):
                walk(task.component_ref.name, inner.dag)

    walk("root", spec.root.dag)
    return found


def container(spec, task_name: str) -> dict:
    """The task's container spec (deployment_spec is a protobuf Struct: read it as a dict)."""
    _, task = tasks_by_name(spec)[task_name]
    executor = spec.components[task.component_ref.name].executor_label
    return json_format.MessageToDict(spec.deployment_spec)["executors"][executor]["container"]


def test_graph_has_every_step_wired_in_order(spec):
    root = spec.root.dag.tasks
    assert root["evaluate-model-component"].dependent_tasks == ["prepare-medqa-component"]
    assert set(root["compare-evaluations-component"].dependent_tasks) == {
        "evaluate-model-component", "evaluate-model-component-2"}
    assert "tuned-model-from-uri" in root["evaluate-model-component-2"].dependent_tasks
    steps = set(tasks_by_name(spec))
    assert {"prepare-medqa-component", "evaluate-model-component", "grpo-train-component",
            "evaluate-model-component-2", "compare-evaluations-component", "register-model"} <= steps
    assert spec.pipeline_info.name == "medgemma-grpo"


def test_register_runs_only_when_the_gate_passes(spec):
    owner, _ = tasks_by_name(spec)["register-model"]
    gates = [task for task in spec.root.dag.tasks.values() if task.component_ref.name == owner]
    assert len(gates) == 1
    assert gates[0].trigger_policy.condition == (
        "inputs.parameter_values['pipelinechannel--compare-evaluations-component-Output'] == true")
    assert "compare-evaluations-component" in gates[0].dependent_tasks


def test_images_come_from_the_compile_flags(spec):
    expected = {"prepare-medqa-component": BASE, "evaluate-model-component": TRAINER, "grpo-train-component": TRAINER,
                "evaluate-model-component-2": TRAINER, "compare-evaluations-component": BASE, "register-model": BASE}
    assert {name: container(spec, name)["image"] for name in expected} == expected
    images = {executor["container"]["image"] for executor in
              json_format.MessageToDict(spec.deployment_spec)["executors"].values()}
    assert images == {BASE, TRAINER}
    # The images carry the package and kfp: no pip install when a task starts on Vertex.
    assert all("pip install" not in " ".join(container(spec, name)["command"]) for name in expected)


@pytest.mark.parametrize(("task", "prefix"), [("grpo-train-component", "train"), ("evaluate-model-component", "eval"),
                                             ("evaluate-model-component-2", "eval")])
def test_gpu_tasks_take_accelerators_from_parameters(spec, task, prefix):
    resources = container(spec, task)["resources"]
    assert resources["accelerator"] == {
        "resourceType": f"{{{{$.inputs.parameters['pipelinechannel--{prefix}_accelerator_type']}}}}",
        "resourceCount": f"{{{{$.inputs.parameters['pipelinechannel--{prefix}_accelerator_count']}}}}"}
    assert resources["resourceCpuLimit"] == "{{$.inputs.parameters['pipelinechannel--cpu_limit']}}"
    assert resources["resourceMemoryLimit"] == "{{$.inputs.parameters['pipelinechannel--memory_limit']}}"


def test_cpu_tasks_take_no_accelerator(spec):
    for task in ("prepare-medqa-component", "compare-evaluations-component", "register-model"):
        assert "accelerator" not in container(spec, task).get("resources", {})


def test_parameters_and_defaults_fit_vertex(spec):
    params = spec.root.input_definitions.parameters
    defaults = {name: json_format.MessageToDict(p.default_value) for name, p in params.items() if p.HasField("default_value")}
    assert defaults["base_model"] == "google/medgemma-4b-it"
    assert defaults["recipe"] == "medgemma-4b"
    assert defaults["train_accelerator_type"] == defaults["eval_accelerator_type"] == "NVIDIA_TESLA_A100"
    assert defaults["train_accelerator_count"] == defaults["eval_accelerator_count"] == 1
    assert defaults["eval_limit"] == 0
    assert {"gate_margin", "gate_alpha", "data_source", "cpu_limit", "memory_limit", "hf_token_secret"} <= set(params)


def test_training_is_retried_for_preemption(spec):
    _, train = tasks_by_name(spec)["grpo-train-component"]
    assert train.retry_policy.max_retry_count == 5


def test_deploy_and_smoke_test_run_only_when_an_endpoint_is_named_after_registration(spec):
    tasks = tasks_by_name(spec)
    deploy_owner, deploy = tasks["deploy-model-component"]
    smoke_owner, smoke = tasks["smoke-test-component"]
    assert deploy_owner == smoke_owner != "root"
    register_owner, _ = tasks["register-model"]
    [deploy_condition] = [t for t in spec.components[register_owner].dag.tasks.values()
                          if t.component_ref.name == deploy_owner]
    assert "deploy_endpoint" in deploy_condition.trigger_policy.condition
    assert list(smoke.dependent_tasks) == ["deploy-model-component"]
    # inside the condition, register's output comes in as the condition's input
    assert deploy.inputs.artifacts["registered_model"].component_input_artifact == \
        "pipelinechannel--register-model-registered_model"
    for task in ("deploy-model-component", "smoke-test-component"):
        assert container(spec, task)["image"] == BASE
        assert "accelerator" not in container(spec, task).get("resources", {})
    params = spec.root.input_definitions.parameters
    defaults = {name: json_format.MessageToDict(p.default_value) for name, p in params.items() if p.HasField("default_value")}
    assert defaults["deploy_endpoint"] == "" and defaults["serving_mode"] == "merged"
    assert defaults["smoke_test_prompts"] == 20 and defaults["deploy_traffic_percentage"] == 100
