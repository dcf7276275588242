"""Training data: triplet examples, image loading that skips (and counts) bad samples, batching, sampling.

A bad sample is never replaced: `TripletDataset.__getitem__` returns a `SkippedSample` naming the reason, the collator
drops it from the batch and reports it, and the training loop counts it (`SkipCounter`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from ..images import to_rgb_image
from ..records import RewardRecord

logger = logging.getLogger(__name__)

# Why a sample was left out. Missing rewards are found when the examples are listed; the others when an image is read.
SKIP_MISSING_REWARD = "missing_reward"
SKIP_MISSING_IMAGE = "missing_image"
SKIP_UNREADABLE_IMAGE = "unreadable_image"
SKIP_SIZE_MISMATCH = "size_mismatch"
SKIP_REASONS = (SKIP_MISSING_REWARD, SKIP_MISSING_IMAGE, SKIP_UNREADABLE_IMAGE, SKIP_SIZE_MISMATCH)

# An image reference: a file path, encoded bytes, a decoded PIL image, a `datasets` Image dict {"bytes", "path"}, or a
# lazy reference with a `read()` method returning one of those.
ImageSource = Any


@dataclass(frozen=True)
class TrainingExample:
    """One editing triplet as training reads it (images not decoded yet), with its rewards in stage 2."""

    key: str
    instruction: str
    original_image: ImageSource
    edited_image: ImageSource
    reward: RewardRecord | None = None

    @property
    def reward_scores(self) -> tuple[float, float, float] | None:
        """Following, preserving, quality (stage 2), else ``None``."""
        return self.reward.scores if self.reward is not None else None

    @property
    def failure_text(self) -> str | None:
        """The joined failure text the model is conditioned on (stage 2), else ``None``."""
        return self.reward.failure_text if self.reward is not None else None


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out of its batch, and why."""

    index: int
    key: str
    reason: str
    detail: str


@dataclass
class SkipCounter:
    """Counts skipped samples by reason; keeps the first few keys of each reason for the log and the summary."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 20

    def add(self, reason: str, key: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {SKIP_REASONS}")
        self.counts[reason] += 1
        keys = self.examples.setdefault(reason, [])
        if len(keys) < self.max_examples:
            keys.append(key)
            logger.warning("skipped sample %r (%s): %s", key, reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "first_keys": self.examples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkipCounter:
        return cls(
            counts=Counter(data.get("by_reason", {})),
            examples={k: list(v) for k, v in data.get("first_keys", {}).items()},
        )


class ImageLoadError(Exception):
    """An image could not be read; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def load_rgb_image(source: ImageSource) -> Image.Image:
    """Decode `source` fully into an RGB PIL image, or raise `ImageLoadError` (missing or unreadable)."""
    try:
        if hasattr(source, "read") and not isinstance(source, (str, bytes, os.PathLike)):
            return load_rgb_image(source.read())  # a lazy reference (e.g. a `datasets` image cell)
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, dict):
            if source.get("bytes"):
                return load_rgb_image(bytes(source["bytes"]))
            if source.get("path"):
                return load_rgb_image(source["path"])
            raise ImageLoadError(SKIP_MISSING_IMAGE, f"image entry has neither bytes nor path: {sorted(source)}")
        elif isinstance(source, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(source)))
        elif isinstance(source, (str, os.PathLike)):
            if not os.path.isfile(source):
                raise ImageLoadError(SKIP_MISSING_IMAGE, f"no such file: {os.fspath(source)!r}")
            image = Image.open(source)
        elif source is None:
            raise ImageLoadError(SKIP_MISSING_IMAGE, "image is missing (None)")
        else:
            raise ImageLoadError(SKIP_UNREADABLE_IMAGE, f"unsupported image type {type(source).__name__}")
        image.load()  # decode now, so truncated files fail here and not later
        return to_rgb_image(image)  # the package's one image rule: EXIF, alpha on white, 16-bit scaled
    except ImageLoadError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise ImageLoadError(SKIP_UNREADABLE_IMAGE, f"{type(error).__name__}: {error}") from error


