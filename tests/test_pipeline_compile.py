"""The compiled pipeline, parsed into KFP's PipelineSpec proto: tasks, images, GPU resources, the gate, the exit
task, and what a console user sees: a described, valid default for every parameter."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

BASE, TRAINER = "registry.example/p/base@sha256:" + "a" * 64, "registry.example/p/trainer@sha256:" + "b" * 64
STEPS = ("check-parameters", "plan-models", "model-entry", "prepare-data", "baseline-eval", "train",
         "train-custom-job", "tuned-model", "tuned-eval", "compare", "register", "not-registered", "model-result",
         "results-table", "run-summary")
# What Vertex AI Pipelines substitutes for its placeholders in a run of project console-project in europe-west4.
VERTEX_PLACEHOLDERS = {"{{$.pipeline_google_cloud_project_id}}": "console-project",
                       "{{$.pipeline_google_cloud_location}}": "europe-west4",
                       "{{$.pipeline_job_name}}": "medgemma-grpo-20261205000000"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    from pipelines.compile import main

    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["--output", str(path), "--base-image", BASE, "--trainer-image", TRAINER]) == 0
    return list(yaml.safe_load_all(path.read_text()))[0]


@pytest.fixture(scope="module")
def spec(compiled) -> pipeline_spec_pb2.PipelineSpec:
    return json_format.ParseDict(compiled, pipeline_spec_pb2.PipelineSpec())


def tasks_by_name(spec) -> dict[str, tuple[str, object]]:
    """Every task of the pipeline, nested DAGs included: name -> (enclosing DAG's component, task)."""
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


def console_inputs(compiled: dict, task_name: str) -> dict:
    """The parameter values a task gets in a console run that keeps every default: pipeline parameters followed
    from the task up through its enclosing DAGs to the template's defaults, constants with Vertex's
    placeholders substituted, and the component's own defaults for what the pipeline does not pass."""
    components, root = compiled["components"], compiled["root"]
    defaults = {name: p["defaultValue"] for name, p in root["inputDefinitions"]["parameters"].items()}

    def find(dag: dict, wanted: str, feeds: dict) -> dict | None:
        for name, task in dag["tasks"].items():
            inputs = task.get("inputs", {}).get("parameters", {})
            resolved = {key: value_of(spec_, feeds) for key, spec_ in inputs.items()}
            if name == wanted:
                return resolved
            inner = components[task["componentRef"]["name"]].get("dag")
            if inner is not None and (found := find(inner, wanted, resolved)) is not None:
                return found
        return None

    def substituted(value):
        for placeholder, actual in VERTEX_PLACEHOLDERS.items():
            value = value.replace(placeholder, actual) if isinstance(value, str) else value
        return value

    def value_of(input_spec: dict, feeds: dict):
        if "componentInputParameter" in input_spec:
            return feeds.get(input_spec["componentInputParameter"])
        if "runtimeValue" in input_spec:
            return substituted(input_spec["runtimeValue"]["constant"])
        return ("output of", input_spec.get("taskOutputParameter", {}).get("producerTask"))

    values = find(root["dag"], task_name, defaults)
    assert values is not None, f"no task {task_name}"
    component = components[f"comp-{task_name}"]
    own_defaults = {name: substituted(p["defaultValue"]) for name, p in component["inputDefinitions"].get("parameters", {}).items()
                    if "defaultValue" in p}
    return {**own_defaults, **values}


def test_steps_are_named_for_the_console_and_wired_in_order(spec):
    steps = tasks_by_name(spec)
    assert set(STEPS) <= set(steps)
    run = spec.components[steps["check-parameters"][0]].dag.tasks
    assert list(run["plan-models"].dependent_tasks) == ["check-parameters"]
    branch = spec.components[steps["prepare-data"][0]].dag.tasks  # one model's branch of the fan-out
    assert list(branch["prepare-data"].dependent_tasks) == ["model-entry"]
    assert set(branch["baseline-eval"].dependent_tasks) == {"model-entry", "prepare-data"}
    assert set(branch["compare"].dependent_tasks) == {"baseline-eval", "tuned-eval"}
    assert "tuned-model" in branch["tuned-eval"].dependent_tasks
    assert spec.pipeline_info.name == "medgemma-grpo"


def test_the_pipeline_fans_out_over_the_planned_models_and_collects_one_row_each(spec):
    steps = tasks_by_name(spec)
    run = spec.components[steps["check-parameters"][0]].dag.tasks
    [loop] = [task for task in run.values() if task.HasField("parameter_iterator")]
    assert loop.parameter_iterator.items.input_parameter == "pipelinechannel--plan-models-Output"
    assert loop.component_ref.name == steps["model-result"][0]  # every model's row comes out of the loop
    table = run["results-table"]
    assert set(table.dependent_tasks) == {next(name for name, task in run.items() if task == loop), "plan-models"}
    # The rows in the planned order: a collected list need not keep the loop's.
    assert table.inputs.parameters["planned_models"].task_output_parameter.producer_task == "plan-models"
    collected = table.inputs.artifacts["model_results"].task_output_artifact
    assert collected.output_artifact_key == "pipelinechannel--model-result-model_result"
    loop_outputs = spec.components[loop.component_ref.name].output_definitions.artifacts
    assert loop_outputs["pipelinechannel--model-result-model_result"].is_artifact_list
    # Each item is an object (STRUCT): a KFP backend hands a STRING-typed item to model-entry as JSON text.
    item = spec.components[loop.component_ref.name].input_definitions.parameters[
        "pipelinechannel--plan-models-Output-loop-item"]
    assert item.parameter_type == pipeline_spec_pb2.ParameterType.STRUCT


def test_every_model_reaches_the_table_registered_or_not(spec):
    """The gate's two branches join (dsl.OneOf): register's resource name, or not-registered's empty one."""
    steps = tasks_by_name(spec)
    branch = spec.components[steps["model-result"][0]].dag.tasks
    registered = branch["model-result"].inputs.parameters["registered"].task_output_parameter
    joined = spec.components[branch[registered.producer_task].component_ref.name]
    assert joined.dag.outputs.parameters[registered.output_parameter_key].HasField("value_from_oneof")
    assert {steps["register"][0], steps["not-registered"][0]} <= {
        task.component_ref.name for task in joined.dag.tasks.values()}


def test_console_defaults_plan_the_one_default_model(compiled):
    from components.preflight.models import plan_models

    inputs = console_inputs(compiled, "plan-models")
    [model] = plan_models(**inputs)
    assert model["base_model"] == "google/medgemma-4b-it" and model["recipe"] == "medgemma-4b"
    assert model["model_display_name"] == "medgemma-grpo" and model["endpoint_name"] == ""


def test_every_parameter_has_a_description_and_a_default(spec):
    params = spec.root.input_definitions.parameters
    assert len(params) >= 20
    undescribed = [name for name, p in params.items() if not p.description.strip()]
    assert not undescribed, f"parameters without a description: {undescribed}"
    without_default = [name for name, p in params.items() if not p.HasField("default_value")]
    assert not without_default, f"parameters without a default: {without_default}"
    assert all("\n" not in p.description for p in params.values())  # one line each in the console


def test_console_defaults_pass_the_run_checks_and_pick_one_vm(compiled):
    from components.preflight.core import ONE_VM, check_run_parameters

    inputs = console_inputs(compiled, "check-parameters")
    assert check_run_parameters(**inputs) == ONE_VM


def test_console_defaults_register_in_the_runs_own_project_and_region(compiled):
    """Only the template's defaults, as a console rerun sends them: the registry resolves without submit.py."""
    from components.register.core import parse_vertex_registry_uri, resolve_registry_uri

    inputs = console_inputs(compiled, "register")
    assert inputs["registry_uri"] == "vertex://"
    resolved = resolve_registry_uri(inputs["registry_uri"], inputs["run_project"], inputs["run_location"])
    assert parse_vertex_registry_uri(resolved) == ("console-project", "europe-west4")
    assert inputs["pipeline_run"] == VERTEX_PLACEHOLDERS["{{$.pipeline_job_name}}"]
    assert inputs["data_fingerprint"] == ("output of", "prepare-data")
    assert inputs["encryption_key"] == ""  # empty: Google-managed encryption


def test_train_route_is_a_one_output_task(spec):
    owner, _ = tasks_by_name(spec)["train"]
    [branch] = [task for _, task in tasks_by_name(spec).values() if task.component_ref.name == owner]
    assert branch.trigger_policy.condition == (
        "inputs.parameter_values['pipelinechannel--check-parameters-Output'] == 'one-vm'")


def test_custom_job_gets_every_vertex_setting(compiled):
    inputs = console_inputs(compiled, "train-custom-job")
    assert inputs["project"] == "console-project" and inputs["location"] == "europe-west4"
    for name in ("spot", "encryption_key", "network", "service_account", "tensorboard"):
        assert name in inputs, name
    assert inputs["spot"] is False and inputs["trainer_image"] == TRAINER


def test_register_runs_only_when_the_gate_passes(spec):
    owner, _ = tasks_by_name(spec)["register"]
    gates = [task for _, task in tasks_by_name(spec).values() if task.component_ref.name == owner]
    assert len(gates) == 1
    assert gates[0].trigger_policy.condition == "inputs.parameter_values['pipelinechannel--compare-Output'] == true"
    [branches] = [task for _, task in tasks_by_name(spec).values()
                  if owner in {t.component_ref.name for t in spec.components[task.component_ref.name].dag.tasks.values()}
                  and spec.components[task.component_ref.name].HasField("dag")]
    assert "compare" in branches.dependent_tasks


def test_run_summary_is_the_exit_task(spec):
    summary = spec.root.dag.tasks["run-summary"]
    assert summary.trigger_policy.strategy == pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.ALL_UPSTREAM_TASKS_COMPLETED
    [status] = summary.inputs.parameters.values()
    assert status.task_final_status.producer_task == "exit-handler-1"


def test_images_come_from_the_compile_flags(spec):
    expected = {"check-parameters": BASE, "plan-models": BASE, "model-entry": BASE, "prepare-data": BASE,
                "baseline-eval": TRAINER, "train": TRAINER, "train-custom-job": BASE, "tuned-eval": TRAINER,
                "compare": BASE, "register": BASE, "not-registered": BASE, "model-result": BASE,
                "results-table": BASE, "run-summary": BASE}
    assert {name: container(spec, name)["image"] for name in expected} == expected
    images = {executor["container"]["image"] for executor in
              json_format.MessageToDict(spec.deployment_spec)["executors"].values()}
    assert images == {BASE, TRAINER}
    # The images carry the package and kfp: no pip install when a task starts on Vertex.
    assert all("pip install" not in " ".join(container(spec, name)["command"]) for name in expected)


@pytest.mark.parametrize(("task", "prefix"), [("train", "train"), ("baseline-eval", "eval"), ("tuned-eval", "eval")])
def test_gpu_tasks_take_accelerators_from_parameters(spec, task, prefix):
    resources = container(spec, task)["resources"]
    assert resources["accelerator"] == {
        "resourceType": f"{{{{$.inputs.parameters['pipelinechannel--{prefix}_accelerator_type']}}}}",
        "resourceCount": f"{{{{$.inputs.parameters['pipelinechannel--{prefix}_accelerator_count']}}}}"}
    assert resources["resourceCpuLimit"] == "{{$.inputs.parameters['pipelinechannel--gpu_task_cpus']}}"
    assert resources["resourceMemoryLimit"] == "{{$.inputs.parameters['pipelinechannel--gpu_task_memory']}}"


def test_cpu_tasks_take_no_accelerator(spec):
    for task in ("check-parameters", "plan-models", "prepare-data", "compare", "register", "results-table",
                 "run-summary"):
        assert "accelerator" not in container(spec, task).get("resources", {})


def test_defaults_fit_vertex(spec):
    params = spec.root.input_definitions.parameters
    defaults = {name: json_format.MessageToDict(p.default_value) for name, p in params.items()}
    assert defaults["base_model"] == "google/medgemma-4b-it"
    assert defaults["recipe"] == "medgemma-4b"
    assert defaults["train_accelerator_type"] == defaults["eval_accelerator_type"] == "NVIDIA_TESLA_A100"
    assert defaults["train_accelerator_count"] == defaults["eval_accelerator_count"] == 1
    assert defaults["train_on_spot"] is False and defaults["eval_question_limit"] == 0
    assert defaults["registry_uri"] == "vertex://"
    assert {defaults[name] for name in ("encryption_key", "network", "service_account", "tensorboard")} == {""}


def test_training_is_retried_for_preemption(spec):
    for name in ("train", "train-custom-job"):
        _, task = tasks_by_name(spec)[name]
        assert task.retry_policy.max_retry_count == 5


def test_deploy_and_smoke_test_run_only_when_an_endpoint_is_named_after_registration(spec):
    tasks = tasks_by_name(spec)
    deploy_owner, deploy = tasks["deploy"]
    smoke_owner, smoke = tasks["smoke-test"]
    assert deploy_owner == smoke_owner != "root"
    register_owner, _ = tasks["register"]
    [deploy_condition] = [t for t in spec.components[register_owner].dag.tasks.values()
                          if t.component_ref.name == deploy_owner]
    assert "deploy_endpoint" in deploy_condition.trigger_policy.condition
    assert list(smoke.dependent_tasks) == ["deploy"]
    # inside the condition, register's output comes in as the condition's input
    assert deploy.inputs.artifacts["registered_model"].component_input_artifact == \
        "pipelinechannel--register-registered_model"
    for task in ("deploy", "smoke-test"):
        assert container(spec, task)["image"] == BASE
        assert "accelerator" not in container(spec, task).get("resources", {})
    params = spec.root.input_definitions.parameters
    defaults = {name: json_format.MessageToDict(p.default_value) for name, p in params.items() if p.HasField("default_value")}
    assert defaults["deploy_endpoint"] == "" and defaults["registered_weights"] == "merged"
    assert defaults["smoke_test_prompts"] == 20 and defaults["deploy_traffic_percentage"] == 100
