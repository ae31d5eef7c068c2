"""CLI: ``python -m components.register MODEL_DIR COMPARISON REGISTRY --model-name ...``; prints the result as JSON."""

from __future__ import annotations

import argparse
import json
import logging

from components.common.errors import cli_main
from components.register.core import DEFAULT_VLLM_IMAGE, SERVING_MODES, register_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.register",
        description="Register a tuned model as a new version: in a local folder registry, or in the Vertex AI "
        "Model Registry (registry vertex://projects/P/locations/L). A retry with the same --pipeline-run "
        "returns the version that run registered.",
    )
    parser.add_argument("model_dir", help="adapter or merged model directory (or grpo_train's output holding adapter/ and merged/)")
    parser.add_argument("comparison", help="compare's comparison.json, or the directory holding it")
    parser.add_argument("registry_uri", help="a local folder, or vertex://projects/PROJECT/locations/REGION")
    parser.add_argument("--model-name", required=True, help="registered model (display) name")
    parser.add_argument("--base-model", default="google/medgemma-4b-it")
    parser.add_argument("--recipe", required=True, help="recipe name or path (a label; its serving section sets vLLM's flags)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="recipe override, repeatable (e.g. serving.max_model_len=8192)")
    parser.add_argument("--data-fingerprint", default="", help="data prep's fingerprint (becomes a label)")
    parser.add_argument("--pipeline-run", required=True, help="pipeline run name; makes retries idempotent")
    parser.add_argument("--serving-mode", choices=SERVING_MODES, default="merged",
                        help="merged (default: what Model Garden's vLLM container serves correctly) or adapter")
    gate = parser.add_mutually_exclusive_group()
    gate.add_argument("--passed-gate", dest="passed_gate", action="store_true", default=None,
                      help="move 'champion' to the new version (default: comparison.json's passes_gate)")
    gate.add_argument("--failed-gate", dest="passed_gate", action="store_false")
    parser.add_argument("--predictions", default=None,
                        help="the tuned model's evaluate output (folder or predictions.jsonl): stored with the version "
                        "and tested against the current champion's before 'champion' moves")
    parser.add_argument("--serving-image", default=DEFAULT_VLLM_IMAGE, help="vLLM serving container image")
    parser.add_argument("--staging-uri", default=None, help="gs:// folder for local model files (Vertex only)")
    parser.add_argument("--api-endpoint", default=None, help="Vertex API endpoint (private/regional)")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = register_model(
        args.model_dir,
        args.comparison,
        args.registry_uri,
        model_name=args.model_name,
        base_model=args.base_model,
        recipe=args.recipe,
        data_fingerprint=args.data_fingerprint,
        pipeline_run=args.pipeline_run,
        serving_mode=args.serving_mode,
        recipe_overrides=args.overrides,
        passed_gate=args.passed_gate,
        predictions_path=args.predictions,
        serving_image=args.serving_image,
        staging_uri=args.staging_uri,
        api_endpoint=args.api_endpoint,
    )
    print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
