"""JSON Lines I/O for step inputs and outputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from components.common.errors import UserError

# (line number, reason code, detail, the line's text) -> the row that stands for the bad line
BadLineHandler = Callable[[int, str, str, str], dict[str, Any]]


class _BadLine(NamedTuple):
    reason: str
    detail: str


def iter_jsonl(path: str | Path, *, on_bad_line: BadLineHandler | None = None) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file; blank lines are skipped and a leading byte-order mark is ignored.

    A line that is not UTF-8, not JSON or not an object is a one-line error naming the file and line, unless
    ``on_bad_line(line_number, reason, detail, text)`` is given: its return value then takes the line's place
    (``text``: the line with undecodable bytes written as ``\\xNN``).
    """
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                bad = _BadLine("not_utf8", f"is not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})")
            else:
                bad = None
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    bad = _BadLine("invalid_json", f"is not valid JSON ({err.msg})")
                else:
                    if not isinstance(row, dict):
                        bad = _BadLine("not_an_object", f"is not a JSON object (it is {json_kind(row)})")
            if bad is None:
                yield row
            elif on_bad_line is None:
                raise UserError(f"{path}: line {line_number} {bad.detail}")
            else:
                text = raw.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
                yield on_bad_line(line_number, bad.reason, bad.detail, text)


def json_kind(value: Any) -> str:
    """What a JSON value is, in words, for error messages that must not show the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def read_jsonl(path: str | Path, *, on_bad_line: BadLineHandler | None = None) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, on_bad_line=on_bad_line))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically (temp file + rename) so a reader never sees half a file. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
