"""Deploy a registered model version to a named endpoint: a Vertex AI endpoint, or a folder endpoint locally.

Both backends keep the same rules:
- the endpoint is found by name, and created when missing;
- the new version gets ``traffic_percentage`` of the traffic (100: all of it; less: a canary share), the
  versions already there share the rest in their current proportions; the first version always takes all;
- the traffic split before the deploy is recorded, so a failed smoke test can restore it (``rollback``);
- a retried deploy finds the version already on the endpoint and deploys nothing;
- only merged weights are deployed (``serving_mode`` ``merged``): see ``ADAPTER_REFUSED``.

The folder endpoint (``<registry>/_endpoints/<name>/endpoint.json``) records the same deployed models and
traffic split; the smoke test serves its model with a real local server while it runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.common.artifacts import Deployment, RegistrationRecord, artifact_file, read_document, write_document
from components.common.errors import UserError
from components.common.jsonl import write_json
from components.common.vertex import init_vertex
from components.register.core import REGISTRATION_FILE

logger = logging.getLogger(__name__)

DEPLOYMENT_FILE = "deployment.json"
ENDPOINT_FILE = "endpoint.json"
ENDPOINTS_FOLDER = "_endpoints"  # model names start with a letter or digit, so this never names a model
ADAPTER_REFUSED = (
    "serving_mode 'adapter' cannot be deployed: vLLM applies a LoRA adapter of Gemma 3's multimodal class to its "
    "language model only (vllm-project/vllm#32758) and fetches the gated base model at deploy time (HF_TOKEN in "
    "the endpoint's environment); register merged weights instead (pipeline parameter registered_weights=merged, "
    "register CLI serving_mode=merged)"
)
_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERTEX_MODEL = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/models/[^/@]+(@[^/]+)?$")


@dataclass
class DeploymentSpec:
    """Where and on what the version is served."""

    endpoint_name: str
    machine_type: str = "g2-standard-12"
    accelerator_type: str = "NVIDIA_L4"
    accelerator_count: int = 1
    min_replica_count: int = 1
    max_replica_count: int = 1
    traffic_percentage: int = 100

    def validate(self) -> None:
        if not _ENDPOINT_NAME.match(self.endpoint_name or ""):
            raise UserError("endpoint_name must be 1-128 letters, digits, '_', '-', '.' starting with a letter/digit, "
                            f"got {self.endpoint_name!r}")
        if not 1 <= self.traffic_percentage <= 100:
            raise UserError(f"traffic_percentage must be 1-100 (100 = all traffic), got {self.traffic_percentage}")
        if self.min_replica_count < 1 or self.max_replica_count < self.min_replica_count:
            raise UserError(f"replica counts need 1 <= min_replica_count <= max_replica_count, got "
                            f"{self.min_replica_count} and {self.max_replica_count}")
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise UserError(f"accelerator_type and accelerator_count go together (none: '' and 0), got "
                            f"{self.accelerator_type!r} x {self.accelerator_count}")


def write_deployment(deployment: Deployment, folder: str | Path) -> None:
    """deployment.json into ``folder`` (deploy's output artifact)."""
    write_document(Path(folder) / DEPLOYMENT_FILE, deployment)


def load_deployment(path: str | Path) -> Deployment:
    """deployment.json (deploy's output) from a file path or the directory holding it."""
    return read_document(Deployment, artifact_file(path, DEPLOYMENT_FILE, "deployment", "deploy"))


def load_registration(path: str | Path) -> dict[str, Any]:
    """registration.json (register's output) from a file path or the directory holding it."""
    path = artifact_file(path, REGISTRATION_FILE, "registered_model", "register")
    try:
        return read_document(RegistrationRecord, path).model_dump(mode="json")
    except UserError as err:
        raise UserError(f"registered_model: {err}") from None


def require_merged(serving_mode: str | None, model: str) -> None:
    """Only merged weights are deployed; an adapter is refused with the reason, anything else named."""
    if serving_mode == "adapter":
        raise UserError(ADAPTER_REFUSED)
    if serving_mode != "merged":
        raise UserError(f"registered_model: {model} has serving_mode {serving_mode!r}; only merged weights are deployed")


def share_traffic(current: dict[str, int], new_id: str, percentage: int) -> dict[str, int]:
    """``percentage`` to ``new_id``, the rest shared by the others in their current proportions (sums to 100)."""
    if not any(current.values()):
        return {new_id: 100}
    return {**_scale(current, 100 - percentage), new_id: percentage}


def split_without(current: dict[str, int], deployed_model_id: str) -> dict[str, int]:
    """The split with ``deployed_model_id`` taken out, the others scaled back to 100 (empty when none is left)."""
    others = {key: value for key, value in current.items() if key != deployed_model_id}
    if not others:
        return {}
    if not any(others.values()):
        # The version held all traffic (a retried deploy cannot see what came before): the newest other takes it.
        return {max(others, key=lambda k: int(k) if k.isdigit() else 0): 100}
    return _scale(others, 100)


def _scale(split: dict[str, int], total: int) -> dict[str, int]:
    """Integer shares of ``total`` in ``split``'s proportions; what flooring leaves goes to the largest first."""
    weight = sum(split.values())
    scaled = {key: value * total // weight for key, value in split.items()}
    for key in sorted(split, key=lambda k: -split[k])[: total - sum(scaled.values())]:
        scaled[key] += 1
    return {key: value for key, value in scaled.items() if value}


# ---------------------------------------------------------------------------------------------- entry


def deploy_model(
    registered_model: str | Path | dict[str, Any],
    spec: DeploymentSpec,
    *,
    api_endpoint: str | None = None,
    credentials: Any = None,
) -> Deployment:
    """Deploy the registered version (register's registration.json, or its folder) to ``spec.endpoint_name``."""
    spec.validate()
    registration = registered_model if isinstance(registered_model, dict) else load_registration(registered_model)
    if registration["backend"] == "vertex":
        deployment = _deploy_on_vertex(registration, spec, api_endpoint=api_endpoint, credentials=credentials)
    elif registration["backend"] == "file":
        deployment = _deploy_to_folder(registration, spec)
    else:
        raise UserError(f"registered_model: unknown backend {registration['backend']!r} (expected vertex or file)")
    logger.info("deployed %s to endpoint %s as deployed model %s; traffic %s (before: %s) created=%s",
                deployment.model, deployment.endpoint, deployment.deployed_model_id, deployment.traffic_split,
                deployment.previous_traffic_split, deployment.created)
    return deployment


def rollback(deployment: Deployment, *, api_endpoint: str | None = None, credentials: Any = None) -> bool:
    """Give the traffic back to the versions that held it before the deploy and undeploy the new one.

    Returns False (and changes nothing) when no version was there before: there is nothing to roll back to.
    """
    if not deployment.previous_traffic_split:
        logger.warning("no version held traffic on %s before this deploy: nothing to roll back to", deployment.endpoint)
        return False
    undeploy(deployment, api_endpoint=api_endpoint, credentials=credentials)
    return True


def undeploy(deployment: Deployment, *, api_endpoint: str | None = None, credentials: Any = None) -> None:
    """Take the new version off the endpoint; the previous traffic split (if any) is restored in the same call."""
    if deployment.backend == "vertex":
        endpoint = vertex_endpoint(deployment.endpoint, api_endpoint, credentials)
        if deployment.deployed_model_id not in {m.id for m in endpoint.list_models()}:
            logger.info("deployed model %s is no longer on %s", deployment.deployed_model_id, deployment.endpoint)
            return
        endpoint.undeploy(deployment.deployed_model_id, traffic_split=deployment.previous_traffic_split or None)
    else:
        folder = Path(deployment.endpoint)
        state = _read_endpoint(folder)
        state["deployed_models"] = [m for m in state["deployed_models"] if m["id"] != deployment.deployed_model_id]
        if deployment.previous_traffic_split:
            state["traffic_split"] = dict(deployment.previous_traffic_split)
        else:
            state["traffic_split"] = split_without(state["traffic_split"], deployment.deployed_model_id)
        write_json(folder / ENDPOINT_FILE, state)
    logger.info("undeployed %s from %s; traffic now %s", deployment.deployed_model_id, deployment.endpoint,
                deployment.previous_traffic_split or "as the endpoint rescales it")


# ---------------------------------------------------------------------------------------------- folder endpoint


def _read_endpoint(folder: Path) -> dict[str, Any]:
    path = folder / ENDPOINT_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"display_name": folder.name, "deployed_models": [], "traffic_split": {}}


def _deploy_to_folder(registration: dict[str, Any], spec: DeploymentSpec) -> Deployment:
    version_dir = Path(registration["resource_name"])
    manifest_path = version_dir / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"registered_model: {str(version_dir)!r} has no manifest.json (not a file registry version)")
    require_merged(json.loads(manifest_path.read_text(encoding="utf-8")).get("serving_mode"), str(version_dir))
    folder = version_dir.parents[2] / ENDPOINTS_FOLDER / spec.endpoint_name  # <registry>/<model>/versions/<n>
    created = not (folder / ENDPOINT_FILE).is_file()
    state = _read_endpoint(folder)
    current = {key: int(value) for key, value in state["traffic_split"].items()}
    for deployed in state["deployed_models"]:
        if deployed["model"] == str(version_dir):  # a retried deploy: this version is already there
            return _folder_deployment(folder, spec, deployed, registration, current,
                                      split_without(current, deployed["id"]), created=False)
    new_id = str(max((int(m["id"]) for m in state["deployed_models"]), default=0) + 1)
    deployed = {"id": new_id, "model": str(version_dir), "model_uri": registration["uri"],
                "display_name": f"{version_dir.parents[1].name}-v{version_dir.name}", "spec": dataclasses.asdict(spec)}
    state["deployed_models"].append(deployed)
    state["traffic_split"] = share_traffic(current, new_id, spec.traffic_percentage)
    write_json(folder / ENDPOINT_FILE, state)
    return _folder_deployment(folder, spec, deployed, registration, state["traffic_split"],
                              {k: v for k, v in current.items() if v}, created=created)


