"""Several VMs: the rendezvous from CLUSTER_SPEC, the custom job the launcher submits (against the loopback
Vertex stand-in), and the compiled pipeline's node-count switch."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from fakes.vertex import FakeVertex, _Handler
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.types import AcceleratorType

from components.common.errors import UserError
from components.grpo_train.launch import Rendezvous
from components.grpo_train.multinode import (
    MACHINE_TYPES,
    REPLICA_MODULE,
    fuse_path,
    job_display_name,
    machine_type_for,
    rendezvous_from_cluster_spec,
    replica_command,
    run_training_job,
)

PROJECT, LOCATION = "test-project", "us-central1"
TRAINER_IMAGE = "us-docker.pkg.dev/p/medgemma-grpo/trainer:abc"
BASE_IMAGE = "us-docker.pkg.dev/p/medgemma-grpo/base:abc"


def cluster_spec(task_type: str, index: int, workers: int = 2) -> str:
    return json.dumps({
        "cluster": {"workerpool0": ["cmle-training-workerpool0-1-0:2222"],
                    "workerpool1": [f"cmle-training-workerpool1-1-{i}:2222" for i in range(workers)]},
        "environment": "cloud",
        "task": {"type": task_type, "index": index},
    })


def test_primary_replica_is_node_zero_and_workers_follow():
    assert rendezvous_from_cluster_spec(cluster_spec("workerpool0", 0)) == Rendezvous(
        nnodes=3, node_rank=0, master_addr="cmle-training-workerpool0-1-0", master_port=2222)
    assert rendezvous_from_cluster_spec(cluster_spec("workerpool1", 1)).node_rank == 2


@pytest.mark.parametrize("spec, message", [
    ("not json", "not a Vertex AI cluster spec"),
    (json.dumps({"cluster": {}, "task": {}}), "not a Vertex AI cluster spec"),
    (cluster_spec("workerpool3", 0), "takes no part in training"),
    (json.dumps({"cluster": {"workerpool0": ["no-port"]}, "task": {"type": "workerpool0"}}), "is not host:port"),
])
def test_bad_cluster_spec_is_one_clear_error(spec, message):
    with pytest.raises(UserError, match=message):
        rendezvous_from_cluster_spec(spec)


def test_replica_command_splits_accumulation_over_every_gpu_of_every_node():
    args = ["--recipe", "medgemma-4b", "--data-dir", "/gcs/b/data", "--output-dir", "/gcs/b/out", "--no-progress"]
    args += ["--set", "train.gradient_accumulation_steps=64"]
    command = replica_command(args, cluster_spec("workerpool1", 0, workers=1), gpus=8)
    # 2 nodes x 8 GPUs = 16 processes: 64 accumulation steps become 4.
    assert command[-2:] == ["--set", "train.ddp_find_unused_parameters=true"]
    assert "train.gradient_accumulation_steps=4" in command
    for flag in ("--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=cmle-training-workerpool0-1-0",
                 "--master-port=2222"):
        assert flag in command
    assert command[command.index("-m", 3) + 1:][: len(args) + 1] == ["components.grpo_train", *args]


def test_machine_type_from_accelerator_or_as_given():
    assert machine_type_for("NVIDIA_H100_80GB", 8) == "a3-highgpu-8g"
    assert machine_type_for("NVIDIA_TESLA_A100", 1) == "a2-highgpu-1g"
    assert machine_type_for("NVIDIA_H100_80GB", 8, "a3-megagpu-8g") == "a3-megagpu-8g"
    with pytest.raises(UserError, match="set train_machine_type"):
        machine_type_for("NVIDIA_TESLA_T4", 3)
    assert all(count in (1, 2, 4, 8) for _, count in MACHINE_TYPES)


def test_replicas_need_cloud_storage_paths():
    assert fuse_path("gs://bucket/run/data", "prepared data") == "/gcs/bucket/run/data"
    assert fuse_path("/gcs/bucket/run/data", "prepared data") == "/gcs/bucket/run/data"
    with pytest.raises(UserError, match="prepared data must be in Cloud Storage"):
        fuse_path("/tmp/data", "prepared data")


def test_job_display_name_is_valid_and_bounded():
    assert job_display_name("medgemma-grpo-20260101") == "grpo-train-medgemma-grpo-20260101"
    assert len(job_display_name("x" * 300)) == 128 and job_display_name("") == "grpo-train"


# ------------------------------------------------------------------ the custom job, against the stand-in


class _CustomJobHandler(_Handler):
    """The stand-in plus customJobs create/get/cancel: a job succeeds when first polled."""

    jobs: dict[str, dict[str, Any]] = {}

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        location = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
        if method == "POST" and re.fullmatch(location + r"/customJobs", path):
            job_id = str(len(self.jobs) + 1)
            self.jobs[job_id] = {**body, "name": f"{path}/{job_id}", "state": "JOB_STATE_PENDING"}
            return 200, self.jobs[job_id]
        match = re.fullmatch(location + r"/customJobs/(?P<job>[^/:]+)", path)
        if method == "GET" and match:
            job = self.jobs[match["job"]]
            job["state"] = "JOB_STATE_SUCCEEDED"
            return 200, job
        return super()._route(method, path, query, body)


class FakeVertexWithCustomJobs(FakeVertex):
    def __init__(self) -> None:
        super().__init__(_CustomJobHandler, jobs={})

def test_launcher_submits_a_custom_job_with_two_worker_pools():
    with FakeVertexWithCustomJobs() as vertex:
        name = run_training_job(
            "medgemma-4b", "/gcs/bucket/run/prepare/prepared_data", "/gcs/bucket/run/train/tuned_model",
            nodes=4, image=TRAINER_IMAGE, accelerator_type="NVIDIA_H100_80GB", accelerator_count=4,
            project=PROJECT, location=LOCATION, overrides=["train.gradient_accumulation_steps=16"], merge=True,
            hf_token_secret="projects/p/secrets/hf-token", display_name="grpo-train-run-1",
            service_account="trainer@p.iam.gserviceaccount.com",
            api_endpoint=vertex.endpoint, credentials=AnonymousCredentials(),
        )
        created = vertex.requests_to("POST", r"/customJobs$")
    assert name == f"projects/{PROJECT}/locations/{LOCATION}/customJobs/1"
    assert len(created) == 1
    body = created[0].body
    assert body["displayName"] == "grpo-train-run-1"
    spec = body["jobSpec"]
    assert spec["serviceAccount"] == "trainer@p.iam.gserviceaccount.com"
    assert spec["baseOutputDirectory"]["outputUriPrefix"] == "gs://bucket/run/train/tuned_model/custom_job"
    primary, workers = spec["workerPoolSpecs"]
    assert (primary["replicaCount"], workers["replicaCount"]) == ("1", "3")  # int64 travels as a JSON string
    for pool in (primary, workers):
        machine = pool["machineSpec"]
        assert (machine["machineType"], machine["acceleratorCount"]) == ("a3-highgpu-4g", 4)
        assert AcceleratorType(machine["acceleratorType"]).name == "NVIDIA_H100_80GB"  # REST sends the enum number
        container = pool["containerSpec"]
        assert container["imageUri"] == TRAINER_IMAGE
        assert container["command"] == ["python", "-m", REPLICA_MODULE]
        assert container["args"] == [
            "--recipe", "medgemma-4b", "--data-dir", "/gcs/bucket/run/prepare/prepared_data",
            "--output-dir", "/gcs/bucket/run/train/tuned_model", "--no-progress",
            "--set", "train.gradient_accumulation_steps=16",
            "--merge", "--hf-token-secret", "projects/p/secrets/hf-token",
        ]
    assert "hf_" not in json.dumps(body).replace("hf-token", "")  # a secret's name travels, never a token


def test_launcher_fails_before_reserving_gpus_when_the_batch_cannot_split():
    with pytest.raises(UserError, match=r"not divisible by the 24 training processes"):
        run_training_job("medgemma-4b", "gs://b/data", "gs://b/out", nodes=3, image=TRAINER_IMAGE,
                         accelerator_type="NVIDIA_H100_80GB", accelerator_count=8, project=PROJECT,
                         location=LOCATION, overrides=["train.gradient_accumulation_steps=16"])  # over 3 x 8 GPUs
    with pytest.raises(UserError, match="train_nodes must be at least 2"):
        run_training_job("medgemma-4b", "gs://b/data", "gs://b/out", nodes=1, image=TRAINER_IMAGE,
                         accelerator_type="NVIDIA_H100_80GB", accelerator_count=8, project=PROJECT, location=LOCATION)
    with pytest.raises(UserError, match="tuned model output must be in Cloud Storage"):
        run_training_job("medgemma-4b", "gs://b/data", "/tmp/out", nodes=2, image=TRAINER_IMAGE,
                         accelerator_type="NVIDIA_H100_80GB", accelerator_count=8, project=PROJECT, location=LOCATION)


# ------------------------------------------------------------------ the compiled pipeline


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Any]:
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("spec") / "pipeline.yaml", BASE_IMAGE, TRAINER_IMAGE)
    return yaml.safe_load(path.read_text())


def _sub_dag_tasks(compiled: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every task of every DAG: name -> (owning component, task spec)."""
    tasks = {name: ("root", task) for name, task in compiled["root"]["dag"]["tasks"].items()}
    for component_name, component in compiled["components"].items():
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            tasks[name] = (component_name, task)
    return tasks


