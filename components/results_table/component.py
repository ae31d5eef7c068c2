"""KFP wrappers of the results-table step (no @dsl.component here: images are bound in pipelines/).

``model_result_component`` runs once per model inside the pipeline's ``dsl.ParallelFor``;
``results_table_component`` runs once after it, on ``dsl.Collected`` of their ``model_result`` outputs.
"""

# No `from __future__ import annotations`: KFP reads these signatures' real types.
from typing import List

from kfp.dsl import HTML, Artifact, Input, Markdown, Output


def model_result_component(
    name: str,
    base_model: str,
    recipe: str,
    baseline_evaluation: Input[Artifact],
    tuned_evaluation: Input[Artifact],
    comparison: Input[Artifact],
    registered: str,
    model_result: Output[Artifact],
):
    """One model's row of the results table (model_result.json): both evaluations, the comparison, the registration.

    name: the model entry's name, unique in the run. registered: register's resource name (Vertex) or folder
    (file registry), or "" when the gate failed and nothing was registered.
    """
    from components.common.errors import exit_on_user_error
    from components.results_table.core import collect_model_result

    with exit_on_user_error():
        result = collect_model_result(name, base_model, recipe, baseline_evaluation.path, tuned_evaluation.path,
                                      comparison.path, registered, model_result.path)
    model_result.metadata.update(
        {"name": result.name, "baseline_accuracy": result.baseline.strict.accuracy,
         "tuned_accuracy": result.tuned.strict.accuracy, "delta": result.delta, "p_value": result.p_value,
         "passes_gate": result.passes_gate, "registered": result.registered or ""}
    )


def results_table_component(
    model_results: Input[List[Artifact]],
    table: Output[Markdown],
    table_html: Output[HTML],
    table_json: Output[Artifact],
    planned_models: list = [],  # noqa: B006 (plan-models' output: the rows' order)
):
    """The run's results table, one row per model in the order plan-models listed them: Markdown and HTML for
    the Vertex UI, JSON (table.json) for programs."""
    import shutil
    import tempfile
    from pathlib import Path

    from components.common.artifacts import ModelSummary
    from components.common.errors import exit_on_user_error
    from components.results_table.core import TABLE_HTML, TABLE_JSON, TABLE_MARKDOWN, write_results_table

    with tempfile.TemporaryDirectory() as workdir:
        with exit_on_user_error():
            result = write_results_table([artifact.path for artifact in model_results], workdir,
                                         order=[model["name"] for model in planned_models])
        for source, target in ((TABLE_MARKDOWN, table.path), (TABLE_HTML, table_html.path),
                               (TABLE_JSON, table_json.path)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(workdir) / source, target)
    # The run summary (the exit task, which may take no inputs) reads each model's row from here.
    table_json.metadata["models"] = [ModelSummary.from_result(model).model_dump(mode="json") for model in result.models]
