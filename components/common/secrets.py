"""Secrets (the Hugging Face token) read at run time from Secret Manager by resource name.

A token is never a pipeline parameter: parameters are stored in the compiled YAML, in the Vertex job record
and in the console. Steps get a secret *name* (``projects/P/secrets/S[/versions/V]``) and read the value
here, inside the container, with the task's service account. Locally, ``HF_TOKEN`` in the environment is
the fallback. Nothing here logs a value.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

from components.common.errors import UserError

SECRET_MANAGER_ENDPOINT = "https://secretmanager.googleapis.com"
HF_TOKEN_ENV = "HF_TOKEN"
_SECRET_NAME = re.compile(r"^projects/[^/]+/secrets/[^/]+(/versions/[^/]+)?$")
# Hugging Face user access tokens: "hf_" and 30+ letters/digits. Used to refuse tokens passed as values.
_HF_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


def looks_like_token(value: str) -> bool:
    return bool(_HF_TOKEN_SHAPE.search(value))


def secret_version_name(resource_name: str, parameter: str = "secret") -> str:
    """``projects/P/secrets/S`` -> ``projects/P/secrets/S/versions/latest``; a versioned name is kept."""
    resource_name = resource_name.strip()
    if looks_like_token(resource_name):
        raise UserError(f"{parameter} must be a Secret Manager resource name, not a token value")
    if not _SECRET_NAME.match(resource_name):
        raise UserError(
            f"{parameter} must look like projects/PROJECT/secrets/NAME[/versions/VERSION], got {resource_name!r}"
        )
    return resource_name if "/versions/" in resource_name else f"{resource_name}/versions/latest"


def read_secret(
    resource_name: str,
    *,
    credentials: Any = None,
    endpoint: str = SECRET_MANAGER_ENDPOINT,
    timeout_s: float = 30.0,
) -> str:
    """The payload of a Secret Manager secret version, via the REST API (``versions.access``).

    REST through google-auth avoids one more client library in the images; the call is the same one
    ``google-cloud-secret-manager`` makes.
    """
    name = secret_version_name(resource_name)
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    if credentials is None:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    response = AuthorizedSession(credentials).get(f"{endpoint.rstrip('/')}/v1/{name}:access", timeout=timeout_s)
    if response.status_code != 200:
        # The body names the secret and the reason (permission, not found); it never holds the payload.
        raise UserError(f"cannot read secret {name}: HTTP {response.status_code} {response.text[:300]}")
    data = response.json().get("payload", {}).get("data")
    if data is None:
        raise UserError(f"secret {name} has no payload")
    return base64.b64decode(data).decode("utf-8").strip()


def resolve_hf_token(secret_name: str | None, **read_kwargs: Any) -> str | None:
    """The Hugging Face token: from Secret Manager when a name is given, else ``HF_TOKEN``, else ``None``."""
    if secret_name:
        return read_secret(secret_name, **read_kwargs)
    return os.environ.get(HF_TOKEN_ENV) or None


def export_hf_token(secret_name: str | None, **read_kwargs: Any) -> bool:
    """Put the token in this process's ``HF_TOKEN`` (where huggingface_hub looks); True when one was found."""
    token = resolve_hf_token(secret_name, **read_kwargs)
    if token:
        os.environ[HF_TOKEN_ENV] = token
    return bool(token)
