"""Editing triplets ``(id, instruction, original, edited)`` from folders, manifests and `datasets` datasets.

Sources accepted by `iter_triplets`:

- **InstructPix2Pix clip-filtered folder** ``<root>/<key>/<seed>_0.jpg`` (original), ``<seed>_1.jpg`` (edited),
  ``prompt.json`` (``{"edit": ...}``), optional ``<root>/seeds.json`` (``[[key, [seed, ...]], ...]``).
  Ids: with ``seeds="first"`` (default) one triplet per key folder, id = the folder name ``<key>`` — the key used by
  the official ``RewardEdit_20K.json`` (whose folders hold a single seed pair); the seed is the first one listed for
  the key in ``seeds.json``, else the numerically smallest seed with both images present. With ``seeds="all"`` every
  seed pair is a triplet with id ``<key>/<seed>``. When ``edit`` is a list, its first entry is the instruction.
- **JSONL or CSV manifest** with columns ``original``, ``edited``, ``instruction`` and optional ``id`` (default: the
  0-based row number as a string). Relative image paths are resolved against the manifest's folder.
- **a `datasets.Dataset`** (or a folder written by ``Dataset.save_to_disk``, or ``hf:<hub name or folder>[@split]``
  loaded with ``datasets.load_dataset(..., streaming=True)``) with either ``original``/``edited``/``instruction`` or
  the InstructPix2Pix columns ``original_image``/``edited_image``/``edit_prompt`` (e.g.
  ``hf:timbrooks/instructpix2pix-clip-filtered``); optional ``id`` (default: the 0-based row number).

Images stay paths (or in-memory images for datasets): nothing is decoded here, so a missing or corrupt image surfaces
where it is used, as a recorded failure.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ..records import Triplet
from .jsonl import iter_jsonl_objects

SeedSelection = Literal["first", "all"]
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def is_saved_dataset_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by ``datasets`` ``save_to_disk`` (a `Dataset` or a `DatasetDict`)."""
    path = Path(path)
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file())


def _instruction_from_prompt_json(path: Path) -> str:
    try:
        prompt = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing prompt.json (expected {{'edit': <instruction>}})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    edit = prompt.get("edit") if isinstance(prompt, dict) else None
    if isinstance(edit, list) and edit and all(isinstance(text, str) for text in edit):
        return edit[0]
    if isinstance(edit, str):
        return edit
    raise ValueError(f"{path}: 'edit' must be a string or a non-empty list of strings, got {edit!r}")


_SEED_FILE = re.compile(r"^(.+)_([01])\.(jpg|jpeg|png|webp)$", re.IGNORECASE)


