"""Training as a Vertex custom job (one VM or several): the rendezvous from CLUSTER_SPEC, each replica's torchrun
command, the custom job the launcher submits (against the loopback Vertex stand-in, at the request level), and
the compiled pipeline's node-count switch."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from fakes.vertex import FakeVertex, _Handler
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.types import AcceleratorType, Scheduling

from components.common.errors import UserError
from components.common.secrets import looks_like_token
from components.grpo_train.job import TrainingJob
from components.grpo_train.launch import JOB_FILE, Rendezvous, run_torchrun
from components.grpo_train.multinode import (
    MACHINE_TYPES,
    REPLICA_MODULE,
    CustomJobSettings,
    fuse_path,
    job_display_name,
    machine_type_for,
    main,
    rendezvous_from_cluster_spec,
    replica_rendezvous,
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


def test_a_replica_without_cluster_spec_is_a_node_of_its_own():
    """A custom job of one replica (one node, e.g. on Spot) trains with torchrun --standalone."""
    assert replica_rendezvous(None) == Rendezvous()
    assert replica_rendezvous(cluster_spec("workerpool0", 0, workers=0)) == Rendezvous(
        nnodes=1, node_rank=0, master_addr="cmle-training-workerpool0-1-0", master_port=2222)


def _replica_launch(monkeypatch, job_json: str, cluster: str | None, gpus: int, tensorboard: str | None = None):
    """What the replica entry point hands torchrun: its command line and the job file's contents, captured at the
    subprocess boundary (torch itself is not started)."""
    import subprocess

    launched: dict[str, Any] = {}

    class Finished:
        def __init__(self, command):
            launched["command"] = command
            launched["job"] = TrainingJob.read(command[command.index("--job") + 1])

        def wait(self):
            return 0

    for name, value in (("CLUSTER_SPEC", cluster), ("AIP_TENSORBOARD_LOG_DIR", tensorboard)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(subprocess, "Popen", Finished)
    monkeypatch.setattr("components.grpo_train.multinode.visible_gpu_count", lambda: gpus)
    assert main(["--job-json", job_json]) == 0
    return launched["command"], launched["job"]


def test_replica_splits_accumulation_over_every_gpu_of_every_node(monkeypatch):
    job = TrainingJob.build("medgemma-4b", "/gcs/b/data", "/gcs/b/out", overrides=["train.gradient_accumulation_steps=64"])
    command, split = _replica_launch(monkeypatch, job.to_json(), cluster_spec("workerpool1", 0, workers=1), gpus=8,
                                     tensorboard="gs://b/tb/logs")
    # 2 nodes x 8 GPUs = 16 processes: 64 accumulation steps become 4.
    assert split.recipe.train["gradient_accumulation_steps"] == 4
    assert split.recipe.train["ddp_find_unused_parameters"] is True
    assert split.tensorboard_dir == "/gcs/b/tb/logs"  # where Vertex uploads the custom job's TensorBoard from
    assert not split.show_progress
    assert split.model_copy(update={"recipe": job.recipe, "tensorboard_dir": job.tensorboard_dir,
                                    "show_progress": True}) == job
    for flag in ("--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=cmle-training-workerpool0-1-0",
                 "--master-port=2222"):
        assert flag in command
    assert command[command.index("-m", 3) + 1:-1] == ["components.grpo_train", "--job"]
    assert command[-1].endswith(JOB_FILE)


def test_one_replica_runs_torchrun_standalone_on_its_gpus(monkeypatch):
    job = TrainingJob.build("medgemma-4b", "/gcs/b/data", "/gcs/b/out", overrides=["train.report_to=none"])
    command, split = _replica_launch(monkeypatch, job.to_json(), None, gpus=4)
    assert "--standalone" in command and "--nproc-per-node=4" in command
    assert split.tensorboard_dir is None  # the recipe reports to no TensorBoard: none opened
    assert split.recipe.train["gradient_accumulation_steps"] == job.recipe.train["gradient_accumulation_steps"] // 4


def test_a_failed_rank_fails_the_replica(monkeypatch):
    import subprocess

    class Failed:
        def __init__(self, command):
            pass

        def wait(self):
            return 3

    monkeypatch.setattr(subprocess, "Popen", Failed)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        run_torchrun(["torchrun"])


def test_a_bad_job_json_is_one_line(capsys):
    assert main(["--job-json", "{}"]) == 2
    err = capsys.readouterr().err
    assert "--job-json: recipe: Field required" in err and err.count("\n") == 1


def test_two_replicas_train_as_two_nodes_on_cpu(tiny_model_dir, prepared_demo_dir, tmp_path):
    """Two replica entry points on this machine, as Vertex starts them (the job JSON in their arguments, their
    place in CLUSTER_SPEC), meet through torchrun over gloo: node 0 writes the outputs, both write RNG state."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "tuned"
    job = TrainingJob.build("tiny-cpu", prepared_demo_dir, out, model=tiny_model_dir, overrides=[
        "train.max_steps=1", "train.save_steps=1", "train.per_device_train_batch_size=4",
        "train.gradient_accumulation_steps=2", "train.report_to=none", "train.logging_steps=1"])
    cluster = {"workerpool0": [f"127.0.0.1:{port}"], "workerpool1": ["127.0.0.1:0"]}
    replicas = [
        subprocess.Popen([sys.executable, "-m", REPLICA_MODULE, "--job-json", job.to_json()],
                         cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "CLUSTER_SPEC": json.dumps(
                             {"cluster": cluster, "task": {"type": pool, "index": 0}})})
        for pool in ("workerpool0", "workerpool1")
    ]
    logs = [replica.communicate(timeout=600)[0] for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    summary = json.loads((out / "adapter" / "training_summary.json").read_text())
    assert summary["global_step"] == 1
    assert summary["recipe_settings"]["train"]["gradient_accumulation_steps"] == 1  # split over the 2 nodes
    checkpoint = out / "checkpoints" / "checkpoint-1"
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "checkpoints"]


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
        if method == "GET" and re.fullmatch(location + r"/tensorboards/[^/]+/experiments/[^/]+/runs", path):
            return 200, {}  # the SDK looks up the job's TensorBoard runs while it waits
        return super()._route(method, path, query, body)