def test_node_count_parameter_defaults_to_one_vm(compiled):
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    assert parameters["train_nodes"]["defaultValue"] == 1
    assert parameters["train_machine_type"]["defaultValue"] == ""
    tasks = _sub_dag_tasks(compiled)
    one_vm, several = tasks["condition-3"][1], tasks["condition-4"][1]
    # check-parameters returns "one-vm" unless train_nodes > 1 or train_on_spot (tests/test_preflight.py)
    assert one_vm["taskInfo"]["name"] == "train-on-one-vm"
    assert one_vm["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--check-parameters-Output'] == 'one-vm'")
    assert several["taskInfo"]["name"] == "train-as-custom-job"
    assert several["triggerPolicy"]["condition"] == "!(" + one_vm["triggerPolicy"]["condition"] + ")"


def test_one_vm_branch_trains_on_the_gpu_task_and_several_vms_branch_launches_from_the_base_image(compiled):
    executors = compiled["deploymentSpec"]["executors"]
    one_vm = executors["exec-train"]["container"]
    assert one_vm["image"] == TRAINER_IMAGE
    assert one_vm["resources"]["accelerator"]["resourceCount"] == \
        "{{$.inputs.parameters['pipelinechannel--train_accelerator_count']}}"
    launcher = executors["exec-train-custom-job"]["container"]
    assert launcher["image"] == BASE_IMAGE and "resources" not in launcher  # it only submits and waits
    task = _sub_dag_tasks(compiled)["train-custom-job"][1]
    parameters = task["inputs"]["parameters"]
    assert parameters["trainer_image"]["runtimeValue"]["constant"] == TRAINER_IMAGE
    assert parameters["nodes"]["componentInputParameter"] == "pipelinechannel--train_nodes"
    assert parameters["accelerator_count"]["componentInputParameter"] == "pipelinechannel--train_accelerator_count"
    assert parameters["pipeline_run"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    defaults = compiled["components"]["comp-train-custom-job"]["inputDefinitions"]["parameters"]
    assert defaults["project"]["defaultValue"] == "{{$.pipeline_google_cloud_project_id}}"
    assert defaults["location"]["defaultValue"] == "{{$.pipeline_google_cloud_location}}"


def test_downstream_steps_take_the_tuned_model_of_whichever_branch_ran(compiled):
    """Each branch returns its model's URI; the one that ran becomes the Model artifact later steps read."""
    oneof = compiled["components"]["comp-condition-branches-2"]["dag"]["outputs"]["parameters"]
    ((oneof_key, selectors),) = oneof.items()
    assert [s["producerSubtask"] for s in selectors["valueFromOneof"]["parameterSelectors"]] == [
        "condition-3", "condition-4"]
    tasks = _sub_dag_tasks(compiled)
    join = tasks["tuned-model"][1]
    assert join["inputs"]["parameters"]["model_uri"]["taskOutputParameter"] == {
        "outputParameterKey": oneof_key, "producerTask": "condition-branches-2"}
    assert compiled["deploymentSpec"]["executors"]["exec-tuned-model"]["container"]["image"] == BASE_IMAGE
    from_join = {"outputArtifactKey": "tuned_model", "producerTask": "tuned-model"}
    tuned_eval = tasks["tuned-eval"][1]["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"]
    assert tuned_eval == from_join
    register = tasks["register"][1]["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    assert tasks["condition-5"][1]["inputs"]["artifacts"][register]["taskOutputArtifact"] == from_join


def test_every_sub_dag_input_a_task_reads_is_defined(compiled):
    """Inside a condition, a task may read only the inputs its sub-DAG declares (KFP does not pass the GPU
    task's resource parameters into a dsl.If by itself: the pipeline registers them)."""
    for component_name, component in compiled["components"].items():
        if "dag" not in component:
            continue
        declared = set(component.get("inputDefinitions", {}).get("parameters", {}))
        for task_name, task in component["dag"]["tasks"].items():
            for value in task.get("inputs", {}).get("parameters", {}).values():
                read = value.get("componentInputParameter")
                if read:
                    assert read in declared, f"{component_name}/{task_name} reads undeclared input {read}"
                constant = value.get("runtimeValue", {}).get("constant")
                for placeholder in re.findall(r"parameters\['([^']+)'\]", str(constant)):
                    assert placeholder in declared, f"{component_name}/{task_name} placeholder {placeholder}"


def test_launcher_imports_without_the_torch_stack():
    """The multi-node launcher runs on the base image, which has no torch, TRL, PEFT or accelerate."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('torch', 'transformers', 'trl', 'peft', 'accelerate', 'vllm', 'datasets'):\n"
            "    sys.modules[name] = None\n"
            "from components.grpo_train.multinode import train_on_nodes, machine_type_for\n"
            "print(machine_type_for('NVIDIA_H100_80GB', 8))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "a3-highgpu-8g"
