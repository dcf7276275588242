"""JSON Lines: one object per line, blank lines allowed, any other malformed line an error naming file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl_objects(
    path: str | os.PathLike, *, error: type[ValueError] = ValueError, expected: str = "a JSON object"
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for every non-blank line of a JSONL file; ``where`` is ``"<path>:<line number>"``.

    Args:
        path: the JSONL file.
        error (`type[ValueError]`, defaults to `ValueError`): the exception raised for a malformed line.
        expected (`str`): what a line must hold, for the error message.

    Raises ``error("<path>:<line>: not valid JSON (...)")`` or ``error("<path>:<line>: expected <expected>, got a
    list")``: a bad line is never skipped.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as decode_error:
                raise error(f"{where}: not valid JSON ({decode_error})") from None
            if not isinstance(value, dict):
                raise error(f"{where}: expected {expected}, got {_json_kind(value)}")
            yield where, value


def _json_kind(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), "null" if value is None else type(value).__name__)
