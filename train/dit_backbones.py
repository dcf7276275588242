"""The registry of DiT editor families that `reward-edit train --backbone ...` can train (see `train/dit.py`).

Each family plugs into the generic loop of `train/dit.py` through a `DitBackboneAdapter`; `train/dit.py` registers
FLUX.1 Kontext and imports `train/dit_qwen.py`, which registers Qwen-Image-Edit.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


class DitBackboneAdapter:
    """How the generic loop talks to one DiT editor family."""

    name: str = ""

    def load_pipeline(self, args: argparse.Namespace, dtype: Any) -> Any:
        """The reward pipeline to train (a base checkpoint wrapped with zero-initialised reward modules)."""
        raise NotImplementedError

    def lora_target_modules(self, transformer: Any) -> list[str]:
        """Module names (PEFT `target_modules`) of the base attention projections."""
        raise NotImplementedError

    def encode_examples(
        self, pipe: Any, examples: Sequence[Any], resolution: int, device: Any, skips: Any = None
    ) -> dict[str, Any]:
        """Cache on the CPU: `keys` of the readable examples, per-example tensors (stacked on dim 0) and shared
        tensors (e.g. position ids). Unreadable pairs are counted in `skips` (raised when it is `None`)."""
        raise NotImplementedError

    def training_loss(
        self, transformer: Any, cache: dict[str, Any], rows: Any, generator: Any, null_reward_mask: Any, args: Any
    ) -> Any:
        """Flow-matching (or the backbone's) loss of the cached examples `rows`; random draws come from the CPU
        `generator` (so a resumed run draws the same numbers)."""
        raise NotImplementedError


BACKBONES: dict[str, DitBackboneAdapter] = {}


def register_backbone(adapter: DitBackboneAdapter) -> None:
    """Make `--backbone adapter.name` trainable."""
    BACKBONES[adapter.name] = adapter
