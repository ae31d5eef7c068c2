"""python pipelines/run_local.py [--summary-json PATH] [--no-deploy]: run the whole pipeline on this machine's CPU.

The same pipeline Vertex runs, through kfp.local (SubprocessRunner, this Python environment), with the tiny
offline Gemma 3 model and the bundled synthetic demo data, for two models side by side (``LOCAL_MODELS``: the
``tiny-cpu`` recipe and ``tiny-cpu-rank4``, a smaller LoRA). Registration goes to a file registry under the
pipeline root; each registered model is deployed to a folder endpoint next to it and smoke-tested through a
real local server (``transformers serve``) unless ``--no-deploy``. Prints the results table and the run summary
the pipeline wrote (the same ones a Vertex run shows); ``--summary-json`` writes the summary as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from components.common.artifacts import RunSummary, read_document
from components.common.errors import UserError, cli_main

log = logging.getLogger("run_local")
DEFAULT_WORKDIR = "local_outputs"
LOCAL_ENDPOINT = "medgemma-grpo-demo-endpoint"
LOCAL_RECIPES = ("tiny-cpu", "tiny-cpu-rank4")


def tiny_model_dir(workdir: Path) -> Path:
    """The warm-started tiny model, built once per version of its code and the demo data (cached)."""
    from components.tiny_model.core import build_tiny_model, warm_start

    sources = [resources.files("components.tiny_model").joinpath("core.py"),
               resources.files("components.demo_data").joinpath("__init__.py")]
    key = hashlib.sha256(b"".join(s.read_bytes() for s in sources)).hexdigest()[:12]
    model_dir = workdir / f"tiny-gemma3-{key}"
    if (model_dir / "READY").is_file():
        log.info("tiny model: cached at %s", model_dir)
        return model_dir
    log.info("tiny model: building and warm-starting (once) at %s", model_dir)
    build_tiny_model(model_dir)
    warm_start(model_dir)
    (model_dir / "READY").write_text("ok\n")
    return model_dir


def _newest_run_dir(pipeline_root: Path, before: set[Path]) -> Path:
    from pipelines.medgemma_grpo import PIPELINE_NAME

    runs = [p for p in pipeline_root.glob(f"{PIPELINE_NAME}-*") if p.is_dir() and p not in before]
    if not runs:
        raise UserError(f"no pipeline run folder appeared under {pipeline_root}")
    return max(runs, key=lambda p: p.stat().st_mtime)


@dataclass(frozen=True)
class LocalRun:
    """The summary the pipeline's exit task wrote (the same one a Vertex run logs), the run folder, the wall time."""

    summary: RunSummary
    run_dir: Path
    wall_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {**self.summary.model_dump(mode="json"), "run_dir": str(self.run_dir),
                "wall_seconds": round(self.wall_seconds, 1)}

    def table(self) -> str:
        from components.run_summary.core import render_summary

        lines = [render_summary(self.summary), ""]
        table_dir = self.run_dir / "results-table"
        if (table_dir / "table").is_file():  # the Markdown and HTML artifacts the Vertex console renders
            lines.append(f"{'results table':18}{table_dir / 'table'} (Markdown), {table_dir / 'table_html'} (HTML)")
        return "\n".join([*lines, f"{'wall time':18}{self.wall_seconds:.0f} s"])


def collect_summary(run_dir: Path, wall_seconds: float) -> LocalRun:
    from components.run_summary.core import SUMMARY_FILE

    summary_file = run_dir / "run-summary" / "summary" / SUMMARY_FILE
    if not summary_file.is_file():
        raise UserError(f"the run under {run_dir} wrote no run summary (see the task logs above)")
    return LocalRun(read_document(RunSummary, summary_file), run_dir, wall_seconds)


def run_local(workdir: str | Path = DEFAULT_WORKDIR, *, gate_alpha: float = 0.01, deploy: bool = True) -> LocalRun:
    from kfp import local

    from components.demo_data import bundled_demo_dir
    from pipelines.medgemma_grpo import DEFAULT_IMAGES, build_pipeline

    started = time.monotonic()
    workdir = Path(workdir).resolve()
    pipeline_root = workdir / "pipeline_root"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    model_dir = tiny_model_dir(workdir)
    # This Python environment runs every task (no venv, no pip): it already holds the package. A failed run
    # is not raised here, so that its summary (written by the exit task) is still printed.
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=False)
    before = set(pipeline_root.iterdir())
    build_pipeline(DEFAULT_IMAGES, target="local")(
        models=[{"name": recipe, "base_model": str(model_dir), "recipe": recipe} for recipe in LOCAL_RECIPES],
        data_source=str(bundled_demo_dir()),
        registry_uri=str(pipeline_root / "registry"),
        model_display_name="medgemma-grpo-demo",
        gate_alpha=gate_alpha,
        deploy_endpoint=LOCAL_ENDPOINT if deploy else "",
    )
    return collect_summary(_newest_run_dir(pipeline_root, before), time.monotonic() - started)


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python pipelines/run_local.py", description=__doc__)
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"outputs and caches (default ./{DEFAULT_WORKDIR})")
    parser.add_argument("--summary-json", help="also write the results as JSON here")
    parser.add_argument("--gate-alpha", type=float, default=0.01, help="significance the gate requires (default 0.01)")
    parser.add_argument("--no-deploy", dest="deploy", action="store_false",
                        help="skip the deploy + smoke test through a local server (transformers serve)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run = run_local(args.workdir, gate_alpha=args.gate_alpha, deploy=args.deploy)
    print("\n" + run.table())
    if args.summary_json:
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps(run.to_json(), indent=2) + "\n")
    if run.summary.state != "SUCCEEDED":
        failed = f" in task {run.summary.failed_task}" if run.summary.failed_task else ""
        failed += f" of model {run.summary.failed_model}" if run.summary.failed_model else ""
        raise UserError(f"the run ended {run.summary.state}{failed}")


if __name__ == "__main__":
    raise SystemExit(main())
