"""Check a pipeline run's parameters before any work: a value that cannot work fails here, in the run's first
task, with one line naming the parameter, instead of after hours of training.

Also picks the training route: one VM (a pipeline task with GPUs) or a Vertex custom job (several VMs, or Spot).
On a self-hosted KFP cluster (``target="kfp"``) what only Vertex has is refused (``check_kfp_parameters``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from components.common.errors import UserError, choices_error
from components.common.recipes import load_recipe
from components.common.secrets import secret_version_name
from components.grpo_train.multinode import CustomJobSettings
from components.register.core import SERVING_MODES, check_model_name, check_registry_uri

ONE_VM = "one-vm"
CUSTOM_JOB = "custom-job"
TARGETS = ("vertex", "kfp", "local")
_SERVICE_ACCOUNT = re.compile(r"^[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com$")


def training_route(train_nodes: int, train_on_spot: bool) -> str:
    """``custom-job`` for several VMs or Spot VMs (a Vertex custom job sets both), else ``one-vm``."""
    return CUSTOM_JOB if train_nodes > 1 or train_on_spot else ONE_VM


# Parameters of the Vertex training custom job: self-hosted KFP has no counterpart, so they must stay empty
# (train_machine_type too, but it is read only by the custom job, which train_nodes and train_on_spot rule out).
_CUSTOM_JOB_ONLY = ("encryption_key", "network", "service_account", "tensorboard")


def check_kfp_parameters(values: Mapping[str, Any], gpu_types: Mapping[str, str], volume_path: str) -> None:
    """Raise ``UserError`` naming the first parameter a self-hosted KFP run cannot honour.

    ``values``: the run's parameters (missing ones are not checked); ``gpu_types``: accelerator-type parameter ->
    the node-label value compiled into that task's node selector; ``volume_path``: where the register step
    mounts the volume claim, under which a folder registry outlives the pod.
    """
    if values.get("train_nodes", 1) != 1:
        raise UserError(f"train_nodes: {values['train_nodes']} training VMs need a Vertex AI custom job, which "
                        "self-hosted KFP has no counterpart for; use 1 (and train_accelerator_count GPUs)")
    if values.get("train_on_spot"):
        raise UserError("train_on_spot: Spot training is a Vertex AI custom job; on KFP leave it false and put the "
                        "GPU node pool on Spot VMs (a retried training task resumes from its checkpoint)")
    for name in _CUSTOM_JOB_ONLY:
        if values.get(name):
            hint = " (the run's Kubernetes service account is a submit flag)" if name == "service_account" else ""
            raise UserError(f"{name}: a setting of the Vertex AI training custom job, which self-hosted KFP has no "
                            f"counterpart for; leave it empty{hint}")
    registry_uri = str(values.get("registry_uri", volume_path + "/registry")).strip()
    if registry_uri.startswith("vertex://"):
        raise UserError(f"registry_uri: the Vertex AI Model Registry is not used from self-hosted KFP; give a folder "
                        f"under {volume_path} (the volume the register step mounts)")
    if not PurePosixPath(posixpath.normpath(registry_uri)).is_relative_to(volume_path):  # "/mnt/v/../x" is not
        raise UserError(f"registry_uri: {registry_uri!r} is not under {volume_path}, the volume the register step "
                        "mounts; a folder elsewhere is lost with the task's pod")
    if values.get("deploy_endpoint"):
        raise UserError("deploy_endpoint: deploying goes to a Vertex AI endpoint, which self-hosted KFP has no "
                        "counterpart for; leave it empty and serve the registered model yourself")
    for parameter, compiled in gpu_types.items():
        if parameter in values and values[parameter] != compiled:
            raise UserError(f"{parameter}: this KFP pipeline was compiled to place the task on nodes labelled "
                            f"{compiled!r}, got {values[parameter]!r}; recompile with "
                            f"--{parameter.replace('_', '-')} {values[parameter]}")


def _accelerator_types() -> set[str]:
    from google.cloud.aiplatform_v1.types import AcceleratorType

    return {member.name for member in AcceleratorType if member.value}


def check_run_parameters(
    *,
    recipe: str,
    recipe_settings: list[str],
    train_accelerator_type: str,
    train_accelerator_count: int,
    train_nodes: int,
    train_on_spot: bool,
    eval_accelerator_type: str,
    eval_accelerator_count: int,
    eval_question_limit: int,
    gate_margin: float,
    gate_alpha: float,
    registry_uri: str,
    model_display_name: str,
    registered_weights: str,
    hf_token_secret: str = "",
    encryption_key: str = "",
    network: str = "",
    service_account: str = "",
    tensorboard: str = "",
    deploy_endpoint: str = "",
    deploy_machine_type: str = "",
    deploy_accelerator_type: str = "",
    deploy_accelerator_count: int = 0,
    deploy_min_replicas: int = 1,
    deploy_max_replicas: int = 1,
    deploy_traffic_percentage: int = 100,
    smoke_test_prompts: int = 20,
    smoke_test_min_format_rate: float = 0.9,
    target: str = "vertex",
    kfp_gpu_types: Mapping[str, str] | None = None,
    kfp_volume_path: str = "",
) -> str:
    """Raise ``UserError`` naming the first parameter that cannot work; return the training route.

    The deploy settings (``deploy_endpoint`` empty: no deploy) are checked here too, so that an adapter or a bad
    replica count fails before training, not after it. ``target`` (vertex, kfp or local) and the ``kfp_*``
    settings are compiled into the pipeline (pipelines/targets.py), never set by a run.
    """
    if target not in TARGETS:
        raise choices_error("target", target, TARGETS)
    on_kfp = target == "kfp"
    if on_kfp:
        check_kfp_parameters(
            {"train_nodes": train_nodes, "train_on_spot": train_on_spot, "encryption_key": encryption_key,
             "network": network, "service_account": service_account, "tensorboard": tensorboard,
             "registry_uri": registry_uri, "deploy_endpoint": deploy_endpoint,
             "train_accelerator_type": train_accelerator_type, "eval_accelerator_type": eval_accelerator_type},
            kfp_gpu_types or {}, kfp_volume_path)
    load_recipe(recipe, recipe_settings)  # an unknown recipe or a bad setting names itself
    accelerators: dict[str, Any] = {"train": (train_accelerator_type, train_accelerator_count),
                                    "eval": (eval_accelerator_type, eval_accelerator_count)}
    for prefix, (kind, count) in accelerators.items():
        if count < 1:
            raise UserError(f"{prefix}_accelerator_count must be at least 1, got {count}")
        if not on_kfp and kind not in (known := _accelerator_types()):  # on KFP: a node label, checked above
            raise choices_error(f"{prefix}_accelerator_type", kind, known)
    if train_nodes < 1:
        raise UserError(f"train_nodes must be at least 1, got {train_nodes}")
    if eval_question_limit < 0:
        raise UserError(f"eval_question_limit must be 0 (every test question) or more, got {eval_question_limit}")
    if not 0 < gate_alpha < 1:
        raise UserError(f"gate_alpha must be between 0 and 1, got {gate_alpha}")
    if not -1 < gate_margin < 1:
        raise UserError(f"gate_margin is an accuracy difference between -1 and 1 (0.02 = 2 points), got {gate_margin}")
    check_registry_uri(registry_uri)
    check_model_name(model_display_name, "model_display_name")
    if registered_weights not in SERVING_MODES:
        raise choices_error("registered_weights", registered_weights, SERVING_MODES)
    if hf_token_secret:
        secret_version_name(hf_token_secret, "hf_token_secret")
    if service_account and not _SERVICE_ACCOUNT.match(service_account):
        raise UserError(f"service_account must look like NAME@PROJECT.iam.gserviceaccount.com, got {service_account!r}")
    # The custom job's own check (key, network, TensorBoard); the image and the run's project and region are
    # bound when the pipeline is compiled and run, so stand-ins fill them here. On KFP they are all refused above.
    CustomJobSettings(nodes=train_nodes, image="trainer-image", accelerator_type=train_accelerator_type,
                      accelerator_count=train_accelerator_count, project="run-project", location="run-region",
                      service_account=service_account, network=network, encryption_key=encryption_key,
                      tensorboard=tensorboard, spot=train_on_spot).check()
    if deploy_endpoint:
        from components.deploy.core import ADAPTER_REFUSED, DeploymentSpec

        if registered_weights == "adapter":
            raise UserError(ADAPTER_REFUSED)
        DeploymentSpec(endpoint_name=deploy_endpoint, machine_type=deploy_machine_type,
                       accelerator_type=deploy_accelerator_type, accelerator_count=deploy_accelerator_count,
                       min_replica_count=deploy_min_replicas, max_replica_count=deploy_max_replicas,
                       traffic_percentage=deploy_traffic_percentage).validate()
        if smoke_test_prompts < 1:
            raise UserError(f"smoke_test_prompts must be at least 1, got {smoke_test_prompts}")
        if not 0 <= smoke_test_min_format_rate <= 1:
            raise UserError(f"smoke_test_min_format_rate must be between 0 and 1, got {smoke_test_min_format_rate}")
    return training_route(train_nodes, train_on_spot)
