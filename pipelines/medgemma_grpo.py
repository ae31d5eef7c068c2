"""The ``medgemma-grpo`` pipeline: check -> plan models -> for each model (in parallel): prepare -> baseline eval
-> GRPO -> tuned eval -> compare -> register [-> deploy -> smoke test] -> results table, with a run summary at
the end, however the run ends.

Images and the target (Vertex AI, self-hosted KFP or kfp.local: pipelines/targets.py) are bound when the pipeline is
built (``build_pipeline``), from compile-time flags: nothing here reads the environment.
"""


# No `from __future__ import annotations` here: KFP reads the pipeline signature's real types.
from dataclasses import dataclass

from kfp import dsl

from components.compare.component import compare_evaluations_component
from components.data_prep.component import prepare_medqa_component
from components.deploy.component import deploy_model_component, smoke_test_component
from components.evaluate.component import evaluate_model_component
from components.grpo_train.component import grpo_train_component, grpo_train_multinode_component, tuned_model_from_uri
from components.preflight.component import check_parameters_component, model_entry_component, plan_models_component
from components.register.component import not_registered, register_model
from components.results_table.component import model_result_component, results_table_component
from components.run_summary.component import run_summary_component
from pipelines import targets

PIPELINE_NAME = "medgemma-grpo"


@dataclass(frozen=True)
class Images:
    """``base``: slim image (checks, data prep, compare, register, summary); ``trainer``: CUDA image (training,
    evaluation)."""

    base: str
    trainer: str


DEFAULT_IMAGES = Images(
    base="us-docker.pkg.dev/YOUR_PROJECT/medgemma-grpo/base:latest",
    trainer="us-docker.pkg.dev/YOUR_PROJECT/medgemma-grpo/trainer:latest",
)


