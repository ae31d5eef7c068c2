"""Where the pipeline runs, and every platform setting that differs there: the graph is the same for all.

- ``vertex``: Vertex AI Pipelines. GPUs by Vertex accelerator type; the run's project and region come from
  Vertex's placeholders; checkpoints sit in the tuned model's output, which Vertex mounts from Cloud Storage
  (``/gcs/``), so a retried training task finds them.
- ``kfp``: a self-hosted Kubeflow Pipelines 2.x cluster (kfp-kubernetes settings). GPUs as ``nvidia.com/gpu`` on
  nodes picked by a node label; the Hugging Face token from a Kubernetes secret; one persistent volume claim
  mounted on the training task (checkpoints that outlive a retried task) and the register task (a folder
  registry). What only Vertex has (the training custom job, Spot, CMEK, VPC, TensorBoard, the Vertex registry,
  endpoints) is refused: here at compile time for the defaults, by the check-parameters task at run start.
- ``local``: kfp.local on this machine: Vertex's settings without its placeholders, which kfp.local cannot fill.

``build_pipeline`` calls the hooks (``gpu``, ``secrets``, ``volume``) on each task that needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kfp import dsl

from components.common.errors import UserError, choices_error
from components.preflight.core import TARGETS, check_kfp_parameters

Target = Literal["vertex", "kfp", "local"]  # TARGETS (the check-parameters task's list), as a type

# Vertex fills these in for the task that receives them; kfp.local and self-hosted KFP do not know them.
RUN_PROJECT = "{{$.pipeline_google_cloud_project_id}}"
RUN_LOCATION = "{{$.pipeline_google_cloud_location}}"

# Self-hosted KFP.
KUBERNETES_GPU_RESOURCE = "nvidia.com/gpu"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
DEFAULT_VOLUME_CLAIM = "medgemma-grpo"
VOLUME_PATH = "/mnt/medgemma-grpo"  # where the volume claim is mounted (training and register tasks)
DEFAULT_HF_TOKEN_KUBERNETES_SECRET = "hf-token"
HF_TOKEN_SECRET_KEY = "HF_TOKEN"  # the key inside that secret
DEFAULT_GKE_GPU = "nvidia-tesla-a100"
GPU_TYPE_PARAMETERS = ("train_accelerator_type", "eval_accelerator_type")


@dataclass(frozen=True)
class VertexTarget:
    """Vertex AI Pipelines: the compiled YAML's settings as Vertex reads them."""

    name: str = "vertex"
    run_project: str = RUN_PROJECT
    run_location: str = RUN_LOCATION

    # Empty: checkpoints live in the tuned model's output folder, a /gcs/ path Vertex writes straight to GCS.
    checkpoint_root: str = ""
    # Models trained at once (0: all; each model's GPU tasks get their own machines).
    model_parallelism: int = 0
    # What names this run for the steps that must find their own work again after a retry (checkpoints, the
    # registered version): Vertex's job name is unique per run.
    run_id: str = dsl.PIPELINE_JOB_NAME_PLACEHOLDER

    def gpu(self, task, accelerator_type, accelerator_count, cpus, memory):
        # KFP 2.17's set_*_limit do not record their pipeline parameters as task inputs, so inside a dsl.If
        # the sub-DAG would not receive them: register them explicitly.
        task.register_pipeline_channels([accelerator_type, accelerator_count, cpus, memory])
        return (task.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
                .set_cpu_limit(cpus).set_memory_limit(memory))

    def secrets(self, task):
        """The task reads the token itself from Secret Manager (``hf_token_secret``)."""
        return task

    def volume(self, task):
        """Nothing to mount: Vertex mounts Cloud Storage at /gcs/ in every task."""
        return task

    def check_inputs(self) -> dict[str, Any]:
        """Compile-time constants for the check-parameters task."""
        return {"target": self.name}

    def parameter_defaults(self) -> dict[str, Any]:
        """Pipeline parameter defaults that differ from the pipeline function's own."""
        return {}


@dataclass(frozen=True)
class LocalTarget(VertexTarget):
    """kfp.local (pipelines/run_local.py): it ignores the GPU settings and cannot fill Vertex's placeholders."""

    name: str = "local"
    run_project: str = ""
    run_location: str = ""
    model_parallelism: int = 1  # one CPU machine: two models at once only share its cores


