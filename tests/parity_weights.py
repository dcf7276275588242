"""Regenerate the official-parity UNet weights (the counter-based generator described in docs/parity.md)."""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

PARITY_DIR = Path(__file__).parent / "fixtures" / "parity"


def generate_parameter(key: str, shape: list[int], offset: float) -> np.ndarray:
    """splitmix64 of (crc32(key) << 32) + flat index → uniform float32 with std 0.02 around `offset`."""
    count = int(np.prod(shape)) if len(shape) else 1
    counter = (np.uint64(zlib.crc32(key.encode("utf-8"))) << np.uint64(32)) + np.arange(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = counter + np.uint64(0x9E3779B97F4A7C15)
        mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed = mixed ^ (mixed >> np.uint64(31))
    uniform = (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53
    values = offset + 0.02 * math.sqrt(3.0) * (2.0 * uniform - 1.0)
    return values.astype(np.float32).reshape(shape)


def write_official_unet_folder(folder: Path) -> Path:
    """Write the official-layout UNet (config.json + safetensors with official keys); checks every sha256."""
    manifest = json.loads((PARITY_DIR / "official_unet_manifest.json").read_text())
    state_dict = {}
    for entry in manifest["params"]:
        array = generate_parameter(entry["key"], entry["shape"], entry["offset"])
        digest = hashlib.sha256(array.astype("<f4").tobytes()).hexdigest()
        if digest != entry["sha256_f32le"]:
            raise AssertionError(f"generated weight {entry['key']} does not match the manifest sha256")
        state_dict[entry["key"]] = torch.from_numpy(array)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((PARITY_DIR / "config.json").read_text())
    save_file(state_dict, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder
