"""The pipeline compiled for a self-hosted KFP cluster (``--target kfp``), parsed as protobuf: KFP's PipelineSpec and,
per executor, kfp-kubernetes' KubernetesExecutorConfig. The same graph as the Vertex template; Kubernetes settings
instead of Vertex's; no Vertex placeholder or accelerator name; Vertex-only parameters refused."""

from __future__ import annotations

import json

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb
from kfp.pipeline_spec import pipeline_spec_pb2

from components.common.errors import UserError

BASE, TRAINER = "registry.example/p/base:1", "registry.example/p/trainer:1"
GPU_TASKS = {"train": "nvidia-h100-80gb", "baseline-eval": "nvidia-l4", "tuned-eval": "nvidia-l4"}
GPU_LABEL = "nvidia.com/gpu.product"


def compile_documents(tmp_path, *flags: str) -> list[dict]:
    from pipelines.compile import main

    path = tmp_path / "pipeline.yaml"
    assert main(["--output", str(path), "--base-image", BASE, "--trainer-image", TRAINER, *flags]) == 0
    return list(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> list[dict]:
    return compile_documents(tmp_path_factory.mktemp("kfp"), "--target", "kfp", "--volume-claim", "grpo-data",
                             "--hf-token-kubernetes-secret", "hf-secret", "--gpu-node-label", GPU_LABEL,
                             "--train-accelerator-type", "nvidia-h100-80gb", "--eval-accelerator-type", "nvidia-l4")


@pytest.fixture(scope="module")
def spec(documents) -> pipeline_spec_pb2.PipelineSpec:
    return json_format.ParseDict(documents[0], pipeline_spec_pb2.PipelineSpec())


@pytest.fixture(scope="module")
def kubernetes(documents) -> dict[str, k8s_pb.KubernetesExecutorConfig]:
    """Executor label -> its Kubernetes config, through both protos (PlatformSpec, then the executor's config)."""
    platform = json_format.ParseDict(documents[1], pipeline_spec_pb2.PlatformSpec())
    executors = json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec)["executors"]
    return {label: json_format.ParseDict(config, k8s_pb.KubernetesExecutorConfig())
            for label, config in executors.items()}


def container(spec, executor: str) -> dict:
    return json_format.MessageToDict(spec.deployment_spec)["executors"][executor]["container"]


def executor_of(spec, task_name: str) -> str:
    def walk(dag):
        for name, task in dag.tasks.items():
            component = spec.components[task.component_ref.name]
            if name == task_name:
                return component.executor_label
            if component.HasField("dag") and (found := walk(component.dag)):
                return found
        return None

    return walk(spec.root.dag)


def task_graph(spec) -> dict[str, list[str]]:
    """Every component's tasks and their dependencies: what must not differ between targets."""
    graph = {"root": sorted(f"{n}<-{sorted(t.dependent_tasks)}" for n, t in spec.root.dag.tasks.items())}
    for name, component in spec.components.items():
        if component.HasField("dag"):
            graph[name] = sorted(f"{n}<-{sorted(t.dependent_tasks)}" for n, t in component.dag.tasks.items())
    return graph


def test_the_graph_and_parameters_are_the_vertex_templates(spec, tmp_path):
    vertex = json_format.ParseDict(compile_documents(tmp_path)[0], pipeline_spec_pb2.PipelineSpec())
    assert task_graph(spec) == task_graph(vertex)
    assert list(spec.root.input_definitions.parameters) == list(vertex.root.input_definitions.parameters)
    assert sorted(spec.deployment_spec["executors"]) == sorted(vertex.deployment_spec["executors"])


@pytest.mark.parametrize("task", sorted(GPU_TASKS))
def test_gpu_tasks_ask_kubernetes_for_nvidia_gpus_on_nodes_of_their_type(spec, kubernetes, task):
    executor = executor_of(spec, task)
    resources = container(spec, executor)["resources"]
    prefix = "train" if task == "train" else "eval"
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == \
        f"{{{{$.inputs.parameters['pipelinechannel--{prefix}_accelerator_count']}}}}"
    assert resources["resourceMemoryLimit"] == "{{$.inputs.parameters['pipelinechannel--gpu_task_memory']}}"
    config = kubernetes[executor]
    assert dict(config.node_selector.labels) == {GPU_LABEL: GPU_TASKS[task]}
    assert [(t.key, t.operator, t.effect) for t in config.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]


def test_cpu_tasks_get_no_gpu_and_no_gpu_nodes(spec, kubernetes):
    for task in ("check-parameters", "prepare-data", "compare", "register", "run-summary", "tuned-model"):
        executor = executor_of(spec, task)
        assert "accelerator" not in container(spec, executor).get("resources", {})
        config = kubernetes.get(executor, k8s_pb.KubernetesExecutorConfig())
        assert not config.node_selector.labels and not config.tolerations


def test_the_token_comes_from_the_kubernetes_secret_to_every_task_that_downloads(spec, kubernetes):
    for task in ("prepare-data", "baseline-eval", "train", "tuned-eval"):
        [secret] = kubernetes[executor_of(spec, task)].secret_as_env
        assert secret.secret_name_parameter.runtime_value.constant.string_value == "hf-secret"
        assert [(m.secret_key, m.env_var) for m in secret.key_to_env] == [("HF_TOKEN", "HF_TOKEN")]
        assert secret.optional  # public models need no secret
    for task in ("check-parameters", "compare", "register", "run-summary"):
        assert not kubernetes.get(executor_of(spec, task), k8s_pb.KubernetesExecutorConfig()).secret_as_env


