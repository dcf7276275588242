"""Checks the CLI verbs run on their arguments before any work (stores, output files, optional extras).

Exit-status convention of every verb: 0 done, 2 bad input (a usage error or an argument that cannot work: missing
or wrong file, bad value), 1 a runtime failure (network, a judge that failed, an edit that failed).
"""

from __future__ import annotations

import os
from pathlib import Path

#: the first 16 bytes of every SQLite 3 database file
SQLITE_HEADER = b"SQLite format 3\x00"

EXIT_OK = 0
EXIT_RUNTIME_FAILURE = 1
EXIT_BAD_INPUT = 2


class BadInputError(ValueError):
    """An argument that cannot work, found before any work started (the verb exits with status 2)."""


def check_store_path(path: str | os.PathLike, must_exist: bool, name: str = "--store") -> Path:
    """An annotation store path: not a folder, an SQLite database when it exists, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(
            f"{name} {str(path)!r} is a folder; give the SQLite file, e.g. {str(path / 'store.sqlite')!r}"
        )
    if path.exists():
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise BadInputError(f"{name} {str(path)!r} is not an SQLite annotation store (a file of another kind)")
    elif must_exist:
        raise BadInputError(f"{name}: annotation store {str(path)!r} does not exist")
    else:
        parent = path.parent if str(path.parent) else Path(".")
        existing = parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise BadInputError(f"{name} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    return path


def check_output_file(path: str | os.PathLike, name: str = "-o/--output") -> Path:
    """An output file path: not a folder, inside a folder (created later if missing) that is not a file."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{name} {str(path)!r} is a folder; give a file name")
    existing = path.parent if str(path.parent) else Path(".")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"{name} {str(path)!r}: {str(existing)!r} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise BadInputError(f"{name} {str(path)!r} is not writable (no write permission in {str(existing)!r})")
    return path


def require_modules(modules: tuple[str, ...], extra: str, what: str) -> None:
    """Raise `BadInputError` naming the pip extra when one of `modules` is not installed."""
    from ..extras import missing_extra_message, missing_modules

    missing = missing_modules(modules)
    if missing:
        raise BadInputError(missing_extra_message(missing, extra, what))
