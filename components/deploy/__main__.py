"""CLI: ``python -m components.deploy deploy REGISTERED --endpoint-name E ...`` and
``python -m components.deploy smoke-test DEPLOYMENT TEST_DATA --output-dir OUT --recipe R``; both print JSON."""

from __future__ import annotations

import argparse
import json
import logging

from components.common.artifacts import write_document
from components.common.errors import cli_main
from components.deploy.core import DeploymentSpec, deploy_model
from components.deploy.smoke_test import smoke_test


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.deploy",
        description="Deploy a registered model version to a named endpoint (Vertex AI, or a folder endpoint next "
        "to a file registry), then smoke-test it through the endpoint with the OpenAI chat-completions API.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = DeploymentSpec(endpoint_name="")

    deploy = commands.add_parser("deploy", help="deploy the registered version; prints deployment.json")
    deploy.add_argument("registered_model", help="register's registration.json, or the folder holding it")
    deploy.add_argument("--endpoint-name", required=True, help="endpoint display name (created when missing)")
    deploy.add_argument("--machine-type", default=defaults.machine_type)
    deploy.add_argument("--accelerator-type", default=defaults.accelerator_type, help="'' for none")
    deploy.add_argument("--accelerator-count", type=int, default=defaults.accelerator_count)
    deploy.add_argument("--min-replica-count", type=int, default=defaults.min_replica_count)
    deploy.add_argument("--max-replica-count", type=int, default=defaults.max_replica_count)
    deploy.add_argument("--traffic-percentage", type=int, default=defaults.traffic_percentage,
                        help="share of the endpoint's traffic for the new version (100: all; less: a canary)")
    deploy.add_argument("--output", help="also write deployment.json here")
    deploy.add_argument("--api-endpoint", default=None, help="Vertex API endpoint (private/regional)")

    smoke = commands.add_parser("smoke-test", help="send test prompts through the endpoint; fail and roll back "
                                "when it errors or answers out of format")
    smoke.add_argument("deployment", help="deploy's deployment.json, or the folder holding it")
    smoke.add_argument("test_data", help="data prep's test.jsonl, or its output folder")
    smoke.add_argument("--output-dir", required=True, help="folder for smoke_test.json (and the local server's log)")
    smoke.add_argument("--recipe", required=True, help="recipe name or path: decoding settings and serving flags")
    smoke.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    smoke.add_argument("--prompts", type=int, default=20, help="how many test prompts to send (default 20)")
    smoke.add_argument("--min-format-rate", type=float, default=0.9, help="fail below this format rate")
    smoke.add_argument("--undeploy-after", action="store_true", help="take the new version off the endpoint after")
    smoke.add_argument("--api-endpoint", default=None, help="Vertex API endpoint (private/regional)")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "deploy":
        spec = DeploymentSpec(
            endpoint_name=args.endpoint_name, machine_type=args.machine_type, accelerator_type=args.accelerator_type,
            accelerator_count=args.accelerator_count, min_replica_count=args.min_replica_count,
            max_replica_count=args.max_replica_count, traffic_percentage=args.traffic_percentage,
        )
        deployment = deploy_model(args.registered_model, spec, api_endpoint=args.api_endpoint)
        if args.output:
            write_document(args.output, deployment)
        result = deployment.model_dump(mode="json")
    else:
        result = smoke_test(args.deployment, args.test_data, args.output_dir, recipe=args.recipe,
                            overrides=args.overrides, prompts=args.prompts, min_format_rate=args.min_format_rate,
                            undeploy_after=args.undeploy_after, api_endpoint=args.api_endpoint)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
