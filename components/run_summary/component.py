"""KFP wrapper of the run summary, the pipeline's exit task (no @dsl.component here: images are bound in pipelines/)."""

from kfp.dsl import Artifact, Output, PipelineTaskFinalStatus


def run_summary_component(status: PipelineTaskFinalStatus, summary: Output[Artifact]):
    """Write and log how the run ended: state, failed task, accuracies with CIs, p-value, registered model.

    ``summary`` is a folder with summary.json and summary.md; its metadata holds the same values.
    """
    import logging

    from components.run_summary.core import summarize_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary.metadata.update(summarize_run(
        status.state, status.pipeline_job_resource_name, summary.path, error_message=status.error_message,
    ).model_dump(mode="json"))
