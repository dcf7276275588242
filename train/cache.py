"""`--cache_latents`: precompute VAE latent distributions and text embeddings once, as safetensors shards.

Layout of the cache folder:

    index.json                      written last (its presence marks a complete cache): fingerprint, shards, skips
    shard-r<rank>-<k>.safetensors   rows of: example_index, original_latents, edited_latent_mean, edited_latent_std,
                                    (with random flip) the same three for the mirrored pair, prompt_embeds and, for
                                    stage 2, failure_text_embeds and reward_scores

The conditioning image uses the mode of its latent distribution and the edited image a sample of it (InstructPix2Pix);
the cache stores mean and standard deviation so the training loop still draws a fresh sample every step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from .data import SkipCounter, TrainingExample, TripletDataset, collate_training_batch

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
LATENT_FIELDS = ("original_latents", "edited_latent_mean", "edited_latent_std")


def cache_fingerprint(examples: Sequence[TrainingExample], settings: dict[str, Any]) -> str:
    """sha256 over the settings that change cached values and over every example's key, prompt and rewards."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_FORMAT_VERSION, **settings}, sort_keys=True).encode())
    for example in examples:
        digest.update(
            json.dumps([example.key, example.instruction, example.reward_scores, example.failure_text]).encode()
        )
    return digest.hexdigest()