def _seed_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{seed: (original, edited)}`` for seeds whose both images exist in ``folder``."""
    found: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = _SEED_FILE.match(path.name)
        if match:
            found.setdefault(match.group(1), {})[match.group(2)] = path
    return {seed: (files["0"], files["1"]) for seed, files in found.items() if "0" in files and "1" in files}


def _seed_sort_key(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.isdigit() else (1, seed)


def is_instruct_pix2pix_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "seeds.json").is_file():
        return True
    return any(child.is_dir() and (child / "prompt.json").is_file() for child in path.iterdir())


def iter_instruct_pix2pix_folder(root: str | os.PathLike, seeds: SeedSelection = "first") -> Iterator[Triplet]:
    """Triplets of an InstructPix2Pix clip-filtered folder, in ``seeds.json`` order (else sorted key order)."""
    if seeds not in ("first", "all"):
        raise ValueError(f"`seeds` must be 'first' or 'all', got {seeds!r}")
    root = Path(root)
    listed: list[tuple[str, list[str]]] | None = None
    seeds_file = root / "seeds.json"
    if seeds_file.is_file():
        raw = json.loads(seeds_file.read_text(encoding="utf-8"))
        if not isinstance(raw, list) or not all(isinstance(entry, list) and len(entry) == 2 for entry in raw):
            raise ValueError(f"{seeds_file}: expected [[key, [seed, ...]], ...]")
        listed = [(str(key), [str(seed) for seed in key_seeds]) for key, key_seeds in raw]
    keys = (
        [key for key, _ in listed]
        if listed is not None
        else sorted(child.name for child in root.iterdir() if child.is_dir() and (child / "prompt.json").is_file())
    )
    listed_seeds = dict(listed) if listed is not None else {}
    for key in keys:
        yield from key_folder_triplets(root, key, seeds, listed_seeds.get(key))


def key_folder_triplets(
    root: str | os.PathLike, key: str, seeds: SeedSelection = "first", listed_seeds: list[str] | None = None
) -> list[Triplet]:
    """The triplet(s) of one key folder ``<root>/<key>`` (see the module docstring for ids and seed choice)."""
    folder = Path(root) / key
    instruction = _instruction_from_prompt_json(folder / "prompt.json")
    pairs = _seed_pairs(folder) if folder.is_dir() else {}
    if seeds == "first":
        if listed_seeds:
            seed = listed_seeds[0]
        elif pairs:
            seed = min(pairs, key=_seed_sort_key)
        else:
            raise FileNotFoundError(f"{folder}: no '<seed>_0.jpg'/'<seed>_1.jpg' image pair")
        original, edited = pairs.get(seed, (folder / f"{seed}_0.jpg", folder / f"{seed}_1.jpg"))
        return [Triplet(key, instruction, original, edited)]
    triplets = []
    for seed in listed_seeds or sorted(pairs, key=_seed_sort_key):
        original, edited = pairs.get(seed, (folder / f"{seed}_0.jpg", folder / f"{seed}_1.jpg"))
        triplets.append(Triplet(f"{key}/{seed}", instruction, original, edited))
    return triplets


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for row_number, (_, row) in enumerate(iter_jsonl_objects(path, expected="a JSON object per line")):
            yield row_number, row
    elif path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            yield from enumerate(csv.DictReader(handle))
    else:
        raise ValueError(f"{path}: manifest must be .jsonl or .csv")


def iter_manifest(path: str | os.PathLike) -> Iterator[Triplet]:
    """Triplets of a JSONL/CSV manifest with ``original``, ``edited``, ``instruction`` and optional ``id``."""
    path = Path(path)
    seen: set[str] = set()
    for row_number, row in _manifest_rows(path):
        missing = [column for column in ("original", "edited", "instruction") if not row.get(column)]
        if missing:
            raise ValueError(f"{path}: row {row_number} lacks {missing} (needs original, edited, instruction)")
        item_id = str(row["id"]) if row.get("id") not in (None, "") else str(row_number)
        if item_id in seen:
            raise ValueError(f"{path}: duplicate id {item_id!r} at row {row_number}")
        seen.add(item_id)
        original, edited = (
            Path(row[c]) if Path(row[c]).is_absolute() else path.parent / row[c] for c in ("original", "edited")
        )
        yield Triplet(item_id, str(row["instruction"]), original, edited)


_DATASET_COLUMNS = (("original", "edited", "instruction"), ("original_image", "edited_image", "edit_prompt"))


def _dataset_image(value: Any) -> Any:
    if isinstance(value, dict):  # an undecoded datasets Image: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return value["path"]
    return value


def _dataset_columns(columns: set[str]) -> tuple[str, str, str]:
    for names in _DATASET_COLUMNS:
        if set(names) <= columns:
            return names
    raise ValueError(f"the dataset needs columns {_DATASET_COLUMNS[0]} or {_DATASET_COLUMNS[1]}, has {sorted(columns)}")


def iter_dataset(dataset: Any) -> Iterator[Triplet]:
    """Triplets of a `datasets.Dataset` or `IterableDataset` (see the module docstring for the accepted columns)."""
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None:
        columns = set(column_names)
        original_column, edited_column, instruction_column = _dataset_columns(columns)
    seen: set[str] = set()
    for index, row in enumerate(dataset):
        if column_names is None and index == 0:  # streaming datasets may not know their columns up front
            columns = set(row)
            original_column, edited_column, instruction_column = _dataset_columns(columns)
        item_id = str(row["id"]) if "id" in columns and row["id"] not in (None, "") else str(index)
        if item_id in seen:
            raise ValueError(f"duplicate id {item_id!r} at dataset row {index}")
        seen.add(item_id)
        instruction = row[instruction_column]
        if isinstance(instruction, list):
            instruction = instruction[0]
        yield Triplet(item_id, instruction, _dataset_image(row[original_column]), _dataset_image(row[edited_column]))


HF_PREFIX = "hf:"


def iter_hub_dataset(spec: str) -> Iterator[Triplet]:
    """``hf:<name or folder>[@<split>]``: a dataset through `datasets.load_dataset` (streamed; default split train)."""
    import datasets

    name, _, split = spec[len(HF_PREFIX) :].partition("@")
    if not name:
        raise ValueError(f"expected 'hf:<dataset name or folder>[@split]', got {spec!r}")
    return iter_dataset(datasets.load_dataset(name, split=split or "train", streaming=True))


def iter_triplets(source: Any, seeds: SeedSelection = "first") -> Iterator[Triplet]:
    """Triplets from a folder, a manifest, a saved dataset folder, ``hf:<dataset>[@split]`` or a `datasets` dataset.

    See the module docstring for layouts and ids.
    """
    if hasattr(source, "__iter__") and (hasattr(source, "column_names") or hasattr(source, "features")):
        return iter_dataset(source)
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        return iter_hub_dataset(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"`source` must be a path or a datasets.Dataset, got {type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_file():
        return iter_manifest(path)
    if is_saved_dataset_folder(path):
        import datasets

        return iter_dataset(datasets.load_from_disk(str(path)))
    if is_instruct_pix2pix_folder(path):
        return iter_instruct_pix2pix_folder(path, seeds=seeds)
    raise ValueError(
        f"{path}: not an InstructPix2Pix folder (<key>/prompt.json, <seed>_0.jpg, <seed>_1.jpg), "
        "a .jsonl/.csv manifest or a saved datasets folder"
    )
