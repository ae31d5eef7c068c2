"""Upload a compiled pipeline to an Artifact Registry KFP repository, so runs can start from the Vertex console.

    python containers/upload_template.py --template pipeline.yaml \\
        --host https://us-central1-kfp.pkg.dev/PROJECT/REPO --tag latest --tag commit-abc123 \\
        --url-file template_url.txt

Prints the package, the version (``sha256:...``) and the template URL by version: Vertex runs that URL
(``PipelineJob(template_path=...)``); a URL by tag can break (googleapis/python-aiplatform#2181).
Credentials are Application Default Credentials (the Cloud Build service account in CI).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from components.common.errors import UserError, cli_main

# Artifact Registry tags: lower-case letters, digits and '-' (a commit SHA alone may start with a digit, so
# CI prefixes it); a tag may not look like a version.
_TAG = re.compile(r"^[a-z][a-z0-9-]{0,127}$")
_HOST = re.compile(r"^https?://[^/\s]+(/[^\s]*)?$")


def upload_template(template: str | Path, host: str, tags: list[str], auth=None) -> dict[str, str]:
    """Upload ``template`` to the KFP repository at ``host``; returns package, version and template URL."""
    template = Path(template)
    if not template.is_file():
        raise UserError(f"--template {template}: no such file (compile the pipeline first)")
    if not _HOST.match(host):
        raise UserError(f"--host {host!r} is not a URL like https://REGION-kfp.pkg.dev/PROJECT/REPO")
    for tag in tags:
        if not _TAG.match(tag):
            raise UserError(f"--tag {tag!r}: tags are lower-case letters, digits and '-', starting with a letter")

    from kfp.registry import RegistryClient  # imported here: the CLI's --help needs no kfp

    client = RegistryClient(host=host, auth=auth)
    package, version = client.upload_pipeline(file_name=str(template), tags=tags or None)
    return {
        "package": package,
        "version": version,
        "template_url": f"{host.rstrip('/')}/{package}/{version}",
    }


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python containers/upload_template.py", description=__doc__.split("\n")[0])
    parser.add_argument("--template", required=True, help="compiled pipeline YAML")
    parser.add_argument("--host", required=True, help="https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY")
    parser.add_argument("--tag", action="append", default=[], help="tag for this version (repeatable)")
    parser.add_argument("--url-file", help="also write the template URL (by version) to this file")
    args = parser.parse_args(argv)
    result = upload_template(args.template, args.host, args.tag)
    print(f"uploaded {result['package']} {result['version']} tags={','.join(args.tag) or '-'}")
    print(f"template: {result['template_url']}")
    if args.url_file:
        Path(args.url_file).write_text(result["template_url"] + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
