"""The ``medgemma-grpo`` pipeline: prepare -> baseline eval -> GRPO -> tuned eval -> compare -> register
[-> deploy -> smoke test].

Images are bound when the pipeline is built (``build_pipeline``), from compile-time flags: nothing here
reads the environment.
"""


# No `from __future__ import annotations` here: KFP reads the pipeline signature's real types.
from dataclasses import dataclass

from kfp import dsl

from components.compare.component import compare_evaluations_component
from components.data_prep.component import prepare_medqa_component
from components.deploy.component import deploy_model_component, smoke_test_component
from components.evaluate.component import evaluate_model_component
from components.grpo_train.component import grpo_train_component, grpo_train_multinode_component, tuned_model_from_uri
from components.register.component import register_model

PIPELINE_NAME = "medgemma-grpo"


@dataclass(frozen=True)
class Images:
    """``base``: slim image (data prep, compare, register); ``trainer``: CUDA image (training, evaluation)."""

    base: str
    trainer: str


DEFAULT_IMAGES = Images(
    base="us-docker.pkg.dev/YOUR_PROJECT/medgemma-grpo/base:latest",
    trainer="us-docker.pkg.dev/YOUR_PROJECT/medgemma-grpo/trainer:latest",
)


def build_pipeline(images: Images = DEFAULT_IMAGES):
    """The pipeline function with each step bound to its image."""

    def on(image: str, func):
        # The images hold this package and kfp: nothing is pip-installed when a task starts.
        return dsl.component(func, base_image=image, install_kfp_package=False)

    prepare = on(images.base, prepare_medqa_component)
    evaluate = on(images.trainer, evaluate_model_component)
    train = on(images.trainer, grpo_train_component)
    train_on_nodes = on(images.base, grpo_train_multinode_component)  # submits a custom job; no GPU itself
    join_branches = on(images.base, tuned_model_from_uri)
    compare = on(images.base, compare_evaluations_component)
    register = on(images.base, register_model)
    deploy = on(images.base, deploy_model_component)
    smoke_test = on(images.base, smoke_test_component)

    def on_gpu(task, accelerator_type, accelerator_count, cpu_limit, memory_limit):
        # KFP 2.17's set_*_limit do not record their pipeline parameters as task inputs, so inside a dsl.If
        # the sub-DAG would not receive them: register them explicitly.
        task.register_pipeline_channels([accelerator_type, accelerator_count, cpu_limit, memory_limit])
        return (task.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
                .set_cpu_limit(cpu_limit).set_memory_limit(memory_limit))

    @dsl.pipeline(name=PIPELINE_NAME, description="GRPO + LoRA tuning of MedGemma on MedQA, evaluated and gated.")
    def medgemma_grpo(
        base_model: str = "google/medgemma-4b-it",
        data_source: str = "openlifescienceai/medqa",
        recipe: str = "medgemma-4b",
        recipe_overrides: list = [],  # noqa: B006 ("section.field=value" strings)
        train_accelerator_type: str = "NVIDIA_TESLA_A100",
        train_accelerator_count: int = 1,
        train_nodes: int = 1,
        train_machine_type: str = "",
        eval_accelerator_type: str = "NVIDIA_TESLA_A100",
        eval_accelerator_count: int = 1,
        cpu_limit: str = "12",
        memory_limit: str = "85G",
        eval_limit: int = 0,
        gate_margin: float = 0.0,
        gate_alpha: float = 0.05,
        registry_uri: str = "vertex://",
        model_display_name: str = "medgemma-grpo",
        serving_mode: str = "merged",
        hf_token_secret: str = "",
        deploy_endpoint: str = "",  # empty: no deploy
        deploy_machine_type: str = "g2-standard-12",
        deploy_accelerator_type: str = "NVIDIA_L4",
        deploy_accelerator_count: int = 1,
        deploy_min_replicas: int = 1,
        deploy_max_replicas: int = 1,
        deploy_traffic_percentage: int = 100,
        smoke_test_prompts: int = 20,
        smoke_test_min_format_rate: float = 0.9,
        undeploy_after_smoke_test: bool = False,
    ):
        data = prepare(source=data_source, recipe=recipe, model_id=base_model, hf_token_secret=hf_token_secret)
        baseline = on_gpu(evaluate(test_data=data.outputs["prepared_data"], model_id=base_model, recipe=recipe,
                                   overrides=recipe_overrides, limit=eval_limit, hf_token_secret=hf_token_secret),
                          eval_accelerator_type, eval_accelerator_count, cpu_limit, memory_limit).set_display_name("baseline-eval")
        with dsl.If(train_nodes == 1, name="train-on-one-vm"):  # all its GPUs, data parallel when several
            one_vm = on_gpu(train(prepared_data=data.outputs["prepared_data"], recipe=recipe, model_id=base_model,
                                  overrides=recipe_overrides, serving_mode=serving_mode,
                                  hf_token_secret=hf_token_secret),
                            train_accelerator_type, train_accelerator_count, cpu_limit, memory_limit).set_retry(5)
        with dsl.Else(name="train-on-several-vms"):  # a Vertex custom job with train_nodes replicas
            several_vms = train_on_nodes(
                prepared_data=data.outputs["prepared_data"], trainer_image=images.trainer, nodes=train_nodes,
                accelerator_type=train_accelerator_type, accelerator_count=train_accelerator_count,
                machine_type=train_machine_type, recipe=recipe, model_id=base_model, overrides=recipe_overrides,
                serving_mode=serving_mode, hf_token_secret=hf_token_secret,
                pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER).set_retry(5)
        # The branch that ran hands on its model by URI (kfp.local joins branches on parameters, not artifacts).
        tuned_model = join_branches(model_uri=dsl.OneOf(one_vm.outputs["Output"],
                                                        several_vms.outputs["Output"])).outputs["tuned_model"]
        tuned = on_gpu(evaluate(test_data=data.outputs["prepared_data"], model_id=base_model,
                                adapter=tuned_model, recipe=recipe, overrides=recipe_overrides,
                                limit=eval_limit, hf_token_secret=hf_token_secret),
                       eval_accelerator_type, eval_accelerator_count, cpu_limit, memory_limit).set_display_name("tuned-eval")
        gate = compare(baseline_evaluation=baseline.outputs["evaluation"], tuned_evaluation=tuned.outputs["evaluation"],
                       margin=gate_margin, alpha=gate_alpha)
        with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not a Python test)
            registered = register(model=tuned_model, comparison=gate.outputs["comparison"],
                                  registry_uri=registry_uri, model_name=model_display_name, recipe=recipe,
                                  overrides=recipe_overrides, base_model=base_model,
                                  pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, serving_mode=serving_mode)
            with dsl.If(deploy_endpoint != "", name="deploy"):
                deployed = deploy(registered_model=registered.outputs["registered_model"],
                                  endpoint_name=deploy_endpoint, machine_type=deploy_machine_type,
                                  accelerator_type=deploy_accelerator_type,
                                  accelerator_count=deploy_accelerator_count, min_replica_count=deploy_min_replicas,
                                  max_replica_count=deploy_max_replicas, traffic_percentage=deploy_traffic_percentage)
                smoke_test(deployment=deployed.outputs["deployment"], test_data=data.outputs["prepared_data"],
                           recipe=recipe, overrides=recipe_overrides, prompts=smoke_test_prompts,
                           min_format_rate=smoke_test_min_format_rate, undeploy_after=undeploy_after_smoke_test)

    return medgemma_grpo
