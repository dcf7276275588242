"""Import the official ``RewardEdit_20K.json`` into an annotation store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..judge.base import PerspectiveJudgment
from ..judge.images import image_key
from ..judge.store import AnnotationStore, call_key
from ..rewards import PERSPECTIVES
from .formats import OFFICIAL_PROMPT_ID, read_official_json
from .triplets import key_folder_triplets

OFFICIAL_JUDGE = "official"


def official_fingerprint_digest() -> str:
    payload = json.dumps({"judge": OFFICIAL_JUDGE, "prompt_id": OFFICIAL_PROMPT_ID}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def import_official(
    json_path: str | os.PathLike, store_path: str | os.PathLike, images_dir: str | os.PathLike | None = None
) -> dict[str, int]:
    """Write every record of the official JSON into the store at ``store_path`` (one transaction).

    With ``images_dir`` (the InstructPix2Pix clip-filtered folder), each key's instruction and image paths are read
    from ``<images_dir>/<key>/``; keys without a folder keep only their scores. Returns ``{"imported", "without_images"}``.
    """
    records = read_official_json(json_path)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise FileNotFoundError(f"--images folder not found: {images_dir}")
    fingerprint = official_fingerprint_digest()
    items, entries = [], []
    without_images = 0
    for key, record in records.items():
        instruction, original, edited = "", None, None
        digests = {"original": f"official:{key}", "edited": f"official:{key}"}
        if images_dir is not None and (Path(images_dir) / key / "prompt.json").is_file():
            triplet = key_folder_triplets(images_dir, key)[0]
            instruction, original, edited = triplet.instruction, str(triplet.original), str(triplet.edited)
            digests = {"original": image_key(original), "edited": image_key(edited)}
        else:
            without_images += 1
        keys = {p: call_key(p, instruction, digests, fingerprint) for p in PERSPECTIVES}
        items.append(
            {
                "item_id": key,
                "instruction": instruction,
                "original": original,
                "edited": edited,
                "original_digest": digests["original"],
                "edited_digest": digests["edited"],
                "source": OFFICIAL_JUDGE,
                "call_keys": keys,
            }
        )
        for perspective, score, text in zip(PERSPECTIVES, record.scores, record.failure_texts):
            judgment = PerspectiveJudgment.success(
                perspective, score, None, text, prompt_id=OFFICIAL_PROMPT_ID, model=None, attempts=0
            )
            entries.append((keys[perspective], key, judgment, OFFICIAL_JUDGE, {"source": str(json_path)}))
    with AnnotationStore(store_path) as store:
        store.put_items(items)
        store.record_many(entries)
    return {"imported": len(records), "without_images": without_images}
