"""Reading the raw MedQA splits from a Hugging Face dataset id, a local folder or a ``gs://`` prefix.

Every source ends up as ``{"train": [row, ...], "dev": [...], "test": [...]}`` of plain dicts, rows in file order.
A row that cannot be read (a JSON Lines line that is not UTF-8, not JSON or not an object; a CSV line with the
wrong number of cells) keeps its place as an ``UnreadableRow``, which data prep quarantines; a file that cannot
be read at all (CSV or JSON with bytes that are not UTF-8, a broken parquet file) is a one-line error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.common.errors import UserError
from components.common.jsonl import json_kind, read_jsonl

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
# The notebook's dataset; its validation split is called "dev".
DEFAULT_HF_DATASET = "openlifescienceai/medqa"
FILE_EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
# Accepted file stems per split, in order of preference.
SPLIT_FILE_STEMS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

RawSplits = dict[str, list[dict[str, Any]]]
_BOM = b"\xef\xbb\xbf"


class UnreadableRow(dict):
    """Stands for a row that could not be read, in its place; its items are what was there (for rejected.jsonl)."""

    def __init__(self, reason: str, detail: str, **content: Any):
        super().__init__(content)
        self.reason, self.detail = reason, detail


def load_source(source: str, *, hf_token: Callable[[], str | None] = lambda: None) -> RawSplits:
    """The raw rows of each split. ``hf_token`` is called only when a Hugging Face dataset is loaded."""
    if not source or not source.strip():
        raise UserError("source is empty; give a Hugging Face dataset id, a local folder or a gs:// prefix")
    if source.startswith("gs://"):
        with tempfile.TemporaryDirectory(prefix="data_prep_gcs_") as local_dir:
            download_gcs_prefix(source, local_dir)
            return read_split_files(local_dir, source_name=source)
    if Path(source).exists():
        return read_split_files(source)
    if _HF_ID.match(source):
        return load_hf_dataset(source, token=hf_token())
    raise UserError(
        f"source {source!r} is neither an existing local folder, a gs:// prefix nor a Hugging Face dataset id"
    )


def load_hf_dataset(dataset_id: str, *, token: str | None = None) -> RawSplits:
    import datasets  # heavy; only this source needs it

    try:
        loaded = datasets.load_dataset(dataset_id, token=token)
    except Exception as err:  # the hub, auth and cache raise many types; all mean "cannot read this source"
        raise UserError(f"cannot load Hugging Face dataset {dataset_id!r}: {type(err).__name__}: {err}") from err
    available = list(loaded.keys())
    splits: RawSplits = {}
    for split, names in SPLIT_FILE_STEMS.items():
        name = next((n for n in names if n in loaded), None)
        if name is None:
            raise UserError(
                f"Hugging Face dataset {dataset_id!r} has no {' or '.join(names)} split; it has: {', '.join(available)}"
            )
        splits[split] = loaded[name].to_list()
    return splits


def download_gcs_prefix(uri: str, local_dir: str | Path, client: Any = None) -> list[Path]:
    """Copy every object under ``gs://bucket/prefix`` into ``local_dir`` (relative paths kept)."""
    from components.common.gcs import split_gcs_uri, storage_client

    bucket_name, prefix = split_gcs_uri(uri, "source")
    prefix = f"{prefix}/" if prefix else ""
    client = client or storage_client()
    written = []
    for blob in client.list_blobs(bucket_name, prefix=prefix or None):
        relative = blob.name[len(prefix) :]
        if not relative or "/" in relative:
            continue  # split files sit directly under the prefix; skip placeholders and sub-folders
        target = Path(local_dir) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
        written.append(target)
    if not written:
        raise UserError(f"no objects found under {uri}")
    logger.info("downloaded %d file(s) from %s", len(written), uri)
    return written