@torch.no_grad()
def encode_pixels(vae: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latent distribution `(mean, std)` of `pixel_values` (unscaled, as `latent_dist` gives them)."""
    distribution = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist
    return distribution.mean, distribution.std


@torch.no_grad()
def encode_prompt_ids(text_encoder: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token prompt embeddings `[B, L, D]` (the UNet's cross-attention input)."""
    return text_encoder(input_ids.to(text_encoder.device))[0]


@torch.no_grad()
def encode_failure_text_table(
    text_encoder: Any, tokenizer: Any, failure_texts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Pooled embeddings `[len(failure_texts), D]` of distinct failure texts, computed once before training (the text
    encoder is frozen, so they never change) with the pipeline's own encoder
    (`reward_edit_pipeline.pipelines.pipeline_reward_edit.encode_failure_texts`), so training and inference see the
    same failure-text embeddings."""
    from ..pipelines.pipeline_reward_edit import encode_failure_texts

    rows = [
        encode_failure_texts(text_encoder, tokenizer, failure_texts[start : start + batch_size], text_encoder.device)
        for start in range(0, len(failure_texts), batch_size)
    ]
    if not rows:
        return torch.zeros(0, text_encoder.config.hidden_size, device=text_encoder.device, dtype=text_encoder.dtype)
    return torch.cat(rows)


def read_index(cache_dir: str) -> dict[str, Any] | None:
    path = os.path.join(cache_dir, INDEX_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def build_latent_cache(
    accelerator: Any,
    cache_dir: str,
    fingerprint: str,
    dataset: TripletDataset,
    vae: Any,
    text_encoder: Any,
    with_flips: bool,
    batch_size: int,
    num_workers: int,
    failure_text_table: torch.Tensor | None = None,
    rows_per_shard: int = 1024,
) -> dict[str, Any]:
    """Encode every example once (each process a disjoint share) and return the cache index.

    Reuses a complete cache with the same fingerprint; otherwise clears `cache_dir` and rebuilds it.
    """
    index = read_index(cache_dir)
    if index is not None and index.get("fingerprint") == fingerprint:
        logger.info("using latent cache %s (%d examples)", cache_dir, len(index["rows"]))
        return index
    if accelerator.is_main_process:
        if index is not None:
            logger.info("latent cache %s was built for other data or settings; rebuilding it", cache_dir)
        if os.path.isdir(cache_dir):
            shutil.rmtree(cache_dir)
        os.makedirs(cache_dir, exist_ok=True)
    accelerator.wait_for_everyone()

    rank, world = accelerator.process_index, accelerator.num_processes
    share = list(range(rank, len(dataset), world))
    loader = DataLoader(
        torch.utils.data.Subset(dataset, share),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_training_batch,
    )
    pending: dict[str, list[torch.Tensor]] = {}
    skipped: list[dict[str, Any]] = []
    shard_number = 0

    def flush() -> None:
        nonlocal shard_number
        if not pending:
            return
        tensors = {name: torch.cat(parts).contiguous().cpu() for name, parts in pending.items()}
        save_file(tensors, os.path.join(cache_dir, f"shard-r{rank:03d}-{shard_number:05d}.safetensors"))
        shard_number += 1
        pending.clear()

    for batch in loader:
        skipped.extend({"key": s.key, "reason": s.reason, "detail": s.detail} for s in batch["skipped"])
        if batch["batch_size"] == 0:
            continue
        rows = {"example_index": batch["index"]}
        variants = [("", batch["original_pixel_values"], batch["edited_pixel_values"])]
        if with_flips:
            variants.append(
                ("_flipped", batch["original_pixel_values"].flip(-1), batch["edited_pixel_values"].flip(-1))
            )
        for suffix, original, edited in variants:
            rows[f"original_latents{suffix}"], _ = encode_pixels(vae, original)
            rows[f"edited_latent_mean{suffix}"], rows[f"edited_latent_std{suffix}"] = encode_pixels(vae, edited)
        rows["prompt_embeds"] = encode_prompt_ids(text_encoder, batch["input_ids"])
        if "failure_text_index" in batch:
            if failure_text_table is None:
                raise ValueError("stage-2 examples need `failure_text_table` (see `encode_failure_text_table`)")
            rows["failure_text_embeds"] = failure_text_table[batch["failure_text_index"].to(failure_text_table.device)]
            rows["reward_scores"] = batch["reward_scores"]
        for name, value in rows.items():
            pending.setdefault(name, []).append(value.detach().cpu())
        if sum(len(part) for part in pending["example_index"]) >= rows_per_shard:
            flush()
    flush()
    with open(os.path.join(cache_dir, f"skipped-r{rank:03d}.json"), "w", encoding="utf-8") as handle:
        json.dump(skipped, handle)
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        rows_index: list[tuple[int, str, int]] = []
        all_skipped: list[dict[str, Any]] = []
        for name in sorted(os.listdir(cache_dir)):
            if name.startswith("shard-"):
                with safe_open(os.path.join(cache_dir, name), framework="pt") as shard:
                    for row, example_index in enumerate(shard.get_tensor("example_index").tolist()):
                        rows_index.append((example_index, name, row))
            elif name.startswith("skipped-"):
                with open(os.path.join(cache_dir, name), encoding="utf-8") as handle:
                    all_skipped.extend(json.load(handle))
        rows_index.sort()
        index = {
            "format_version": CACHE_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "with_flips": with_flips,
            "rows": [[shard, row] for _, shard, row in rows_index],
            "example_indices": [example_index for example_index, _, _ in rows_index],
            "skipped": all_skipped,
        }
        temporary = os.path.join(cache_dir, INDEX_FILE + ".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(index, handle)
        os.replace(temporary, os.path.join(cache_dir, INDEX_FILE))
    accelerator.wait_for_everyone()
    index = read_index(cache_dir)
    logger.info("built latent cache %s: %d examples, %d skipped", cache_dir, len(index["rows"]), len(index["skipped"]))
    return index


def count_cache_skips(index: dict[str, Any], skips: SkipCounter) -> None:
    for entry in index["skipped"]:
        skips.add(entry["reason"], entry["key"], entry["detail"])


class CachedLatentDataset(Dataset):
    """Rows of a latent cache (only the examples that encoded successfully), one dict of tensors per row."""

    def __init__(self, cache_dir: str, index: dict[str, Any]) -> None:
        self.cache_dir = cache_dir
        self.rows = [tuple(row) for row in index["rows"]]
        self.example_indices = list(index["example_indices"])
        self._open: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:  # file handles stay per process
        return {**self.__dict__, "_open": {}}

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard_name, row = self.rows[index]
        shard = self._open.get(shard_name)
        if shard is None:
            shard = self._open[shard_name] = safe_open(os.path.join(self.cache_dir, shard_name), framework="pt")
        item = {name: shard.get_slice(name)[row] for name in shard.keys() if name != "example_index"}
        item["index"] = self.example_indices[index]
        return item