def test_training_and_register_mount_the_volume_that_holds_checkpoints_and_the_registry(spec, kubernetes, documents):
    from pipelines.targets import VOLUME_PATH

    mounted = {task for task in ("train", "register", "baseline-eval", "tuned-eval", "prepare-data")
               if kubernetes[executor_of(spec, task)].pvc_mount}
    assert mounted == {"train", "register"}
    for task in mounted:
        [mount] = kubernetes[executor_of(spec, task)].pvc_mount
        assert mount.mount_path == VOLUME_PATH
        assert mount.pvc_name_parameter.runtime_value.constant.string_value == "grpo-data"
    defaults = {name: json_format.MessageToDict(p.default_value)
                for name, p in spec.root.input_definitions.parameters.items()}
    assert defaults["registry_uri"] == f"{VOLUME_PATH}/registry"
    train = _task_inputs(documents[0], "train")
    assert train["checkpoint_root"] == {"runtimeValue": {"constant": f"{VOLUME_PATH}/checkpoints"}}
    # The run's ID, not its name: KFP's job name is the display name, which clones and recurring runs repeat.
    assert train["pipeline_run"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    assert _task_inputs(documents[0], "register")["pipeline_run"] == train["pipeline_run"]


def _task_inputs(compiled: dict, task_name: str) -> dict:
    def walk(dag):
        for name, task in dag["tasks"].items():
            if name == task_name:
                return task["inputs"]["parameters"]
            inner = compiled["components"][task["componentRef"]["name"]].get("dag")
            if inner and (found := walk(inner)):
                return found
        return None

    return walk(compiled["root"]["dag"])


def test_no_vertex_placeholder_or_accelerator_name_in_what_runs(documents, spec, kubernetes):
    assert "{{$.pipeline_google_cloud" not in yaml.safe_dump_all(documents)
    defaults = json.dumps({name: json_format.MessageToDict(p.default_value)
                           for name, p in spec.root.input_definitions.parameters.items()})
    resources = json.dumps({label: executor["container"].get("resources", {})
                            for label, executor in json_format.MessageToDict(spec.deployment_spec)["executors"].items()})
    platform = json.dumps(documents[1])
    for text in (defaults, resources, platform):
        assert "NVIDIA_TESLA_" not in text and "NVIDIA_L4" not in text and "NVIDIA_H100" not in text
    check = _task_inputs(documents[0], "check-parameters")
    assert check["target"] == {"runtimeValue": {"constant": "kfp"}}


def test_the_compiled_defaults_pass_the_kfp_run_checks(documents):
    from test_pipeline_compile import console_inputs

    from components.preflight.core import ONE_VM, check_run_parameters

    inputs = console_inputs(documents[0], "check-parameters")
    assert inputs["target"] == "kfp" and inputs["kfp_gpu_types"]["train_accelerator_type"] == "nvidia-h100-80gb"
    assert check_run_parameters(**inputs) == ONE_VM
    with pytest.raises(UserError, match="^train_accelerator_type: this KFP pipeline was compiled"):
        check_run_parameters(**{**inputs, "train_accelerator_type": "nvidia-tesla-a100"})


def test_vertex_only_defaults_are_refused_at_compile_time():
    from pipelines import targets

    class VertexRegistryKfp(targets.KfpTarget):
        def parameter_defaults(self):
            return {**super().parameter_defaults(), "registry_uri": "vertex://"}

    from pipelines.compile import compile_pipeline

    with pytest.raises(UserError, match="^registry_uri: the Vertex AI Model Registry is not used from self-hosted"):
        compile_pipeline("unused.yaml", BASE, TRAINER, VertexRegistryKfp())


def test_empty_kfp_settings_are_refused(capsys):
    from pipelines.compile import main

    assert main(["--target", "kfp", "--volume-claim", " ", "--output", "unused.yaml"]) == 2
    assert "--volume-claim must not be empty" in capsys.readouterr().err


def test_gpu_pods_fit_a_nodes_allocatable_and_a_single_attach_volume_can_train_one_model_at_a_time(spec, tmp_path):
    defaults = {name: json_format.MessageToDict(p.default_value)
                for name, p in spec.root.input_definitions.parameters.items()}
    assert (defaults["gpu_task_cpus"], defaults["gpu_task_memory"]) == ("8", "60G")  # requests = limits on KFP

    def loop_limit(compiled_spec) -> int:
        [loop] = [task for component in compiled_spec.components.values() if component.HasField("dag")
                  for task in component.dag.tasks.values() if task.HasField("parameter_iterator")]
        return loop.iterator_policy.parallelism_limit

    assert loop_limit(spec) == 0  # every model at once by default
    one_at_a_time = compile_documents(tmp_path, "--target", "kfp", "--model-parallelism", "1")[0]
    assert loop_limit(json_format.ParseDict(one_at_a_time, pipeline_spec_pb2.PipelineSpec())) == 1