@dataclass(frozen=True)
class KfpTarget:
    """A self-hosted Kubeflow Pipelines 2.x cluster. ``gpu_types``: the node-label value of the GPUs each
    accelerator-type parameter asks for, compiled into the node selectors (and the parameters' defaults)."""

    volume_claim: str = DEFAULT_VOLUME_CLAIM
    hf_token_secret: str = DEFAULT_HF_TOKEN_KUBERNETES_SECRET
    gpu_node_label: str = GKE_ACCELERATOR_LABEL
    gpu_types: dict[str, str] = field(default_factory=lambda: dict.fromkeys(GPU_TYPE_PARAMETERS, DEFAULT_GKE_GPU))

    name: str = "kfp"
    run_project: str = ""
    run_location: str = ""
    checkpoint_root: str = VOLUME_PATH + "/checkpoints"
    model_parallelism: int = 0  # 1 when the volume is ReadWriteOnce: one training pod mounts it at a time
    # The run's ID: KFP's job name is the run's display name, which clones and recurring runs repeat.
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER

    def __post_init__(self) -> None:
        for flag, value in (("--volume-claim", self.volume_claim), ("--gpu-node-label", self.gpu_node_label),
                            ("--hf-token-kubernetes-secret", self.hf_token_secret)):
            if not value.strip():
                raise UserError(f"{flag} must not be empty")
        for parameter in GPU_TYPE_PARAMETERS:
            if not self.gpu_types.get(parameter, "").strip():
                raise UserError(f"--{parameter.replace('_', '-')} must not be empty")

    def gpu(self, task, accelerator_type, accelerator_count, cpus, memory):
        from kfp import kubernetes

        task.register_pipeline_channels([accelerator_count, cpus, memory])
        task.set_accelerator_type(KUBERNETES_GPU_RESOURCE).set_accelerator_limit(accelerator_count)
        task.set_cpu_limit(cpus).set_memory_limit(memory)
        # kfp-kubernetes takes a node selector from a pipeline parameter only as a whole JSON object, not a
        # label value: the GPU type is compiled in, and check-parameters refuses a run that asks for another.
        kubernetes.add_node_selector(task, self.gpu_node_label, self._gpu_type(accelerator_type))
        kubernetes.add_toleration(task, key=KUBERNETES_GPU_RESOURCE, operator="Exists", effect="NoSchedule")
        return task

    def _gpu_type(self, accelerator_type) -> str:
        name = getattr(accelerator_type, "name", None)
        if name not in self.gpu_types:
            raise UserError(f"the kfp target places GPU tasks by the pipeline parameters {', '.join(self.gpu_types)}; "
                            f"a task asked for GPUs by {accelerator_type!r}")
        return self.gpu_types[name]

    def secrets(self, task):
        """The token as ``HF_TOKEN`` (where components/common/secrets.py looks when no Secret Manager name is
        given). Optional: public models need no secret."""
        from kfp import kubernetes

        from components.common.secrets import HF_TOKEN_ENV

        return kubernetes.use_secret_as_env(task, self.hf_token_secret, {HF_TOKEN_SECRET_KEY: HF_TOKEN_ENV},
                                            optional=True)

    def volume(self, task):
        """The persistent volume claim at VOLUME_PATH: task outputs reach the bucket only when a task succeeds."""
        from kfp import kubernetes

        return kubernetes.mount_pvc(task, pvc_name=self.volume_claim, mount_path=VOLUME_PATH)

    def check_inputs(self) -> dict[str, Any]:
        return {"target": self.name, "kfp_gpu_types": dict(self.gpu_types), "kfp_volume_path": VOLUME_PATH}

    def parameter_defaults(self) -> dict[str, Any]:
        return {
            **self.gpu_types,
            # KFP sets only limits, so Kubernetes requests as much: below an a2-highgpu-1g node's allocatable.
            "gpu_task_cpus": "8",
            "gpu_task_memory": "60G",
            "registry_uri": VOLUME_PATH + "/registry",
            # Deploying is Vertex-only (refused here): no Vertex machine or GPU names in the KFP template.
            "deploy_machine_type": "",
            "deploy_accelerator_type": "",
            "deploy_accelerator_count": 0,
        }


TargetSettings = VertexTarget | LocalTarget | KfpTarget


def target_settings(target: str | TargetSettings) -> TargetSettings:
    """The settings of a target given by name (its defaults) or already built (e.g. ``KfpTarget(...)``)."""
    if not isinstance(target, str):
        return target
    if target not in TARGETS:
        raise choices_error("target", target, TARGETS)
    return {settings.name: settings for settings in (VertexTarget, KfpTarget, LocalTarget)}[target]()


def check_defaults(settings: TargetSettings, defaults: dict[str, Any]) -> None:
    """Refuse, at compile time, compiled defaults the target cannot run (the check-parameters task's rules)."""
    if settings.name != "kfp":
        return
    check_kfp_parameters(defaults, settings.gpu_types, VOLUME_PATH)
