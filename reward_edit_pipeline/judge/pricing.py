"""Token prices for cost estimates (US dollars per million tokens, OpenAI list prices; override for other servers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pricing:
    """Dollars per million input and output tokens; the Batch API costs ``batch_discount`` times this."""

    input_per_million: float
    output_per_million: float
    batch_discount: float = 0.5

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"`{name}` must be a non-negative price in dollars, got {value!r}")

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        dollars = (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6
        return dollars * (self.batch_discount if batch else 1.0)


# Model name (or snapshot) -> list price. Longest matching prefix wins, so snapshots inherit their family's price.
KNOWN_PRICES: dict[str, Pricing] = {
    "gpt-4o": Pricing(2.50, 10.00),
    "gpt-4o-2024-05-13": Pricing(5.00, 15.00),
    "gpt-4o-mini": Pricing(0.15, 0.60),
    "gpt-4.1": Pricing(2.00, 8.00),
    "gpt-4.1-mini": Pricing(0.40, 1.60),
    "gpt-4.1-nano": Pricing(0.10, 0.40),
}


def pricing_for(model: str) -> Pricing | None:
    """The list price of ``model`` (longest known prefix), or ``None`` when unknown."""
    matches = [name for name in KNOWN_PRICES if model == name or model.startswith(name + "-")]
    return KNOWN_PRICES[max(matches, key=len)] if matches else None
