"""gcp-storage-emulator (a real GCS JSON API server) on a free loopback port."""

from __future__ import annotations

from gcp_storage_emulator.server import create_server


class FakeGcs:
    """``with FakeGcs() as gcs:``; set ``STORAGE_EMULATOR_HOST=gcs.endpoint`` so google-cloud-storage uses it."""

    def __init__(self, default_bucket: str | None = None, project_number: str = "123456789012") -> None:
        self.project_number = project_number  # the owner the emulator reports for every bucket
        self._server = create_server(
            "127.0.0.1", 0, in_memory=True, default_bucket=default_bucket, project_number=project_number
        )

    @property
    def endpoint(self) -> str:
        host, port = self._server._api._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeGcs:
        self._server.start()
        return self

    def wipe(self, keep_buckets: bool = True) -> None:
        self._server.wipe(keep_buckets=keep_buckets)

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