def build_pipeline(images: Images = DEFAULT_IMAGES, *, target: targets.Target | targets.TargetSettings = "vertex"):
    """The pipeline function with each step bound to its image, and the platform settings of ``target`` (vertex,
    kfp, local, or settings built in pipelines/targets.py) on the tasks that need them: the graph is the same.
    """
    target_settings = targets.target_settings(target)

    def step(name: str, image: str, func):
        # The images hold this package and kfp: nothing is pip-installed when a task starts.
        component = dsl.component(func, base_image=image, install_kfp_package=False)
        component.component_spec.name = name  # the task's name in the Vertex console and kfp.local's run folder
        return component

    check = step("check-parameters", images.base, check_parameters_component)
    plan = step("plan-models", images.base, plan_models_component)
    model_entry = step("model-entry", images.base, model_entry_component)
    prepare = step("prepare-data", images.base, prepare_medqa_component)
    baseline_eval = step("baseline-eval", images.trainer, evaluate_model_component)
    train = step("train", images.trainer, grpo_train_component)
    train_custom_job = step("train-custom-job", images.base, grpo_train_multinode_component)  # submits; no GPU itself
    tuned_model_of = step("tuned-model", images.base, tuned_model_from_uri)
    tuned_eval = step("tuned-eval", images.trainer, evaluate_model_component)
    compare = step("compare", images.base, compare_evaluations_component)
    register = step("register", images.base, register_model)
    skip_registration = step("not-registered", images.base, not_registered)
    deploy = step("deploy", images.base, deploy_model_component)
    smoke_test = step("smoke-test", images.base, smoke_test_component)
    model_result = step("model-result", images.base, model_result_component)
    results_table = step("results-table", images.base, results_table_component)
    run_summary = step("run-summary", images.base, run_summary_component)

    on_gpus, with_token, with_volume = target_settings.gpu, target_settings.secrets, target_settings.volume

    @dsl.pipeline(name=PIPELINE_NAME, description="GRPO + LoRA tuning of MedGemma on MedQA, evaluated and gated.")
    def medgemma_grpo(
        base_model: str = "google/medgemma-4b-it",
        data_source: str = "openlifescienceai/medqa",
        recipe: str = "medgemma-4b",
        recipe_settings: list = [],  # noqa: B006 (KFP needs a literal default)
        models: list = [],  # noqa: B006
        train_accelerator_type: str = "NVIDIA_TESLA_A100",
        train_accelerator_count: int = 1,
        train_nodes: int = 1,
        train_machine_type: str = "",
        train_on_spot: bool = False,
        eval_accelerator_type: str = "NVIDIA_TESLA_A100",
        eval_accelerator_count: int = 1,
        eval_question_limit: int = 0,
        gpu_task_cpus: str = "12",
        gpu_task_memory: str = "85G",
        gate_margin: float = 0.0,
        gate_alpha: float = 0.05,
        registry_uri: str = "vertex://",
        model_display_name: str = "medgemma-grpo",
        registered_weights: str = "merged",
        hf_token_secret: str = "",
        encryption_key: str = "",
        network: str = "",
        service_account: str = "",
        tensorboard: str = "",
        deploy_endpoint: str = "",
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
        """GRPO + LoRA tuning of MedGemma on MedQA, evaluated and gated.

        Args:
            base_model: Hugging Face id (or gs:// folder) of the model to tune.
            data_source: MedQA as a Hugging Face dataset id, a gs:// prefix or a folder of train/dev/test files.
            recipe: Training and evaluation settings by name (components/recipes/), e.g. medgemma-4b-h100.
            recipe_settings: Changes to the recipe, as "section.field=value" strings, e.g. ["train.max_steps=200"].
            models: Several models to tune side by side, each {"name", "base_model", "recipe"[, "recipe_settings"][, "model_display_name"]}; empty: the one model above (README: several models).
            train_accelerator_type: GPU type for training: on Vertex e.g. NVIDIA_TESLA_A100, on KFP the GPU nodes' label value.
            train_accelerator_count: GPUs per training VM (at least 1).
            train_nodes: Training VMs; more than 1 runs training as a Vertex custom job.
            train_machine_type: Machine type of a custom-job training VM; empty picks the one that carries those GPUs.
            train_on_spot: Train on Spot VMs (a custom job): cheaper, and a preempted run resumes from its last checkpoint.
            eval_accelerator_type: GPU type for the two evaluations.
            eval_accelerator_count: GPUs per evaluation (at least 1).
            eval_question_limit: Evaluate on the first N test questions only; 0 evaluates them all.
            gpu_task_cpus: CPUs of each one-VM GPU task (training, evaluations), e.g. "12".
            gpu_task_memory: Memory of each one-VM GPU task, e.g. "85G".
            gate_margin: Accuracy gain the tuned model needs over the baseline to be registered, and over the champion to replace it (0.02 = 2 points).
            gate_alpha: Significance the gain needs (p-value of the paired test below this).
            registry_uri: Where to register: vertex:// (this run's project and region), vertex://projects/P/locations/L, or a folder (KFP: on its volume).
            model_display_name: Registered model name; each run that passes the gate adds a version (with several models: <name>-<model's name>).
            registered_weights: What to register: merged (full weights, what the deploy step serves) or adapter (LoRA; not deployable: docs/vertex.md).
            hf_token_secret: Secret Manager name of the Hugging Face token (projects/P/secrets/S), never the token.
            encryption_key: Cloud KMS key (CMEK) for the training custom job and the registered model; empty: Google-managed.
            network: VPC for the training custom job (projects/NUMBER/global/networks/NAME); empty: none.
            service_account: Service account of the training custom job; empty: Vertex's Custom Code Service Agent.
            tensorboard: Vertex TensorBoard for the training custom job (projects/P/locations/L/tensorboards/ID; needs service_account); empty: none.
            deploy_endpoint: Endpoint to deploy the registered version to (created when missing; with several models, one per model: <endpoint>-<model's name>); empty: no deploy.
            deploy_machine_type: Machine type of the endpoint's replicas, e.g. g2-standard-12.
            deploy_accelerator_type: GPU type of the endpoint's replicas, e.g. NVIDIA_L4; empty: none.
            deploy_accelerator_count: GPUs per replica (0 with no GPU type).
            deploy_min_replicas: Fewest replicas the endpoint scales down to (at least 1).
            deploy_max_replicas: Most replicas the endpoint scales up to.
            deploy_traffic_percentage: Share of the endpoint's traffic for the new version: 100 all, less a canary.
            smoke_test_prompts: Test questions sent through the endpoint after the deploy.
            smoke_test_min_format_rate: Format rate below which the smoke test fails and rolls the traffic back.
            undeploy_after_smoke_test: Take the new version off the endpoint after the smoke test (saves GPU cost).
        """
        summary = run_summary()
        with dsl.ExitHandler(summary, name="medgemma-grpo-run"):
            checked = check(recipe=recipe, recipe_settings=recipe_settings, train_accelerator_type=train_accelerator_type,
                            train_accelerator_count=train_accelerator_count, train_nodes=train_nodes,
                            train_on_spot=train_on_spot, eval_accelerator_type=eval_accelerator_type,
                            eval_accelerator_count=eval_accelerator_count, eval_question_limit=eval_question_limit,
                            gate_margin=gate_margin, gate_alpha=gate_alpha, registry_uri=registry_uri,
                            model_display_name=model_display_name, registered_weights=registered_weights,
                            hf_token_secret=hf_token_secret, encryption_key=encryption_key, network=network,
                            service_account=service_account, tensorboard=tensorboard,
                            deploy_endpoint=deploy_endpoint, deploy_machine_type=deploy_machine_type,
                            deploy_accelerator_type=deploy_accelerator_type,
                            deploy_accelerator_count=deploy_accelerator_count,
                            deploy_min_replicas=deploy_min_replicas, deploy_max_replicas=deploy_max_replicas,
                            deploy_traffic_percentage=deploy_traffic_percentage,
                            smoke_test_prompts=smoke_test_prompts,
                            smoke_test_min_format_rate=smoke_test_min_format_rate, **target_settings.check_inputs())
            planned = plan(models=models, base_model=base_model, recipe=recipe, recipe_settings=recipe_settings,
                           model_display_name=model_display_name, deploy_endpoint=deploy_endpoint).after(checked)
            with dsl.ParallelFor(planned.output, name="each-model",
                                 parallelism=target_settings.model_parallelism) as planned_model:
                entry = model_entry(model=planned_model).outputs
                model_id, model_recipe, settings = entry["base_model"], entry["recipe"], entry["recipe_settings"]
                data = with_token(prepare(source=data_source, recipe=model_recipe, recipe_settings=settings,
                                          model_id=model_id, hf_token_secret=hf_token_secret))
                prepared = data.outputs["prepared_data"]
                baseline = on_gpus(with_token(baseline_eval(test_data=prepared, model_id=model_id, recipe=model_recipe,
                                                            recipe_settings=settings, limit=eval_question_limit,
                                                            hf_token_secret=hf_token_secret)),
                                   eval_accelerator_type, eval_accelerator_count, gpu_task_cpus, gpu_task_memory)
                with dsl.If(checked.output == "one-vm", name="train-on-one-vm"):  # its GPUs, data parallel when several
                    one_vm = train(prepared_data=prepared, recipe=model_recipe, model_id=model_id, recipe_settings=settings,
                                   serving_mode=registered_weights, hf_token_secret=hf_token_secret,
                                   checkpoint_root=target_settings.checkpoint_root,
                                   pipeline_run=target_settings.run_id)
                    on_gpus(with_volume(with_token(one_vm)), train_accelerator_type, train_accelerator_count,
                            gpu_task_cpus, gpu_task_memory).set_retry(5)
                with dsl.Else(name="train-as-custom-job"):  # train_nodes VMs, Spot or not
                    custom_job = train_custom_job(
                        prepared_data=prepared, trainer_image=images.trainer, nodes=train_nodes,
                        accelerator_type=train_accelerator_type, accelerator_count=train_accelerator_count,
                        machine_type=train_machine_type, spot=train_on_spot, recipe=model_recipe, model_id=model_id,
                        recipe_settings=settings, serving_mode=registered_weights, hf_token_secret=hf_token_secret,
                        encryption_key=encryption_key, network=network, service_account=service_account,
                        tensorboard=tensorboard, pipeline_run=target_settings.run_id,
                        project=target_settings.run_project, location=target_settings.run_location).set_retry(5)
                # The branch that ran hands on its model by URI (kfp.local joins branches on parameters, not artifacts).
                tuned_model = tuned_model_of(model_uri=dsl.OneOf(one_vm.outputs["Output"],
                                                                 custom_job.outputs["Output"])).outputs["tuned_model"]
                tuned = on_gpus(with_token(tuned_eval(test_data=prepared, model_id=model_id, adapter=tuned_model,
                                                      recipe=model_recipe, recipe_settings=settings,
                                                      limit=eval_question_limit, hf_token_secret=hf_token_secret)),
                                eval_accelerator_type, eval_accelerator_count, gpu_task_cpus, gpu_task_memory)
                gate = compare(baseline_evaluation=baseline.outputs["evaluation"],
                               tuned_evaluation=tuned.outputs["evaluation"], margin=gate_margin, alpha=gate_alpha)
                with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
                    registered = with_volume(register(
                        model=tuned_model, comparison=gate.outputs["comparison"],
                        tuned_evaluation=tuned.outputs["evaluation"], registry_uri=registry_uri,
                        model_name=entry["model_display_name"], recipe=model_recipe, recipe_settings=settings,
                        base_model=model_id, data_fingerprint=data.outputs["Output"],
                        pipeline_run=target_settings.run_id, serving_mode=registered_weights,
                        encryption_key=encryption_key, run_project=target_settings.run_project,
                        run_location=target_settings.run_location))
                    with dsl.If(deploy_endpoint != "", name="deploy-and-smoke-test"):
                        deployed = deploy(registered_model=registered.outputs["registered_model"],
                                          endpoint_name=entry["endpoint_name"], machine_type=deploy_machine_type,
                                          accelerator_type=deploy_accelerator_type,
                                          accelerator_count=deploy_accelerator_count,
                                          min_replica_count=deploy_min_replicas, max_replica_count=deploy_max_replicas,
                                          traffic_percentage=deploy_traffic_percentage)
                        smoke_test(deployment=deployed.outputs["deployment"], test_data=prepared, recipe=model_recipe,
                                   recipe_settings=settings, prompts=smoke_test_prompts,
                                   min_format_rate=smoke_test_min_format_rate, undeploy_after=undeploy_after_smoke_test)
                with dsl.Else(name="gate-failed"):
                    unregistered = skip_registration()
                result = model_result(name=entry["name"], base_model=model_id, recipe=model_recipe,
                                      baseline_evaluation=baseline.outputs["evaluation"],
                                      tuned_evaluation=tuned.outputs["evaluation"],
                                      comparison=gate.outputs["comparison"],
                                      registered=dsl.OneOf(registered.outputs["Output"], unregistered.output))
            results_table(model_results=dsl.Collected(result.outputs["model_result"]), planned_models=planned.output)

    return medgemma_grpo
