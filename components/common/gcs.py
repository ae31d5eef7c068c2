"""Google Cloud Storage paths and copies, shared by steps that hand files to Vertex AI.

Vertex AI Pipelines mounts buckets with Cloud Storage FUSE under ``/gcs/<bucket>/``, so an artifact a task
sees as a local path may already be in GCS; ``to_gcs_uri`` recognises that and avoids a second copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from components.common.errors import UserError

GCS_SCHEME = "gs://"
GCS_FUSE_ROOT = "/gcs/"


def is_gcs_uri(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def split_gcs_uri(uri: str, parameter: str = "uri") -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; a clear error naming ``parameter`` otherwise."""
    if not is_gcs_uri(uri):
        raise UserError(f"{parameter} must start with gs://, got {uri!r}")
    bucket, _, prefix = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise UserError(f"{parameter} has no bucket name: {uri!r}")
    return bucket, prefix.strip("/")


def to_gcs_uri(path_or_uri: str) -> str | None:
    """The ``gs://`` form of a GCS URI or of a path under the Cloud Storage FUSE mount; ``None`` for local."""
    if is_gcs_uri(path_or_uri):
        return path_or_uri.rstrip("/")
    if path_or_uri.startswith(GCS_FUSE_ROOT):
        return GCS_SCHEME + path_or_uri[len(GCS_FUSE_ROOT) :].rstrip("/")
    return None


def storage_client(project: str | None = None, credentials: Any = None) -> Any:
    from google.cloud import storage

    return storage.Client(project=project, credentials=credentials)


def _missing_bucket(err: Exception, bucket_name: str, parameter: str) -> UserError:
    return UserError(
        f"{parameter}: bucket {bucket_name!r} does not exist or these credentials cannot see it ({type(err).__name__})"
    )


def upload_file(local_path: str | os.PathLike[str], destination_uri: str, client: Any = None,
                parameter: str = "destination_uri") -> str:
    """Copy one file to ``destination_uri`` (a ``gs://`` object); returns the URI."""
    from google.api_core.exceptions import NotFound

    bucket_name, blob_name = split_gcs_uri(destination_uri, parameter)
    client = client or storage_client()
    try:
        client.bucket(bucket_name).blob(blob_name).upload_from_filename(str(local_path))
    except NotFound as err:
        raise _missing_bucket(err, bucket_name, parameter) from None
    return f"{GCS_SCHEME}{bucket_name}/{blob_name}"


def download_text(uri: str, client: Any = None, parameter: str = "uri") -> str:
    """The UTF-8 text of one ``gs://`` object; a missing bucket or object is a one-line ``UserError``."""
    from google.api_core.exceptions import NotFound

    bucket_name, blob_name = split_gcs_uri(uri, parameter)
    client = client or storage_client()
    try:
        data = client.bucket(bucket_name).blob(blob_name).download_as_bytes()
    except NotFound:
        raise UserError(f"{parameter}: {uri} not found (no such bucket or object)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{uri}: not UTF-8 text (byte {err.start})") from None


def upload_directory(
    local_dir: str | os.PathLike[str], destination_uri: str, client: Any = None, parameter: str = "destination_uri"
) -> list[str]:
    """Copy every file under ``local_dir`` to ``destination_uri`` keeping relative paths; returns the URIs.

    Re-running overwrites the same objects, so a retried task leaves the same result.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise UserError(f"model directory {str(local_dir)!r} does not exist or is not a directory")
    bucket_name, prefix = split_gcs_uri(destination_uri, parameter)
    from google.api_core.exceptions import NotFound

    client = client or storage_client()
    bucket = client.bucket(bucket_name)
    uploaded = []
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        relative = file.relative_to(local_dir).as_posix()
        blob_name = f"{prefix}/{relative}" if prefix else relative
        try:
            bucket.blob(blob_name).upload_from_filename(str(file))
        except NotFound as err:
            raise _missing_bucket(err, bucket_name, parameter) from None
        uploaded.append(f"{GCS_SCHEME}{bucket_name}/{blob_name}")
    if not uploaded:
        raise UserError(f"model directory {str(local_dir)!r} is empty")
    return uploaded

