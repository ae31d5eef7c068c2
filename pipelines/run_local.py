"""python pipelines/run_local.py [--summary-json PATH] [--no-deploy]: run the whole pipeline on this machine's CPU.

The same pipeline Vertex runs, through kfp.local (SubprocessRunner, this Python environment), with the tiny
offline Gemma 3 model, the bundled synthetic demo data and the ``tiny-cpu`` recipe. Registration goes to a
file registry under the pipeline root; the registered model is deployed to a folder endpoint next to it and
smoke-tested through a real local server (``transformers serve``) unless ``--no-deploy``. Prints the results
table; ``--summary-json`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from components.common.errors import UserError, cli_main

log = logging.getLogger("run_local")
DEFAULT_WORKDIR = "local_outputs"
LOCAL_ENDPOINT = "medgemma-grpo-demo-endpoint"


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


def _find(run_dir: Path, task: str, name: str) -> Path | None:
    matches = sorted(run_dir.glob(f"{task}/{name}"))
    return matches[0] if matches else None


def collect_summary(run_dir: Path, wall_seconds: float) -> dict[str, Any]:
    """Results from the run's output folders (kfp.local lays them out as <run>/<task>/<output>)."""
    comparison_path = _find(run_dir, "compare-evaluations-component", "comparison")
    if comparison_path is None:
        raise UserError(f"the run under {run_dir} wrote no comparison (see the task logs above)")
    comparison = json.loads(comparison_path.read_text())
    registration_path = _find(run_dir, "register-model", "registered_model/registration.json")
    registration = json.loads(registration_path.read_text()) if registration_path else None
    smoke_path = _find(run_dir, "smoke-test-component", "report/smoke_test.json")
    smoke = json.loads(smoke_path.read_text()) if smoke_path else None
    baseline = json.loads((_find(run_dir, "evaluate-model-component", "evaluation") / "metrics.json").read_text())
    tuned = json.loads((_find(run_dir, "evaluate-model-component-2", "evaluation") / "metrics.json").read_text())
    return {
        "baseline_accuracy": comparison["baseline_accuracy"],
        "baseline_ci": [baseline["ci_low"], baseline["ci_high"]],
        "tuned_accuracy": comparison["tuned_accuracy"],
        "tuned_ci": [tuned["ci_low"], tuned["ci_high"]],
        "delta": comparison["delta"],
        "delta_ci": [comparison["delta_ci_low"], comparison["delta_ci_high"]],
        "p_value": comparison["p_value"],
        "n": comparison["n"],
        "passes_gate": comparison["passes_gate"],
        "registered": registration is not None,
        "registered_at": registration.get("resource_name") if registration else None,
        "registered_version": registration.get("version") if registration else None,
        "smoke_test": {key: smoke[key] for key in ("endpoint", "n", "format_rate", "accuracy", "latency_p50_s",
                                                   "latency_p95_s", "passed")} if smoke else None,
        "run_dir": str(run_dir),
        "wall_seconds": round(wall_seconds, 1),
    }


def format_table(summary: dict[str, Any]) -> str:
    def ci(bounds: list[float]) -> str:
        return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"

    where = f"{summary['registered_at']} (version {summary['registered_version']})" if summary["registered"] else "not registered (gate not passed)"
    smoke = summary.get("smoke_test")
    smoke_line = [f"smoke test        {smoke['n']} prompts via a local server: format rate {smoke['format_rate']:.2f}, "
                  f"accuracy {smoke['accuracy']:.2f}, latency p50 {smoke['latency_p50_s']:.2f} s, "
                  f"p95 {smoke['latency_p95_s']:.2f} s"] if smoke else []
    return "\n".join([
        f"{'':18}{'accuracy':>10}  95% CI",
        f"{'baseline':18}{summary['baseline_accuracy']:>10.3f}  {ci(summary['baseline_ci'])}",
        f"{'tuned (GRPO)':18}{summary['tuned_accuracy']:>10.3f}  {ci(summary['tuned_ci'])}",
        f"{'delta':18}{summary['delta']:>+10.3f}  {ci(summary['delta_ci'])}",
        f"McNemar p-value   {summary['p_value']:.2e}   (n = {summary['n']} paired questions)",
        f"registered        {where}",
        *smoke_line,
        f"wall time         {summary['wall_seconds']:.0f} s",
    ])


def run_local(workdir: str | Path = DEFAULT_WORKDIR, *, gate_alpha: float = 0.01, deploy: bool = True) -> dict[str, Any]:
    from kfp import local

    from components.demo_data import bundled_demo_dir
    from pipelines.medgemma_grpo import DEFAULT_IMAGES, build_pipeline

    started = time.monotonic()
    workdir = Path(workdir).resolve()
    pipeline_root = workdir / "pipeline_root"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    model_dir = tiny_model_dir(workdir)
    # This Python environment runs every task (no venv, no pip): it already holds the package.
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    before = set(pipeline_root.iterdir())
    build_pipeline(DEFAULT_IMAGES)(
        base_model=str(model_dir),
        data_source=str(bundled_demo_dir()),
        recipe="tiny-cpu",
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
    summary = run_local(args.workdir, gate_alpha=args.gate_alpha, deploy=args.deploy)
    print("\n" + format_table(summary))
    if args.summary_json:
        Path(args.summary_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
