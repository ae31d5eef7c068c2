"""Training as a Vertex AI custom job on one VM or several, and the entry point each of its replicas runs.

The pipeline task (slim image, no GPU) submits a ``CustomJob`` through the aiplatform SDK: worker pool 0 holds
the primary replica (node 0), worker pool 1 the other ``nodes - 1``, all on the trainer image and machine type.
Each replica runs ``python -m components.grpo_train.multinode --job-json JOB``, the training job as built once by
the task (``TrainingJob``); it reads Vertex's ``CLUSTER_SPEC`` for the rendezvous and launches torchrun with one
process per GPU. The nodes share the output folder through Cloud Storage FUSE (``/gcs/``), so checkpoints and
resumption work as on one VM, and only the global rank 0 writes the adapter and summary. The task then reads
that summary back, as on one VM.

Spot: a pipeline task cannot run on Spot VMs, a custom job can (``scheduling_strategy`` SPOT), on one node as on
several. What makes that safe is the resume: a preempted VM gets SIGTERM, training saves a checkpoint, and the
retried task's new job resumes from the newest complete checkpoint (``checkpoints.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
from dataclasses import dataclass
from typing import Any

from components.common.errors import UserError, cli_main
from components.common.gcs import GCS_FUSE_ROOT, GCS_SCHEME, split_gcs_uri, to_gcs_uri
from components.common.vertex import init_vertex
from components.grpo_train.job import TrainingJob, as_local_path
from components.grpo_train.launch import Rendezvous, outcome_from_outputs, run_job_under_torchrun, visible_gpu_count

log = logging.getLogger(__name__)

REPLICA_MODULE = "components.grpo_train.multinode"
CLUSTER_SPEC_ENV = "CLUSTER_SPEC"
# Vertex sets it on the replicas of a custom job that has a TensorBoard instance: what is written there is uploaded.
TENSORBOARD_LOG_DIR_ENV = "AIP_TENSORBOARD_LOG_DIR"
PRIMARY_POOL, WORKER_POOL = "workerpool0", "workerpool1"
# Vertex machine type for (accelerator type, GPUs per VM), for when the pipeline leaves the machine type empty.
MACHINE_TYPES = {
    ("NVIDIA_TESLA_A100", 1): "a2-highgpu-1g", ("NVIDIA_TESLA_A100", 2): "a2-highgpu-2g",
    ("NVIDIA_TESLA_A100", 4): "a2-highgpu-4g", ("NVIDIA_TESLA_A100", 8): "a2-highgpu-8g",
    ("NVIDIA_A100_80GB", 1): "a2-ultragpu-1g", ("NVIDIA_A100_80GB", 2): "a2-ultragpu-2g",
    ("NVIDIA_A100_80GB", 4): "a2-ultragpu-4g", ("NVIDIA_A100_80GB", 8): "a2-ultragpu-8g",
    ("NVIDIA_H100_80GB", 1): "a3-highgpu-1g", ("NVIDIA_H100_80GB", 2): "a3-highgpu-2g",
    ("NVIDIA_H100_80GB", 4): "a3-highgpu-4g", ("NVIDIA_H100_80GB", 8): "a3-highgpu-8g",
    ("NVIDIA_H100_MEGA_80GB", 8): "a3-megagpu-8g", ("NVIDIA_H200_141GB", 8): "a3-ultragpu-8g",
    ("NVIDIA_L4", 1): "g2-standard-12", ("NVIDIA_L4", 2): "g2-standard-24",
    ("NVIDIA_L4", 4): "g2-standard-48", ("NVIDIA_L4", 8): "g2-standard-96",
}


def rendezvous_from_cluster_spec(cluster_spec: str) -> Rendezvous:
    """Node count, this replica's node rank and the primary's address, from Vertex's ``CLUSTER_SPEC`` JSON.

    ``{"cluster": {"workerpool0": ["host:port"], "workerpool1": [...]}, "task": {"type": ..., "index": i}}``:
    the primary replica is node 0, worker ``i`` of pool 1 is node ``i + 1``.
    """
    try:
        spec = json.loads(cluster_spec)
        cluster, task = spec["cluster"], spec["task"]
        primary = cluster[PRIMARY_POOL][0]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise UserError(f"{CLUSTER_SPEC_ENV} is not a Vertex AI cluster spec ({err!r})") from err
    host, _, port = primary.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{CLUSTER_SPEC_ENV}: primary replica address {primary!r} is not host:port")
    workers = cluster.get(WORKER_POOL, [])
    if task.get("type") == PRIMARY_POOL:
        node_rank = 0
    elif task.get("type") == WORKER_POOL:
        node_rank = 1 + int(task.get("index", 0))
    else:
        raise UserError(f"{CLUSTER_SPEC_ENV}: task type {task.get('type')!r} takes no part in training "
                        f"(only {PRIMARY_POOL} and {WORKER_POOL} do)")
    return Rendezvous(nnodes=1 + len(workers), node_rank=node_rank, master_addr=host, master_port=int(port))


def machine_type_for(accelerator_type: str, accelerator_count: int, machine_type: str = "") -> str:
    """``machine_type`` when given, else the Vertex machine that carries that many GPUs of that type."""
    if machine_type:
        return machine_type
    try:
        return MACHINE_TYPES[(accelerator_type, accelerator_count)]
    except KeyError:
        raise UserError(f"no known machine type for {accelerator_count} x {accelerator_type}: set train_machine_type "
                        "(e.g. a3-highgpu-8g)") from None


def fuse_path(path_or_uri: str, parameter: str) -> str:
    """The ``/gcs/...`` path every replica sees for a Cloud Storage location (replicas share no local disk)."""
    uri = to_gcs_uri(path_or_uri)
    if uri is None:
        raise UserError(f"{parameter} must be in Cloud Storage (gs:// or /gcs/) for multi-node training, "
                        f"got {path_or_uri!r}")
    return GCS_FUSE_ROOT + uri[len(GCS_SCHEME):]


@dataclass(frozen=True)
class CustomJobSettings:
    """Where and how the custom job runs (the training itself is the ``TrainingJob``).

    ``service_account``, ``network`` (``projects/NUMBER/global/networks/NAME``), ``encryption_key`` (a Cloud KMS
    key: CMEK) and ``tensorboard`` (``projects/P/locations/L/tensorboards/ID``): empty leaves Vertex's default.
    ``spot``: Spot VMs (Vertex's SPOT scheduling strategy), safe because training resumes from its newest
    complete checkpoint.
    """

    nodes: int
    image: str
    accelerator_type: str
    accelerator_count: int
    project: str
    location: str
    machine_type: str = ""
    display_name: str = "grpo-train"
    service_account: str = ""
    network: str = ""
    encryption_key: str = ""
    tensorboard: str = ""
    spot: bool = False

    def check(self) -> None:
        """One clear error, before any VM is reserved, for a setting that cannot work."""
        if self.nodes < 1:
            raise UserError(f"train_nodes must be at least 1, got {self.nodes}")
        if self.accelerator_count < 1:
            raise UserError(f"train_accelerator_count must be at least 1 per node, got {self.accelerator_count}")
        if not self.image:
            raise UserError("trainer image is empty: the custom job's replicas need the trainer image")
        if self.tensorboard and not self.service_account:
            raise UserError("tensorboard needs service_account: Vertex writes a custom job's TensorBoard logs as "
                            "that service account")
        if self.network and not re.fullmatch(r"projects/[^/]+/global/networks/[^/]+", self.network):
            raise UserError(f"network must look like projects/PROJECT_NUMBER/global/networks/NAME, got {self.network!r}")
        if self.encryption_key and not re.fullmatch(
                r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+", self.encryption_key):
            raise UserError("encryption_key must look like projects/P/locations/L/keyRings/R/cryptoKeys/K, "
                            f"got {self.encryption_key!r}")
        if self.tensorboard and not re.fullmatch(r"projects/[^/]+/locations/[^/]+/tensorboards/[^/]+", self.tensorboard):
            raise UserError(f"tensorboard must look like projects/P/locations/L/tensorboards/ID, got {self.tensorboard!r}")


def worker_pool_specs(settings: CustomJobSettings, job_json: str) -> list[dict[str, Any]]:
    """The primary replica in pool 0 and ``nodes - 1`` workers in pool 1, identical machines and commands."""
    pool = {
        "machine_spec": {"machine_type": machine_type_for(settings.accelerator_type, settings.accelerator_count,
                                                          settings.machine_type),
                         "accelerator_type": settings.accelerator_type,
                         "accelerator_count": settings.accelerator_count},
        "container_spec": {"image_uri": settings.image, "command": ["python", "-m", REPLICA_MODULE],
                           "args": ["--job-json", job_json]},
    }
    pools = [{**pool, "replica_count": 1}]
    if settings.nodes > 1:
        pools.append({**pool, "replica_count": settings.nodes - 1})
    return pools


def job_display_name(pipeline_run: str) -> str:
    """A custom job name that says which pipeline run it trains for (Vertex allows 128 characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"grpo-train-{pipeline_run}" if pipeline_run else "grpo-train")[:128]


def on_cloud_storage(job: TrainingJob) -> TrainingJob:
    """``job`` with its folders as every replica sees them: ``/gcs/`` paths (replicas share no local disk)."""
    update = {"data_dir": fuse_path(job.data_dir, "prepared data"),
              "output_dir": fuse_path(job.output_dir, "tuned model output")}
    if job.tensorboard_dir and to_gcs_uri(job.tensorboard_dir):
        update["tensorboard_dir"] = fuse_path(job.tensorboard_dir, "tensorboard folder")
    return job.model_copy(update=update)


def train_on_nodes(job: TrainingJob, settings: CustomJobSettings, **client: Any):
    """Train ``job`` as a Vertex custom job (``run_training_job``); its ``TrainingOutcome``, read back from the
    job's output folder (this task's own view of the shared folder)."""
    run_training_job(job, settings, **client)
    return outcome_from_outputs(job.output_dir)


def run_training_job(job: TrainingJob, settings: CustomJobSettings, *, api_endpoint: str | None = None,
                     credentials: Any = None) -> str:
    """Submit ``job`` as a Vertex custom job as ``settings`` say and wait for it; returns the job's resource name."""
    settings.check()
    # Fail here, before any GPU is reserved, when the batch cannot be split over every GPU of every node.
    job.data_parallel(settings.nodes * settings.accelerator_count)
    replica_job = on_cloud_storage(job)
    output_uri = to_gcs_uri(job.output_dir)
    bucket, _ = split_gcs_uri(output_uri, "tuned model output")
    pools = worker_pool_specs(settings, replica_job.model_dump_json())

    from google.cloud import aiplatform
    from google.cloud.aiplatform.compat.types import custom_job as custom_job_types

    init_vertex(settings.project, settings.location, api_endpoint, credentials)
    custom_job = aiplatform.CustomJob(
        display_name=settings.display_name, worker_pool_specs=pools, base_output_dir=f"{output_uri}/custom_job",
        staging_bucket=f"{GCS_SCHEME}{bucket}", encryption_spec_key_name=settings.encryption_key or None,
    )
    custom_job.submit(
        service_account=settings.service_account or None, network=settings.network or None,
        tensorboard=settings.tensorboard or None,
        scheduling_strategy=custom_job_types.Scheduling.Strategy.SPOT if settings.spot else None,
    )
    log.info("custom job %s: %d node(s) x %d %s%s", custom_job.resource_name, settings.nodes,
             settings.accelerator_count, settings.accelerator_type, " on Spot VMs" if settings.spot else "")
    # A stopped pipeline task (SIGTERM) cancels its job, so no VMs keep training for a run that is gone.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: custom_job.cancel())
    try:
        custom_job.wait_for_completion()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return custom_job.resource_name


def replica_job(job: TrainingJob, tensorboard_log_dir: str | None) -> TrainingJob:
    """The job this replica runs: TensorBoard events where Vertex uploads them from, when the job writes any."""
    if job.tensorboard_dir and tensorboard_log_dir:
        return job.model_copy(update={"tensorboard_dir": as_local_path(tensorboard_log_dir)})
    return job


def replica_rendezvous(cluster_spec: str | None) -> Rendezvous:
    """This replica's place among the nodes; a job of one replica may come without a cluster spec."""
    return rendezvous_from_cluster_spec(cluster_spec) if cluster_spec else Rendezvous()


@cli_main
def main(argv: list[str] | None = None) -> None:
    """Replica entry point: ``python -m components.grpo_train.multinode --job-json JOB``."""
    parser = argparse.ArgumentParser(prog=f"python -m {REPLICA_MODULE}",
                                     description="One replica of the training custom job: torchrun on this VM's GPUs.")
    parser.add_argument("--job-json", required=True, help="the training job (JSON), as the launcher built it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = replica_job(TrainingJob.from_json(args.job_json, "--job-json"), os.environ.get(TENSORBOARD_LOG_DIR_ENV))
    rendezvous = replica_rendezvous(os.environ.get(CLUSTER_SPEC_ENV))
    run_job_under_torchrun(job, max(1, visible_gpu_count()), rendezvous)


if __name__ == "__main__":
    raise SystemExit(main())