class FakeVertexWithCustomJobs(FakeVertex):
    def __init__(self) -> None:
        super().__init__(_CustomJobHandler, jobs={})

JOB = dict(overrides=["train.gradient_accumulation_steps=16"], merge=True, hf_token_secret="projects/p/secrets/hf-token")
SETTINGS = dict(image=TRAINER_IMAGE, accelerator_type="NVIDIA_H100_80GB", project=PROJECT, location=LOCATION)
VERTEX_SETTINGS = dict(
    service_account="trainer@p.iam.gserviceaccount.com", network="projects/123/global/networks/train-vpc",
    encryption_key="projects/p/locations/us-central1/keyRings/ring/cryptoKeys/key",
    tensorboard=f"projects/{PROJECT}/locations/{LOCATION}/tensorboards/77", spot=True,
)


def _submit(job: TrainingJob, **settings) -> tuple[str, dict[str, Any]]:
    """Run the launcher against the stand-in; the job's resource name and the one create request's body."""
    with FakeVertexWithCustomJobs() as vertex:
        name = run_training_job(job, CustomJobSettings(display_name="grpo-train-run-1", **SETTINGS, **settings),
                                api_endpoint=vertex.endpoint, credentials=AnonymousCredentials())
        created = vertex.requests_to("POST", r"/customJobs$")
    assert len(created) == 1
    return name, created[0].body


