"""A real local OpenAI-compatible server over a model folder: ``transformers serve`` in a child process.

It answers ``POST /v1/chat/completions`` with the model's own chat template, as vLLM does on Vertex, so the
smoke test's client is the same for both. Its log (request lines only, no text) goes to a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from components.common.errors import UserError
from components.deploy.chat import EndpointError

log = logging.getLogger(__name__)

SERVE_PACKAGES_MISSING = (
    "the local endpoint runs `transformers serve`, which needs transformers' serving packages (fastapi, uvicorn, "
    "openai): pip install -e '.[serve]', or run without the local deploy (run_local.py --no-deploy)"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_command(model_dir: str, port: int) -> list[str]:
    # Flags that transformers 5.24 (the lock's pin) has; it serves up to the model's own context length.
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", model_dir, "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]


@contextlib.contextmanager
def transformers_serve(model_dir: str, *, log_path: str | Path,
                       startup_timeout_s: float = 300.0) -> Iterator[str]:
    """Start ``transformers serve`` on ``model_dir``; yield its base URL once /health answers; stop it after."""
    import requests
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise UserError(SERVE_PACKAGES_MISSING)
    if not Path(model_dir, "config.json").is_file():
        raise UserError(f"model_uri: {model_dir!r} holds no config.json (the local server needs merged weights)")
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as server_log:
        # A session of its own, so stopping it also stops the model process it spawns.
        process = subprocess.Popen(serve_command(model_dir, port), stdout=server_log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise EndpointError(f"the local server (transformers serve) exited with code {process.returncode} "
                                f"before it was ready; its log: {log_path}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(base_url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > startup_timeout_s:
                raise EndpointError(f"the local server was not ready within {startup_timeout_s:.0f} s; "
                                    f"its log: {log_path}")
            time.sleep(0.5)
        log.info("local server ready at %s after %.1f s (model %s)", base_url, time.monotonic() - started, model_dir)
        yield base_url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