def resize_and_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to `resolution` (Lanczos) and crop the centre square."""
    width, height = image.size
    scale = resolution / min(width, height)
    new_width, new_height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.LANCZOS)
    left, top = (new_width - resolution) // 2, (new_height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → float tensor `[3, H, W]` in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """CLIP token ids `[N, max_length]`, padded to the maximum length and truncated (as the pipelines do)."""
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class TripletDataset(Dataset):
    """Decodes, checks and preprocesses one triplet per index; bad samples come back as `SkippedSample`.

    Items: `original_pixel_values`, `edited_pixel_values` (`[3, R, R]` in [-1, 1]), `input_ids`, and for stage 2
    `reward_scores` (`[3]`) and `failure_text_index` (row of `failure_texts`, the distinct failure texts, whose pooled
    embeddings the trainer computes once: the text encoder is frozen). Original and edited images must have the same size
    (InstructPix2Pix pairs are pixel-aligned); a mismatch is skipped, not resized into agreement.
    """

    def __init__(
        self,
        examples: Sequence[TrainingExample],
        tokenizer: Any,
        resolution: int,
        with_rewards: bool,
    ) -> None:
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.with_rewards = with_rewards
        self.failure_texts: list[str] = []
        self.failure_text_index: list[int] = []
        if with_rewards:
            rows: dict[str, int] = {}
            for example in self.examples:
                self.failure_text_index.append(rows.setdefault(example.failure_text, len(rows)))
            self.failure_texts = list(rows)

    def __len__(self) -> int:
        return len(self.examples)

    def load_pair(self, example: TrainingExample) -> tuple[torch.Tensor, torch.Tensor]:
        original = load_rgb_image(example.original_image)
        edited = load_rgb_image(example.edited_image)
        if original.size != edited.size:
            raise ImageLoadError(
                SKIP_SIZE_MISMATCH,
                f"original is {original.size[0]}x{original.size[1]}, edited {edited.size[0]}x{edited.size[1]}",
            )
        return (
            image_to_tensor(resize_and_center_crop(original, self.resolution)),
            image_to_tensor(resize_and_center_crop(edited, self.resolution)),
        )

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        example = self.examples[index]
        try:
            original, edited = self.load_pair(example)
        except ImageLoadError as error:
            return SkippedSample(index, example.key, error.reason, str(error))
        item: dict[str, Any] = {
            "index": index,
            "original_pixel_values": original,
            "edited_pixel_values": edited,
            "input_ids": tokenize(self.tokenizer, [example.instruction])[0],
        }
        if self.with_rewards:
            item["reward_scores"] = torch.tensor(example.reward_scores, dtype=torch.float32)
            item["failure_text_index"] = torch.tensor(self.failure_text_index[index], dtype=torch.long)
        return item


def collate_training_batch(items: Sequence[dict[str, Any] | SkippedSample]) -> dict[str, Any]:
    """Stack the good items; list the skipped ones under `"skipped"` (the batch may shrink, even to 0)."""
    good = [item for item in items if not isinstance(item, SkippedSample)]
    skipped = [item for item in items if isinstance(item, SkippedSample)]
    batch: dict[str, Any] = {"skipped": skipped, "batch_size": len(good)}
    if good:
        for name in good[0]:
            if name == "index":
                batch[name] = torch.tensor([item[name] for item in good], dtype=torch.long)
            else:
                batch[name] = torch.stack([item[name] for item in good])
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A permutation of `range(num_examples)` that depends only on `(seed, epoch)`: the same on every process (so
    accelerate's batch sharding gives disjoint shards) and the same again after resuming."""

    def __init__(self, num_examples: int, seed: int) -> None:
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_examples, generator=generator).tolist()


def attach_rewards(
    examples: Sequence[TrainingExample], reward_records: Mapping[str, RewardRecord], skips: SkipCounter
) -> list[TrainingExample]:
    """Stage 2: give each example its `RewardRecord` (looked up by the example's key); examples without one are
    skipped and counted (`missing_reward`)."""
    joined = []
    for example in examples:
        record = reward_records.get(example.key)
        if record is None:
            skips.add(SKIP_MISSING_REWARD, example.key, "no reward record with this key")
            continue
        if not isinstance(record, RewardRecord):
            raise TypeError(f"the reward record of {example.key!r} must be a RewardRecord, got {type(record).__name__}")
        joined.append(dataclasses.replace(example, reward=record))
    return joined