def find_split_files(folder: str | Path, *, source_name: str | None = None) -> dict[str, Path]:
    folder = Path(folder)
    shown = source_name or str(folder)
    if not folder.is_dir():
        raise UserError(f"source {shown!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    found: dict[str, Path] = {}
    for split, stems in SPLIT_FILE_STEMS.items():
        matches = [p for p in files if p.suffix.lower() in FILE_EXTENSIONS and p.stem.lower() in stems]
        if len(matches) > 1:
            raise UserError(
                f"source {shown!r} has several files for split {split!r}: {', '.join(p.name for p in matches)}"
            )
        if not matches:
            wanted = ", ".join(f"{s}{e}" for s in stems for e in FILE_EXTENSIONS)
            present = ", ".join(p.name for p in files) or "nothing"
            raise UserError(f"source {shown!r} has no file for split {split!r} (one of {wanted}); it holds: {present}")
        found[split] = matches[0]
    return found


def read_split_files(folder: str | Path, *, source_name: str | None = None) -> RawSplits:
    return {split: read_rows(path) for split, path in find_split_files(folder, source_name=source_name).items()}


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of one split file; nested fields come back as dicts whatever the format."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        import pyarrow as pa  # heavy; only parquet sources need it
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise UserError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
    if suffix == ".csv":
        return _read_csv(path)
    raise UserError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_EXTENSIONS)}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    def unreadable(line_number: int, reason: str, detail: str, text: str) -> UnreadableRow:
        return UnreadableRow(reason, f"{path.name}: line {line_number} {detail}", line=line_number, text=text)

    return read_jsonl(path, on_bad_line=unreadable)


def _decode_whole_file(path: Path, data: bytes) -> str:
    """UTF-8 text of a file that is parsed as a whole (byte-order mark dropped), or a one-line error."""
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + len(data) - len(body)
        line = data.count(b"\n", 0, offset) + 1
        raise UserError(
            f"{path}: byte offset {offset} (line {line}) is not UTF-8 (byte 0x{data[offset]:02x}); "
            "save the file as UTF-8"
        ) from None


def _read_json(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    try:
        text = _decode_whole_file(path, data)
    except UserError:
        # Many ".json" dataset files are really JSON Lines, where one bad line is quarantined, not fatal.
        if _is_json_lines(data):
            return _read_jsonl(path)
        raise
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)
    if isinstance(loaded, dict) and len(loaded) == 1 and isinstance(next(iter(loaded.values())), list):
        loaded = next(iter(loaded.values()))  # {"data": [...]} wrappers
    if not isinstance(loaded, list):
        raise UserError(f"{path}: expected a JSON array of objects (or JSON Lines), found {json_kind(loaded)}")
    return [
        row if isinstance(row, dict) else UnreadableRow(
            "not_an_object", f"{path.name}: item {index} is not a JSON object (it is {json_kind(row)})", item=row
        )
        for index, row in enumerate(loaded)
    ]


def _is_json_lines(data: bytes) -> bool:
    """More than one line, the first of which is a whole JSON object."""
    first, _, rest = data.removeprefix(_BOM).partition(b"\n")
    try:
        return bool(rest.strip()) and isinstance(json.loads(first), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """CSV cannot nest, so ``options.A`` / ``data.Question`` columns are folded back into dicts."""
    reader = csv.reader(io.StringIO(_decode_whole_file(path, path.read_bytes()), newline=""))
    header = next(reader, None)
    if not header:
        raise UserError(f"{path}: no header line")
    columns = [column.split(".") for column in header]
    for column, parts in zip(header, columns, strict=True):
        parent = next((".".join(parts[:n]) for n in range(1, len(parts)) if ".".join(parts[:n]) in header), None)
        if parent is not None:
            raise UserError(f"{path}: column {column!r} cannot sit inside column {parent!r}; rename one of them")
    if len(set(header)) < len(header):
        repeated = sorted({column for column in header if header.count(column) > 1})
        raise UserError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    rows: list[dict[str, Any]] = []
    for cells in reader:
        if not cells:
            continue  # a blank line
        if len(cells) != len(header):
            detail = f"{path.name}: line {reader.line_num} has {len(cells)} cells, the header {len(header)}"
            rows.append(UnreadableRow("wrong_cell_count", detail, line=reader.line_num, cells=cells))
            continue
        row: dict[str, Any] = {}
        for (*parents, leaf), value in zip(columns, cells, strict=True):
            target = row
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        rows.append(row)
    return rows
