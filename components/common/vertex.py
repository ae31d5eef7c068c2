"""The one way every step starts the Vertex AI client (google-cloud-aiplatform is imported only when called)."""

from __future__ import annotations

from typing import Any


def init_vertex(project: str, location: str, api_endpoint: str | None = None, credentials: Any = None) -> None:
    """``aiplatform.init`` for this project and region; ``api_endpoint`` for a regional or a test endpoint."""
    from google.cloud import aiplatform

    init_kwargs: dict[str, Any] = {"project": project, "location": location, "credentials": credentials}
    if api_endpoint:
        init_kwargs["api_endpoint"] = api_endpoint
        if api_endpoint.startswith("http://"):
            init_kwargs["api_transport"] = "rest"  # only the REST transport speaks plain HTTP
    aiplatform.init(**init_kwargs)
