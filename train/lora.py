"""The trainers' one LoRA rule: flag checks and the PEFT `LoraConfig` (DiT transformers, SmartEdit's LLM).

`W + (lora_alpha / r) · B A` with `A` Kaiming-uniform and `B = 0` (PEFT's default initialisation), so a fresh adapter
leaves the model's output unchanged; `lora_alpha` defaults to the rank (scale 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def check_lora_rank(flag: str, rank: int, zero_means: str | None = None) -> None:
    """`rank` must be an integer >= 1 (or 0 when `zero_means` says what 0 selects); `ValueError` naming `flag`."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < (0 if zero_means else 1):
        accepted = f"an integer >= 1 (or 0: {zero_means})" if zero_means else "an integer >= 1"
        raise ValueError(f"{flag} must be {accepted}, got {rank}")


def check_lora_alpha(flag: str, alpha: float | None) -> None:
    """`alpha` must be a finite number > 0 (`None`: the rank)."""
    if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"{flag} must be a finite number > 0, got {alpha}")


def check_lora_dropout(flag: str, dropout: float) -> None:
    """`dropout` must lie in [0, 1)."""
    if not (math.isfinite(dropout) and 0.0 <= dropout < 1.0):
        raise ValueError(f"{flag} must be in [0, 1), got {dropout}")


def make_lora_config(
    rank: int, alpha: float | None, target_modules: Sequence[str], dropout: float = 0.0
) -> Any:  # peft.LoraConfig (peft is imported only when a LoRA is built)
    """PEFT `LoraConfig` with the trainers' settings: `lora_alpha` = `alpha` or the rank, no bias, B = 0 at start."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        bias="none",
        init_lora_weights=True,
        target_modules=list(target_modules),
    )
