"""Versioned judge prompts, stored as data files in ``reward_edit_pipeline/prompts/``.

A prompt file ``<name>.txt`` has a small header and two sections::

    id: following-v1
    perspective: following          # following | preserving | quality | combined
    images: original, edited        # the images sent, in this order
    --- system
    <system message>
    --- user
    <user message; {instruction} is replaced by the editing instruction>

The id is stamped into every record, and the sha256 of the file's text is part of the store key, so editing a prompt
invalidates only the judgments it produced. ``judgment_schema.json`` is the JSON schema sent as ``response_format``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..rewards import PERSPECTIVES

PROMPT_PERSPECTIVES: tuple[str, ...] = (*PERSPECTIVES, "combined")
DEFAULT_PROMPT_VERSION = "v1"


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt file."""

    id: str
    perspective: str
    images: tuple[str, ...]
    system: str
    user: str
    sha256: str

    def render(self, instruction: str) -> str:
        return self.user.replace("{instruction}", instruction)


def parse_prompt_text(text: str, source: str = "<prompt>") -> PromptTemplate:
    """Parse the text of a prompt file (see the module docstring for the format)."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("--- "):
            name = line[4:].strip()
            if name not in ("system", "user"):
                raise ValueError(f"{source}: unknown section {name!r}; use '--- system' and '--- user'")
            current = sections.setdefault(name, [])
        elif current is not None:
            current.append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"{source}: header line {line!r} is not 'key: value'")
            header[key.strip()] = value.split("#")[0].strip()
    for key in ("id", "perspective", "images"):
        if not header.get(key):
            raise ValueError(f"{source}: missing header field {key!r}")
    if header["perspective"] not in PROMPT_PERSPECTIVES:
        raise ValueError(f"{source}: perspective must be one of {PROMPT_PERSPECTIVES}, got {header['perspective']!r}")
    images = tuple(part.strip() for part in header["images"].split(",") if part.strip())
    if not images or any(image not in ("original", "edited") for image in images):
        raise ValueError(f"{source}: images must be a comma-separated subset of 'original, edited', got {images}")
    if "user" not in sections:
        raise ValueError(f"{source}: missing '--- user' section")
    user = "\n".join(sections["user"]).strip()
    if "{instruction}" not in user:
        raise ValueError(f"{source}: the user section must contain the placeholder {{instruction}}")
    return PromptTemplate(
        id=header["id"],
        perspective=header["perspective"],
        images=images,
        system="\n".join(sections.get("system", [])).strip(),
        user=user,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def load_prompt_file(path: str | Path) -> PromptTemplate:
    path = Path(path)
    return parse_prompt_text(path.read_text(encoding="utf-8"), str(path))


def _builtin_text(name: str) -> str:
    return resources.files("reward_edit_pipeline").joinpath("prompts", name).read_text(encoding="utf-8")


def load_prompt_set(
    version: str = DEFAULT_PROMPT_VERSION, directory: str | Path | None = None
) -> dict[str, PromptTemplate]:
    """Load ``{following, preserving, quality[, combined]}`` prompts named ``<perspective>_<version>.txt``.

    Args:
        version (`str`, defaults to ``"v1"``): the prompt version suffix.
        directory (`str` or `Path`, *optional*): a folder of custom prompt files; defaults to the packaged prompts.
    """
    prompts: dict[str, PromptTemplate] = {}
    for perspective in PROMPT_PERSPECTIVES:
        name = f"{perspective}_{version}.txt"
        try:
            if directory is None:
                prompt = parse_prompt_text(_builtin_text(name), f"prompts/{name}")
            else:
                prompt = load_prompt_file(Path(directory) / name)
        except FileNotFoundError:
            if perspective == "combined":
                continue
            where = "the packaged prompts" if directory is None else str(directory)
            raise FileNotFoundError(f"prompt file {name!r} not found in {where} (prompt version {version!r})") from None
        if prompt.perspective != perspective:
            raise ValueError(f"{name}: declares perspective {prompt.perspective!r}, expected {perspective!r}")
        prompts[perspective] = prompt
    return prompts


def load_judgment_schema() -> dict[str, Any]:
    """The ``json_schema`` part of ``response_format`` for one perspective's judgment."""
    return json.loads(_builtin_text("judgment_schema.json"))


def combined_judgment_schema() -> dict[str, Any]:
    """The schema of a combined single-call reply: one judgment object per perspective."""
    single = load_judgment_schema()
    return {
        "name": "edit_judgment",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {perspective: copy.deepcopy(single["schema"]) for perspective in PERSPECTIVES},
            "required": list(PERSPECTIVES),
            "additionalProperties": False,
        },
    }