@pytest.mark.parametrize("nodes", [1, 4])
def test_launcher_submits_a_custom_job_with_every_vertex_setting(nodes):
    """CMEK, network, service account, TensorBoard and Spot reach the request, and the job itself travels in the
    replicas' arguments; one node gets one worker pool (a one-VM run on Spot), several get a second."""
    job = TrainingJob.build("medgemma-4b", "/gcs/bucket/run/prepare/prepared_data", "gs://bucket/run/train/tuned_model",
                            **JOB)
    name, body = _submit(job, nodes=nodes, accelerator_count=4, **VERTEX_SETTINGS)
    assert name == f"projects/{PROJECT}/locations/{LOCATION}/customJobs/1"
    assert body["displayName"] == "grpo-train-run-1"
    assert body["encryptionSpec"] == {"kmsKeyName": VERTEX_SETTINGS["encryption_key"]}
    spec = body["jobSpec"]
    assert spec["serviceAccount"] == VERTEX_SETTINGS["service_account"]
    assert spec["network"] == VERTEX_SETTINGS["network"]
    assert spec["tensorboard"] == VERTEX_SETTINGS["tensorboard"]
    assert Scheduling.Strategy(spec["scheduling"]["strategy"]) == Scheduling.Strategy.SPOT  # REST sends the number
    assert spec["baseOutputDirectory"]["outputUriPrefix"] == "gs://bucket/run/train/tuned_model/custom_job"
    pools = spec["workerPoolSpecs"]
    assert [pool["replicaCount"] for pool in pools] == ["1", "3"][:min(nodes, 2)]  # int64 travels as a JSON string
    for pool in pools:
        machine = pool["machineSpec"]
        assert (machine["machineType"], machine["acceleratorCount"]) == ("a3-highgpu-4g", 4)
        assert AcceleratorType(machine["acceleratorType"]).name == "NVIDIA_H100_80GB"  # REST sends the enum number
        container = pool["containerSpec"]
        assert container["imageUri"] == TRAINER_IMAGE
        assert container["command"] == ["python", "-m", REPLICA_MODULE]
        assert container["args"][0] == "--job-json" and len(container["args"]) == 2
        # The job as the task built it, with every folder as the replicas see it (Cloud Storage FUSE).
        sent = TrainingJob.from_json(container["args"][1])
        assert (sent.data_dir, sent.output_dir) == ("/gcs/bucket/run/prepare/prepared_data",
                                                    "/gcs/bucket/run/train/tuned_model")
        assert sent.tensorboard_dir == "/gcs/bucket/run/train/tuned_model/tensorboard"
        assert sent.model_copy(update={"output_dir": job.output_dir}) == job
        assert sent.merge and sent.recipe.train["gradient_accumulation_steps"] == 16  # replicas split it
    assert not looks_like_token(json.dumps(body))  # a secret's name travels, never a token


def test_launcher_leaves_unset_vertex_settings_to_vertex():
    job = TrainingJob.build("medgemma-4b", "gs://b/data", "gs://b/out", overrides=["train.gradient_accumulation_steps=16"])
    _, body = _submit(job, nodes=2, accelerator_count=8)
    assert "encryptionSpec" not in body
    for field in ("network", "tensorboard", "scheduling", "serviceAccount"):
        assert field not in body["jobSpec"], field


@pytest.mark.parametrize(("settings", "message"), [
    (dict(nodes=3, accelerator_count=8), r"not divisible by the 24 training processes"),  # 16 over 3 x 8 GPUs
    (dict(nodes=0, accelerator_count=8), "train_nodes must be at least 1"),
    (dict(nodes=1, accelerator_count=0), "train_accelerator_count must be at least 1"),
    (dict(nodes=1, accelerator_count=8, tensorboard=VERTEX_SETTINGS["tensorboard"]), "tensorboard needs service_account"),
    (dict(nodes=1, accelerator_count=8, network="train-vpc"), "network must look like projects/"),
    (dict(nodes=1, accelerator_count=8, encryption_key="key"), "encryption_key must look like projects/"),
    (dict(nodes=1, accelerator_count=8, tensorboard="tb", service_account="a@b"), "tensorboard must look like"),
])
def test_launcher_fails_before_reserving_gpus_on_settings_that_cannot_work(settings, message):
    job = TrainingJob.build("medgemma-4b", "gs://b/data", "gs://b/out", overrides=["train.gradient_accumulation_steps=16"])
    with pytest.raises(UserError, match=message):
        run_training_job(job, CustomJobSettings(**SETTINGS, **settings))


