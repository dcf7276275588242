"""Tiny, seeded data files for the training tests: an InstructPix2Pix triplet folder and official-format rewards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_triplet_folder(root: Path, count: int, size: int = 32, seed: int = 0) -> list[str]:
    """An InstructPix2Pix clip-filtered folder with `count` keys; the edited image is the original with a colour
    shift that depends on the instruction, so there is something learnable. Returns the keys."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    keys, listing = [], []
    for number in range(count):
        key = f"{number:07d}_sample"
        folder = root / key
        folder.mkdir()
        seed_name = str(1000 + number)
        base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        shifted = base.copy()
        shifted[..., number % 3] = 255 - shifted[..., number % 3]
        Image.fromarray(base).save(folder / f"{seed_name}_0.jpg", quality=95)
        Image.fromarray(shifted).save(folder / f"{seed_name}_1.jpg", quality=95)
        instruction = ["invert the red", "invert the green", "invert the blue"][number % 3]
        (folder / "prompt.json").write_text(json.dumps({"edit": instruction, "input": "a photo"}), encoding="utf-8")
        keys.append(key)
        listing.append([key, [seed_name]])
    (root / "seeds.json").write_text(json.dumps(listing), encoding="utf-8")
    return keys


def write_official_rewards(path: Path, keys: list[str], seed: int = 0) -> Path:
    """`RewardEdit_20K.json`-style rewards for `keys` (scores in following, preserving, quality order)."""
    rng = np.random.default_rng(seed)
    records = {}
    for key in keys:
        scores = rng.integers(0, 6, size=3).tolist()
        records[key] = [
            {"Score": scores[0], "Negative Prompt": "the colour change is incomplete" if scores[0] < 5 else ""},
            {"Score": scores[1], "Negative Prompt": ""},
            {"Score": scores[2], "Negative Prompt": "slightly blurry" if scores[2] < 4 else ""},
        ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def restore_last_dit_checkpoint(pipe, backbone: str, run: Path, rank: int, alpha: float):
    """`pipe` (a base-wrapped reward DiT pipeline) as the trainer held it at the end of the run in `run`: the trainer's
    own LoRA set-up (`setup_trainable` with this rank and alpha) and the last checkpoint's trainable weights, LoRA
    unmerged at PEFT's own scale. Returns `pipe`, in eval mode."""
    import torch
    from reward_edit_pipeline.train.dit import BACKBONES, TRAINABLE_FILE, list_dit_checkpoints, setup_trainable
    from safetensors.torch import load_file

    setup_trainable(pipe.transformer, BACKBONES[backbone], rank, alpha)
    _, folder = list_dit_checkpoints(str(run))[-1]
    weights = load_file(Path(folder) / TRAINABLE_FILE)
    parameters = dict(pipe.transformer.named_parameters())
    assert set(weights) == {name for name, parameter in parameters.items() if parameter.requires_grad}
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    pipe.transformer.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe
