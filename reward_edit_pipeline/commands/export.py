"""`reward-edit export`: write an annotation store as official-json, jsonl, parquet or a saved `datasets` folder.

    reward-edit export --store STORE.sqlite --format official-json|jsonl|parquet|hf-dataset -o OUT

``official-json`` is the RewardEdit_20K.json format and holds only items whose three perspectives all succeeded;
the other formats hold every item with per-perspective status and failure reasons.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FORMATS = ("official-json", "jsonl", "parquet", "hf-dataset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="the SQLite annotation store")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("-o", "--output", required=True, help="output file (folder for hf-dataset)")


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from ..data import export_store
    from ._checks import check_output_file, check_store_path, require_modules

    try:
        check_store_path(args.store, must_exist=True)
        if args.format == "parquet":
            require_modules(("pyarrow",), "data", "--format parquet")
        elif args.format == "hf-dataset":
            require_modules(("datasets", "pyarrow"), "data", "--format hf-dataset")
            if Path(args.output).exists() and not Path(args.output).is_dir():
                raise ValueError(f"-o/--output {args.output!r} is a file; --format hf-dataset writes a folder")
        else:
            check_output_file(args.output)
        counts = export_store(args.store, args.format, args.output)
    except (FileNotFoundError, ValueError, sqlite3.DatabaseError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {counts['written']} items to {args.output} ({args.format})")
    if counts["written"] == 0:
        print(f"warning: the store {args.store} holds no exportable item; the output is empty", file=sys.stderr)
    if counts["incomplete"]:
        where = "left out (official-json holds complete items only)" if args.format == "official-json" else "included"
        print(f"{counts['incomplete']} item(s) with failed or pending perspectives {where}", file=sys.stderr)
    return 0
