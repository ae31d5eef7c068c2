"""Training on several VMs as one Vertex AI custom job, and the entry point each of its replicas runs.

The pipeline task (slim image, no GPU) submits a ``CustomJob`` through the aiplatform SDK: worker pool 0 holds
the primary replica (node 0), worker pool 1 the other ``nodes - 1``, all on the trainer image and machine type.
Each replica runs ``python -m components.grpo_train.multinode <training CLI args>``, which reads Vertex's
``CLUSTER_SPEC`` for the rendezvous and launches torchrun with one process per GPU; the nodes share the output
folder through Cloud Storage FUSE (``/gcs/``), so checkpoints and resumption work as on one VM, and only the
global rank 0 writes the adapter and summary. The task then reads that summary back, as on one VM.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from typing import Any

from components.common.errors import UserError, cli_main
from components.common.gcs import GCS_FUSE_ROOT, GCS_SCHEME, split_gcs_uri, to_gcs_uri
from components.common.recipes import load_recipe
from components.grpo_train.launch import (
    Rendezvous,
    data_parallel_overrides,
    outcome_from_outputs,
    run_torchrun,
    torchrun_command,
    training_cli_args,
    visible_gpu_count,
)

log = logging.getLogger(__name__)

REPLICA_MODULE = "components.grpo_train.multinode"
CLUSTER_SPEC_ENV = "CLUSTER_SPEC"
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


def worker_pool_specs(
    image: str, nodes: int, machine_type: str, accelerator_type: str, accelerator_count: int, cli_args: list[str]
) -> list[dict[str, Any]]:
    """One primary replica in pool 0 and ``nodes - 1`` workers in pool 1, identical machines and commands."""
    pool = {
        "machine_spec": {"machine_type": machine_type, "accelerator_type": accelerator_type,
                         "accelerator_count": accelerator_count},
        "container_spec": {"image_uri": image, "command": ["python", "-m", REPLICA_MODULE], "args": list(cli_args)},
    }
    return [{**pool, "replica_count": 1}, {**pool, "replica_count": nodes - 1}]


def job_display_name(pipeline_run: str) -> str:
    """A custom job name that says which pipeline run it trains for (Vertex allows 128 characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"grpo-train-{pipeline_run}" if pipeline_run else "grpo-train")[:128]


def train_on_nodes(recipe: str, data_dir: str, output_dir: str, **settings: Any):
    """Train as a Vertex custom job over several VMs (``run_training_job``); its ``TrainingOutcome``, read back
    from ``output_dir`` (this task's own view of the shared folder)."""
    run_training_job(recipe, data_dir, output_dir, **settings)
    return outcome_from_outputs(output_dir)


def run_training_job(
    recipe: str,
    data_dir: str,
    output_dir: str,
    *,
    nodes: int,
    image: str,
    accelerator_type: str,
    accelerator_count: int,
    project: str,
    location: str,
    machine_type: str = "",
    model: str | None = None,
    overrides: list[str] | None = None,
    merge: bool = False,
    hf_token_secret: str = "",
    completion_sample_size: int = 0,
    display_name: str = "grpo-train",
    service_account: str | None = None,
    api_endpoint: str | None = None,
    credentials: Any = None,
):
    """Submit training as a Vertex custom job over ``nodes`` VMs and wait for it; returns the job's resource name."""
    if nodes < 2:
        raise UserError(f"train_nodes must be at least 2 for a multi-node custom job, got {nodes}")
    if accelerator_count < 1:
        raise UserError(f"train_accelerator_count must be at least 1 per node, got {accelerator_count}")
    if not image:
        raise UserError("trainer image is empty: the custom job's replicas need the trainer image")
    overrides = list(overrides or [])
    # Fail here, before any GPU is reserved, when the batch cannot be split over every GPU of every node.
    data_parallel_overrides(load_recipe(recipe, overrides), nodes * accelerator_count)
    cli_args = training_cli_args(
        recipe, fuse_path(data_dir, "prepared data"), fuse_path(output_dir, "tuned model output"), model=model,
        overrides=overrides, merge=merge, hf_token_secret=hf_token_secret, completion_sample_size=completion_sample_size,
    )
    output_uri = to_gcs_uri(output_dir)
    bucket, _ = split_gcs_uri(output_uri, "tuned model output")
    pools = worker_pool_specs(image, nodes, machine_type_for(accelerator_type, accelerator_count, machine_type),
                              accelerator_type, accelerator_count, cli_args)

    from google.cloud import aiplatform

    init_kwargs: dict[str, Any] = {"project": project, "location": location, "credentials": credentials}
    if api_endpoint:
        init_kwargs["api_endpoint"] = api_endpoint
        if api_endpoint.startswith("http://"):
            init_kwargs["api_transport"] = "rest"  # only the REST transport speaks plain HTTP
    aiplatform.init(**init_kwargs)
    job = aiplatform.CustomJob(display_name=display_name, worker_pool_specs=pools,
                               base_output_dir=f"{output_uri}/custom_job", staging_bucket=f"{GCS_SCHEME}{bucket}")
    job.submit(service_account=service_account or None)
    log.info("custom job %s: %d nodes x %d %s", job.resource_name, nodes, accelerator_count, accelerator_type)
    # A stopped pipeline task (SIGTERM) cancels its job, so no VMs keep training for a run that is gone.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: job.cancel())
    try:
        job.wait_for_completion()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return job.resource_name


def replica_command(cli_args: list[str], cluster_spec: str, gpus: int) -> list[str]:
    """This replica's torchrun command: its node rank from ``cluster_spec``, one process per GPU, and the
    accumulation split over every process of every node."""
    from components.grpo_train.__main__ import build_parser

    args = build_parser().parse_args(cli_args)
    rendezvous = rendezvous_from_cluster_spec(cluster_spec)
    processes = max(1, gpus)
    split = data_parallel_overrides(load_recipe(args.recipe, args.overrides), processes * rendezvous.nnodes)
    log.info("node %d of %d, %d processes, primary %s:%d", rendezvous.node_rank, rendezvous.nnodes, processes,
             rendezvous.master_addr, rendezvous.master_port)
    return torchrun_command([*cli_args, *(a for o in split for a in ("--set", o))], processes, rendezvous)


@cli_main
def main(argv: list[str] | None = None) -> None:
    """Replica entry point: ``python -m components.grpo_train.multinode <python -m components.grpo_train args>``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster_spec = os.environ.get(CLUSTER_SPEC_ENV)
    if not cluster_spec:
        raise UserError(f"{CLUSTER_SPEC_ENV} is not set: this entry point runs as a replica of a Vertex AI custom job")
    run_torchrun(replica_command(list(sys.argv[1:] if argv is None else argv), cluster_spec, visible_gpu_count()))

if __name__ == "__main__":
    raise SystemExit(main())
