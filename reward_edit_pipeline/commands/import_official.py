"""`reward-edit import-official`: load the official RewardEdit_20K.json into an annotation store.

    reward-edit import-official RewardEdit_20K.json --images CLIP_FILTERED_DIR --store STORE.sqlite

Each key is the name of a triplet folder under ``--images`` (InstructPix2Pix clip-filtered layout); the instruction
and image paths are taken from it. Keys without a folder are imported with their scores but no image references, and
counted in the report.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("json", help="the official RewardEdit_20K.json")
    parser.add_argument("--images", default=None, help="the InstructPix2Pix clip-filtered folder the keys refer to")
    parser.add_argument("--store", required=True, help="the SQLite annotation store to write")


def run(args: argparse.Namespace) -> int:
    import json
    import sqlite3

    from ..data.official import import_official
    from ._checks import check_store_path

    try:
        check_store_path(args.store, must_exist=False)
        report = import_official(args.json, args.store, images_dir=args.images)
    except json.JSONDecodeError as error:
        print(f"error: {args.json} is not valid JSON: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, sqlite3.DatabaseError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"imported {report['imported']} items into {args.store}")
    if report["imported"] == 0:
        print(f"warning: {args.json} holds no items; nothing was imported", file=sys.stderr)
    if report["without_images"]:
        print(
            f"{report['without_images']} key(s) have no folder under --images (scores imported without images)",
            file=sys.stderr,
        )
    return 0