def _folder_deployment(folder: Path, spec: DeploymentSpec, deployed: dict[str, Any], registration: dict[str, Any],
                       split: dict[str, int], previous: dict[str, int], created: bool) -> Deployment:
    return Deployment(backend="file", endpoint=str(folder), endpoint_name=spec.endpoint_name,
                      deployed_model_id=deployed["id"], model=deployed["model"], model_uri=registration["uri"],
                      traffic_split=split, previous_traffic_split=previous, created=created,
                      spec=dataclasses.asdict(spec))


# ---------------------------------------------------------------------------------------------- Vertex AI


def _project_location(resource_name: str, what: str) -> tuple[str, str]:
    parts = resource_name.split("/")
    if len(parts) < 4 or parts[0] != "projects" or parts[2] != "locations":
        raise UserError(f"{what}: {resource_name!r} is not a Vertex resource name (projects/P/locations/L/...)")
    return parts[1], parts[3]


def vertex_endpoint(resource_name: str, api_endpoint: str | None, credentials: Any) -> Any:
    from google.cloud import aiplatform

    project, location = _project_location(resource_name, "endpoint")
    init_vertex(project, location, api_endpoint, credentials)
    return aiplatform.Endpoint(resource_name)


def _deploy_on_vertex(registration: dict[str, Any], spec: DeploymentSpec, *, api_endpoint: str | None,
                      credentials: Any) -> Deployment:
    from google.cloud import aiplatform

    resource_name = registration["resource_name"]
    if not _VERTEX_MODEL.match(resource_name):
        raise UserError(f"registered_model: {resource_name!r} is not a Vertex model version "
                        "(projects/P/locations/L/models/ID@V)")
    project, location = _project_location(resource_name, "registered_model")
    init_vertex(project, location, api_endpoint, credentials)
    model = aiplatform.Model(resource_name)
    require_merged(model.labels.get("serving_mode"), resource_name)

    matches = aiplatform.Endpoint.list(filter=f'display_name="{spec.endpoint_name}"', order_by="create_time")
    created = not matches
    endpoint = matches[0] if matches else aiplatform.Endpoint.create(
        display_name=spec.endpoint_name, labels={"deploy_source": "medgemma-grpo-pipeline"})
    current = dict(endpoint.traffic_split)
    for deployed in endpoint.list_models():
        if deployed.model == model.resource_name and deployed.model_version_id == model.version_id:
            return _vertex_deployment(endpoint, spec, deployed.id, model, registration, current,
                                      split_without(current, deployed.id), created=False)

    before = {deployed.id for deployed in endpoint.list_models()}
    model.deploy(
        endpoint=endpoint,
        deployed_model_display_name=f"{model.display_name}-v{model.version_id}",
        traffic_percentage=spec.traffic_percentage if any(current.values()) else 100,
        machine_type=spec.machine_type,
        accelerator_type=spec.accelerator_type or None,
        accelerator_count=spec.accelerator_count or None,
        min_replica_count=spec.min_replica_count,
        max_replica_count=spec.max_replica_count,
        sync=True,
    )
    endpoint = aiplatform.Endpoint(endpoint.resource_name)
    [new_id] = {deployed.id for deployed in endpoint.list_models()} - before
    return _vertex_deployment(endpoint, spec, new_id, model, registration, dict(endpoint.traffic_split),
                              {k: v for k, v in current.items() if v}, created=created)


def _vertex_deployment(endpoint: Any, spec: DeploymentSpec, deployed_model_id: str, model: Any,
                       registration: dict[str, Any], split: dict[str, int], previous: dict[str, int],
                       created: bool) -> Deployment:
    return Deployment(backend="vertex", endpoint=endpoint.resource_name, endpoint_name=spec.endpoint_name,
                      deployed_model_id=str(deployed_model_id), model=model.versioned_resource_name,
                      model_uri=registration["uri"], traffic_split=split, previous_traffic_split=previous,
                      created=created, spec=dataclasses.asdict(spec))
