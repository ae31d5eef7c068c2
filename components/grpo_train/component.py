"""KFP wrapper of the GRPO training step (no @dsl.component here: images are bound in pipelines/)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output


def grpo_train_component(
    prepared_data: Input[Dataset],
    tuned_model: Output[Model],
    training_metrics: Output[Metrics],
    recipe: str = "medgemma-4b",
    model_id: str = "google/medgemma-4b-it",
    recipe_settings: list = [],  # noqa: B006 (KFP needs a literal default)
    serving_mode: str = "merged",
    hf_token_secret: str = "",
    completion_sample_size: int = 0,
    checkpoint_root: str = "",
    pipeline_run: str = "",
) -> str:
    """GRPO + LoRA training; returns ``tuned_model``'s URI. ``tuned_model`` holds ``adapter/`` (and ``merged/`` bf16 weights when
    ``serving_mode`` is ``merged``, the form the register step then uploads).

    Checkpoints live in ``tuned_model`` (on Vertex a /gcs/ path under the pipeline root) or, when
    ``checkpoint_root`` is set, in ``checkpoint_root/<pipeline_run>/<digest of this task's inputs>`` (self-hosted
    KFP: a mounted volume, since outputs are uploaded only when a task succeeds); either way a restarted task
    resumes from the newest complete one. ``recipe_settings``: recipe ``section.field=value`` strings.
    ``hf_token_secret``: a Secret Manager resource name, never a token.
    """
    import logging
    import os

    from components.common.errors import exit_on_user_error
    from components.grpo_train.checkpoints import run_checkpoint_dir
    from components.grpo_train.job import TrainingJob
    from components.grpo_train.launch import record_outcome, train_on_this_machine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with exit_on_user_error():
        checkpoint_dir = run_checkpoint_dir(checkpoint_root, pipeline_run, prepared_data.path, model_id, recipe,
                                            *recipe_settings, serving_mode) if checkpoint_root else ""
        job = TrainingJob.build(
            recipe, prepared_data.path, tuned_model.path, overrides=list(recipe_settings), model=model_id or None,
            merge=serving_mode == "merged", hf_token_secret=hf_token_secret,
            completion_sample_size=completion_sample_size,
            tensorboard_dir=os.environ.get("AIP_TENSORBOARD_LOG_DIR", ""),  # Vertex's, when the run has a TensorBoard
            checkpoint_dir=checkpoint_dir,
        )
        # Every GPU the task was given: torchrun with one process per GPU when there are several.
        outcome = train_on_this_machine(job)
    record_outcome(tuned_model, training_metrics, outcome, job)
    return tuned_model.uri


def grpo_train_multinode_component(
    prepared_data: Input[Dataset],
    tuned_model: Output[Model],
    training_metrics: Output[Metrics],
    trainer_image: str,
    nodes: int,
    accelerator_type: str = "NVIDIA_H100_80GB",
    accelerator_count: int = 8,
    machine_type: str = "",
    recipe: str = "medgemma-4b",
    model_id: str = "google/medgemma-4b-it",
    recipe_settings: list = [],  # noqa: B006 (KFP needs a literal default)
    serving_mode: str = "merged",
    hf_token_secret: str = "",
    completion_sample_size: int = 0,
    pipeline_run: str = "",
    service_account: str = "",
    project: str = "",
    location: str = "",
    api_endpoint: str = "",
    spot: bool = False,
    encryption_key: str = "",
    network: str = "",
    tensorboard: str = "",
) -> str:
    """GRPO + LoRA training as a Vertex AI custom job over ``nodes`` VMs (one or more) of ``accelerator_count``
    GPUs each; same outputs as the one-VM step (and returns ``tuned_model``'s URI). This task (no GPU) submits the
    job, waits, and records the result.

    The replicas run ``trainer_image`` and meet through Vertex's CLUSTER_SPEC; they read ``prepared_data`` and
    write ``tuned_model`` through Cloud Storage FUSE, so a retried task's job resumes from the newest complete
    checkpoint. That resume is what makes ``spot`` (Spot VMs, Vertex's SPOT scheduling strategy) safe, on one
    node as on several: a pipeline task itself cannot run on Spot, a custom job can. ``machine_type``: empty
    picks the VM that carries that many GPUs of that type. ``encryption_key`` (CMEK), ``network``,
    ``service_account`` and ``tensorboard`` (a TensorBoard instance's resource name; needs ``service_account``)
    go to the custom job; empty leaves Vertex's default. ``project``/``location``: the pipeline passes Vertex's
    placeholders for its own.
    """
    import logging

    from components.common.errors import exit_on_user_error
    from components.grpo_train.job import TrainingJob
    from components.grpo_train.launch import record_outcome
    from components.grpo_train.multinode import CustomJobSettings, job_display_name, train_on_nodes

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with exit_on_user_error():
        job = TrainingJob.build(
            recipe, prepared_data.path, tuned_model.path, overrides=list(recipe_settings), model=model_id or None,
            merge=serving_mode == "merged", hf_token_secret=hf_token_secret,
            completion_sample_size=completion_sample_size,
        )
        settings = CustomJobSettings(
            nodes=nodes, image=trainer_image, accelerator_type=accelerator_type, accelerator_count=accelerator_count,
            machine_type=machine_type, project=project, location=location, display_name=job_display_name(pipeline_run),
            service_account=service_account, network=network, encryption_key=encryption_key, tensorboard=tensorboard,
            spot=spot,
        )
        outcome = train_on_nodes(job, settings, api_endpoint=api_endpoint or None)
    record_outcome(tuned_model, training_metrics, outcome, job)
    return tuned_model.uri


def tuned_model_from_uri(model_uri: str, tuned_model: Output[Model]):
    """The model a training branch wrote, as one ``Model`` artifact for the later steps: its URI, nothing copied.

    The pipeline trains on one VM or on several (``dsl.If``/``dsl.Else``); each branch returns its model's URI
    and this joins them (kfp.local joins branches on parameters only, not on artifacts).
    """
    tuned_model.uri = model_uri
