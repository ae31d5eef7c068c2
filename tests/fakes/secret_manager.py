"""A loopback stand-in for Secret Manager's REST ``versions.access`` call."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from fakes.loopback import LoopbackServer


class FakeSecretManager(LoopbackServer):
    """Serves ``GET /v1/projects/P/secrets/S/versions/V:access`` for the secrets given (name -> value)."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.accessed: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.removeprefix("/v1/").removesuffix(":access")
                fake.accessed.append(name)
                if name.endswith("/versions/latest"):
                    name = name.removesuffix("/versions/latest")
                if name in fake.secrets:
                    status = 200
                    payload = {"name": name, "payload": {"data": base64.b64encode(fake.secrets[name].encode()).decode()}}
                else:
                    status = 404
                    payload = {"error": {"code": 404, "message": f"Secret [{name}] not found", "status": "NOT_FOUND"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)
