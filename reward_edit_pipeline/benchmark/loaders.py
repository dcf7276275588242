"""Benchmark loaders: the official Real-Edit layout and a generic folder + JSONL layout.

Official layout (``bytedance/Multi-Reward-Editing``, ``gpt_eval/``)::

    <bench>/real_edit_instruct.json   # {"<image file>": ["1. Local: <instruction>", ..., "7. Style: <instruction>"]}
    <bench>/<image file>              # the photos (the official release keeps them in a ``Real-Edit/`` sub-folder,
                                      # which is found automatically)

Generic layout: a JSONL file with one object per line, ``{"image": "<path>", "instruction": "...", "type": "Local"}``
(``"id"`` optional), image paths relative to the JSONL file's folder.

Every loader checks everything up front and raises `BenchmarkFormatError` naming the file, the line or key and what was
expected: missing images, malformed entries and unknown edit types are never skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.jsonl import iter_jsonl_objects

# The seven Real-Edit instruction types, in the order the official file lists them.
EDIT_TYPES: tuple[str, ...] = ("Local", "Remove", "Add", "Texture", "Background", "Global", "Style")
OFFICIAL_INSTRUCTIONS_FILE = "real_edit_instruct.json"
OFFICIAL_IMAGE_SUBFOLDER = "Real-Edit"

# "3. Add: put a hat on the cat" -> number, type, instruction (the instruction is everything after the first ": ").
_OFFICIAL_ENTRY = re.compile(r"^\s*(\d+)\s*\.\s*([^:]+?)\s*:\s(.*)$", re.DOTALL)
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class BenchmarkFormatError(ValueError):
    """A benchmark folder or instruction file is malformed, incomplete, or references missing images."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One (image, instruction) pair of a benchmark.

    Attributes:
        item_id (`str`): unique, file-name-safe identifier, stable across runs (``"<image stem>-<number>"``).
        image_path (`Path`): absolute path of the original photo.
        image_name (`str`): the image as named by the instruction file (relative to the benchmark folder).
        instruction (`str`): the edit instruction.
        edit_type (`str`): one of `EDIT_TYPES` (or of the loader's ``edit_types``).
        number (`int`): the instruction's number for this image (the ``N`` of ``"N. Type: ..."``; 1-based order
            of appearance for JSONL files).
    """

    item_id: str
    image_path: Path
    image_name: str
    instruction: str
    edit_type: str
    number: int


def _check_edit_type(edit_type: str, edit_types: Sequence[str], where: str) -> str:
    if edit_type in edit_types:
        return edit_type
    hint = ""
    for known in edit_types:
        if known.lower() == edit_type.strip().lower():
            hint = f" (did you mean {known!r}? types are case-sensitive)"
    raise BenchmarkFormatError(
        f"{where}: unknown edit type {edit_type!r}{hint}; accepted types are: {', '.join(edit_types)}"
    )


def _make_item_id(image_name: str, number: int) -> str:
    stem = Path(image_name).with_suffix("").as_posix()
    return f"{_UNSAFE_ID_CHARS.sub('_', stem).strip('_') or 'image'}-{number}"


def _check_unique_ids(items: list[BenchmarkItem], source: Path) -> None:
    seen: dict[str, BenchmarkItem] = {}
    for item in items:
        if item.item_id in seen:
            other = seen[item.item_id]
            raise BenchmarkFormatError(
                f"{source}: items ({other.image_name!r}, #{other.number}) and ({item.image_name!r}, #{item.number}) "
                f"map to the same id {item.item_id!r}; give them distinct image names or numbers"
            )
        seen[item.item_id] = item


def _resolve_image(root: Path, image_name: str, where: str, search_dirs: Sequence[Path]) -> Path:
    relative = Path(image_name)
    if relative.is_absolute() or ".." in relative.parts:
        raise BenchmarkFormatError(f"{where}: image path {image_name!r} must be relative to {root} and stay inside it")
    for folder in search_dirs:
        candidate = folder / relative
        if candidate.is_file():
            return candidate.resolve()
    looked = ", ".join(str(folder / relative) for folder in search_dirs)
    raise BenchmarkFormatError(f"{where}: image {image_name!r} not found (looked for {looked})")


def load_real_edit(bench_dir: str | Path, edit_types: Sequence[str] = EDIT_TYPES) -> list[BenchmarkItem]:
    """Load the official Real-Edit layout: ``real_edit_instruct.json`` plus its images.

    Images are looked up next to the JSON file, then in its ``Real-Edit/`` sub-folder (the official release's layout).
    Items come in file order: images in the JSON's key order, instructions in list order.
    """
    bench_dir = Path(bench_dir)
    json_path = bench_dir / OFFICIAL_INSTRUCTIONS_FILE
    if not json_path.is_file():
        raise BenchmarkFormatError(f"{bench_dir}: no {OFFICIAL_INSTRUCTIONS_FILE} found in the benchmark folder")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BenchmarkFormatError(f"{json_path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not data:
        raise BenchmarkFormatError(
            f"{json_path}: expected a non-empty object mapping image file name -> list of "
            f'"N. Type: instruction" strings, got {type(data).__name__}'
        )
    search_dirs = [bench_dir, bench_dir / OFFICIAL_IMAGE_SUBFOLDER]
    items: list[BenchmarkItem] = []
    for image_name, entries in data.items():
        where = f"{json_path} [{image_name!r}]"
        if not isinstance(entries, list) or not entries:
            raise BenchmarkFormatError(f'{where}: expected a non-empty list of "N. Type: instruction" strings')
        image_path = _resolve_image(bench_dir, image_name, where, search_dirs)
        numbers: set[int] = set()
        for position, entry in enumerate(entries):
            entry_where = f"{where} entry {position}"
            match = _OFFICIAL_ENTRY.match(entry) if isinstance(entry, str) else None
            if match is None:
                raise BenchmarkFormatError(
                    f'{entry_where}: expected a string like "1. Local: <instruction>", got {entry!r}'
                )
            number, edit_type, instruction = int(match.group(1)), match.group(2), match.group(3).strip()
            edit_type = _check_edit_type(edit_type, edit_types, entry_where)
            if not instruction:
                raise BenchmarkFormatError(f"{entry_where}: empty instruction in {entry!r}")
            if number in numbers:
                raise BenchmarkFormatError(f"{entry_where}: instruction number {number} appears twice for this image")
            numbers.add(number)
            items.append(
                BenchmarkItem(
                    item_id=_make_item_id(image_name, number),
                    image_path=image_path,
                    image_name=image_name,
                    instruction=instruction,
                    edit_type=edit_type,
                    number=number,
                )
            )
    _check_unique_ids(items, json_path)
    return items


def load_jsonl_benchmark(jsonl_path: str | Path, edit_types: Sequence[str] = EDIT_TYPES) -> list[BenchmarkItem]:
    """Load a JSONL benchmark: one ``{"image", "instruction", "type"}`` object per line (``"id"`` optional).

    Image paths are relative to the JSONL file's folder. Blank lines are allowed; anything else malformed is an error.
    """
    jsonl_path = Path(jsonl_path)
    if not jsonl_path.is_file():
        raise BenchmarkFormatError(f"{jsonl_path}: JSONL benchmark file not found")
    root = jsonl_path.parent
    items: list[BenchmarkItem] = []
    counts: dict[str, int] = {}
    expected = "an object with keys image, instruction, type"
    for where, record in iter_jsonl_objects(jsonl_path, error=BenchmarkFormatError, expected=expected):
        missing = [key for key in ("image", "instruction", "type") if key not in record]
        if missing:
            raise BenchmarkFormatError(f"{where}: missing key(s) {', '.join(missing)} (need image, instruction, type)")
        for key in ("image", "instruction", "type"):
            if not isinstance(record[key], str) or not record[key].strip():
                raise BenchmarkFormatError(f"{where}: {key!r} must be a non-empty string, got {record[key]!r}")
        image_name = record["image"]
        edit_type = _check_edit_type(record["type"], edit_types, where)
        image_path = _resolve_image(root, image_name, where, [root])
        counts[image_name] = counts.get(image_name, 0) + 1
        number = counts[image_name]
        if "id" in record:
            if not isinstance(record["id"], str) or not record["id"] or _UNSAFE_ID_CHARS.search(record["id"]):
                raise BenchmarkFormatError(
                    f"{where}: 'id' must be a non-empty string of letters, digits, '.', '_' or '-', got {record['id']!r}"
                )
            item_id = record["id"]
        else:
            item_id = _make_item_id(image_name, number)
        items.append(
            BenchmarkItem(
                item_id=item_id,
                image_path=image_path,
                image_name=image_name,
                instruction=record["instruction"].strip(),
                edit_type=edit_type,
                number=number,
            )
        )
    if not items:
        raise BenchmarkFormatError(f"{jsonl_path}: no benchmark items (the file is empty)")
    _check_unique_ids(items, jsonl_path)
    return items


def load_benchmark(path: str | Path, edit_types: Sequence[str] = EDIT_TYPES) -> list[BenchmarkItem]:
    """Load a benchmark from a folder (official layout, or exactly one ``*.jsonl`` file) or a ``.jsonl`` file."""
    path = Path(path)
    if path.is_file():
        if path.name == OFFICIAL_INSTRUCTIONS_FILE:
            return load_real_edit(path.parent, edit_types)
        if path.suffix == ".jsonl":
            return load_jsonl_benchmark(path, edit_types)
        raise BenchmarkFormatError(
            f"--bench {path}: expected a benchmark folder, a .jsonl file or {OFFICIAL_INSTRUCTIONS_FILE}"
        )
    if not path.is_dir():
        raise BenchmarkFormatError(f"--bench {path}: no such file or folder")
    if (path / OFFICIAL_INSTRUCTIONS_FILE).is_file():
        return load_real_edit(path, edit_types)
    jsonl_files = sorted(path.glob("*.jsonl"))
    if len(jsonl_files) == 1:
        return load_jsonl_benchmark(jsonl_files[0], edit_types)
    if len(jsonl_files) > 1:
        names = ", ".join(file.name for file in jsonl_files)
        raise BenchmarkFormatError(f"--bench {path}: several JSONL files ({names}); pass the one to use as --bench")
    raise BenchmarkFormatError(
        f"--bench {path}: found neither {OFFICIAL_INSTRUCTIONS_FILE} (official Real-Edit layout) nor a *.jsonl file "
        "of {image, instruction, type} records"
    )