def test_launcher_needs_cloud_storage_folders():
    job = TrainingJob.build("medgemma-4b", "gs://b/data", "/tmp/out", overrides=["train.gradient_accumulation_steps=16"])
    with pytest.raises(UserError, match="tuned model output must be in Cloud Storage"):
        run_training_job(job, CustomJobSettings(nodes=2, accelerator_count=8, **SETTINGS))


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


def _task_named(compiled: dict[str, Any], display_name: str) -> tuple[str, dict[str, Any]]:
    """A task by the name the console shows (taskInfo), with its key in its DAG (KFP numbers sub-DAGs)."""
    [(key, (_, task))] = [(key, entry) for key, entry in _sub_dag_tasks(compiled).items()
                          if entry[1]["taskInfo"]["name"] == display_name]
    return key, task


def test_node_count_parameter_defaults_to_one_vm(compiled):
    parameters = compiled["root"]["inputDefinitions"]["parameters"]
    assert parameters["train_nodes"]["defaultValue"] == 1
    assert parameters["train_machine_type"]["defaultValue"] == ""
    (_, one_vm), (_, several) = _task_named(compiled, "train-on-one-vm"), _task_named(compiled, "train-as-custom-job")
    # check-parameters returns "one-vm" unless train_nodes > 1 or train_on_spot (tests/test_preflight.py)
    assert one_vm["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--check-parameters-Output'] == 'one-vm'")
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
    # Vertex fills in the run's own project and region (pipelines/targets.py passes its placeholders).
    assert parameters["project"]["runtimeValue"]["constant"] == "{{$.pipeline_google_cloud_project_id}}"
    assert parameters["location"]["runtimeValue"]["constant"] == "{{$.pipeline_google_cloud_location}}"


def test_downstream_steps_take_the_tuned_model_of_whichever_branch_ran(compiled):
    """Each branch returns its model's URI; the one that ran becomes the Model artifact later steps read."""
    tasks = _sub_dag_tasks(compiled)
    join = tasks["tuned-model"][1]
    branches = join["inputs"]["parameters"]["model_uri"]["taskOutputParameter"]
    oneof = compiled["components"][tasks[branches["producerTask"]][1]["componentRef"]["name"]]["dag"]["outputs"]
    selectors = oneof["parameters"][branches["outputParameterKey"]]["valueFromOneof"]["parameterSelectors"]
    assert [s["producerSubtask"] for s in selectors] == [
        _task_named(compiled, "train-on-one-vm")[0], _task_named(compiled, "train-as-custom-job")[0]]
    assert compiled["deploymentSpec"]["executors"]["exec-tuned-model"]["container"]["image"] == BASE_IMAGE
    from_join = {"outputArtifactKey": "tuned_model", "producerTask": "tuned-model"}
    tuned_eval = tasks["tuned-eval"][1]["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"]
    assert tuned_eval == from_join
    register = tasks["register"][1]["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    # register sits in the gate's branch, inside the If/Else pair: the model comes in through both.
    _, gate = _task_named(compiled, "gate-passed")
    gate_input = gate["inputs"]["artifacts"][register]["componentInputArtifact"]
    [pair] = [task for _, task in tasks.values()
              if gate_input in task.get("inputs", {}).get("artifacts", {}) and "taskOutputArtifact" in
              task["inputs"]["artifacts"][gate_input]]
    assert pair["inputs"]["artifacts"][gate_input]["taskOutputArtifact"] == from_join


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


def test_custom_job_component_takes_the_vertex_settings_the_pipeline_wires():
    """The names the pipeline passes: Spot and every Vertex setting, off or empty (Vertex's default) unless given."""
    import inspect

    from components.grpo_train.component import grpo_train_multinode_component

    parameters = inspect.signature(grpo_train_multinode_component).parameters
    expected = {"spot": False, "encryption_key": "", "network": "", "tensorboard": "", "service_account": ""}
    assert {name: parameters[name].default for name in expected} == expected
    assert parameters["spot"].annotation in (bool, "bool")
