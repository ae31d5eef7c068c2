"""A loopback stand-in for Secret Manager's REST ``versions.access`` call."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeSecretManager:
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

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeSecretManager:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
