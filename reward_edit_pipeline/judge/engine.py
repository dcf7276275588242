"""The annotation engine: grade many triplets with a `Judge` into an `AnnotationStore`, resumably.

1. **Plan**: hash each item's images, compute the call key of every perspective (see `store.call_key`), skip keys
   already done in the store, and record the items (one transaction).
2. **Run**: ``concurrency`` workers take items and ask the judge for the missing perspectives; all API calls share one
   `CallLimiter` (in-flight bound, requests/min, tokens/min). Each item's judgments are written in one transaction as
   soon as they arrive, so ``kill -9`` loses at most the calls in flight, and a re-run continues where it stopped.
3. **Summarize**: done / failed by reason / tokens / cost, over the whole input (work from earlier runs included).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..records import Triplet, image_reference
from ..rewards import PERSPECTIVES
from .base import Judge, JudgeConfigurationError, PerspectiveJudgment, run_sync
from .images import image_key
from .limits import CallLimiter
from .pricing import Pricing, pricing_for
from .store import AnnotationStore, call_key


@dataclass
class PlannedItem:
    """One input item with its call keys and the perspectives still to judge."""

    triplet: Triplet
    keys: dict[str, str]
    todo: tuple[str, ...]
    digests: dict[str, str]


@dataclass
class AnnotationSummary:
    """What a run did (``this run``) and where the whole input stands afterwards (``final``)."""

    items: int = 0
    calls_planned: int = 0
    cached: int = 0
    judged_ok: int = 0
    judged_failed: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    elapsed_s: float = 0.0
    peak_in_flight: int = 0
    dry_run: bool = False
    batch: bool = False
    estimated_prompt_tokens: int = 0
    estimated_completion_tokens: int = 0
    estimated_cost_usd: float | None = None
    estimate_skipped_items: int = 0
    final_items_done: int = 0
    final_items_failed: int = 0
    final_failed_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def calls_per_second(self) -> float:
        return (self.judged_ok + self.judged_failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def format(self) -> str:
        def dollars(value: float | None) -> str:
            return f"${value:,.2f}" if value is not None else "unknown (no price for this model; see --price-input)"

        if self.dry_run:
            lines = [
                f"dry run: {self.items} items, {self.cached} judgments already done, "
                f"{self.calls_planned} calls to make{' (Batch API)' if self.batch else ''}",
                f"estimated tokens: {self.estimated_prompt_tokens:,} prompt + {self.estimated_completion_tokens:,} "
                f"completion; estimated cost {dollars(self.estimated_cost_usd)}",
            ]
            if self.estimate_skipped_items:
                lines.append(f"{self.estimate_skipped_items} item(s) have unreadable images (not in the estimate)")
            return "\n".join(lines)
        lines = [
            f"items: {self.items} ({self.final_items_done} done, {self.final_items_failed} with failures, "
            f"{self.items - self.final_items_done - self.final_items_failed} pending)",
            f"this run: {self.judged_ok} judgments ok, {self.judged_failed} failed, {self.cached} reused from the "
            f"store, {self.requests} requests in {self.elapsed_s:.1f} s ({self.calls_per_second:.1f} judgments/s)",
            f"tokens: {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion; cost {dollars(self.cost_usd)}",
        ]
        if self.final_failed_by_reason:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.final_failed_by_reason.items()))
            lines.append(f"failed judgments by reason: {reasons} (retried on the next run)")
        return "\n".join(lines)


def plan_annotation(
    items: Iterable[Triplet], judge: Judge, store: AnnotationStore | None, write: bool = True
) -> list[PlannedItem]:
    """Compute call keys for every item and find the perspectives not yet done in ``store``."""
    fingerprints = {p: judge.fingerprint_digest(p) for p in PERSPECTIVES}
    planned: list[PlannedItem] = []
    seen: set[str] = set()
    for triplet in items:
        if not isinstance(triplet, Triplet):
            raise TypeError(f"items must be Triplet objects, got {type(triplet).__name__}")
        if triplet.id in seen:
            raise ValueError(f"duplicate item id {triplet.id!r} in the input")
        seen.add(triplet.id)
        digests = {"original": image_key(triplet.original), "edited": image_key(triplet.edited)}
        keys = {
            p: call_key(p, triplet.instruction, {r: digests[r] for r in judge.images_seen(p)}, fingerprints[p])
            for p in PERSPECTIVES
        }
        planned.append(PlannedItem(triplet, keys, PERSPECTIVES, digests))
    done = store.done_keys(key for item in planned for key in item.keys.values()) if store is not None else set()
    for item in planned:
        item.todo = tuple(p for p in PERSPECTIVES if item.keys[p] not in done)
    if write and store is not None:
        store.put_items(
            {
                "item_id": item.triplet.id,
                "instruction": item.triplet.instruction,
                "original": image_reference(item.triplet.original),
                "edited": image_reference(item.triplet.edited),
                "original_digest": item.digests["original"],
                "edited_digest": item.digests["edited"],
                "source": judge.name,
                "call_keys": item.keys,
            }
            for item in planned
        )
    return planned


def _image_size(source: Any) -> tuple[int, int] | None:
    from PIL import Image

    try:
        if isinstance(source, Image.Image):
            return source.size
        if isinstance(source, (bytes, bytearray)):
            import io

            with Image.open(io.BytesIO(source)) as image:
                return image.size
        with Image.open(source) as image:
            return image.size
    except Exception:
        return None


def _combined(judge: Judge) -> bool:
    return bool(getattr(judge, "combined", False))


def count_calls(planned: list[PlannedItem], judge: Judge) -> int:
    """Number of API requests needed (one per perspective, or one per item with the combined prompt)."""
    if _combined(judge):
        return sum(1 for item in planned if item.todo)
    return sum(len(item.todo) for item in planned)


def estimate(
    planned: list[PlannedItem], judge: Judge, pricing: Pricing | None, batch: bool = False
) -> tuple[int, int, float | None, int]:
    """Estimated (prompt tokens, completion tokens, cost, items skipped for unreadable images) of the planned work."""
    prompt_tokens = completion_tokens = skipped = 0
    for item in planned:
        if not item.todo:
            continue
        sizes = {"original": _image_size(item.triplet.original), "edited": _image_size(item.triplet.edited)}
        if any(size is None for size in sizes.values()):
            skipped += 1
            continue
        perspectives = item.todo[:1] if _combined(judge) else item.todo
        for perspective in perspectives:
            prompt, completion = judge.estimate_call(perspective, sizes, item.triplet.instruction)  # type: ignore[arg-type]
            prompt_tokens += prompt
            completion_tokens += completion
    cost = pricing.cost(prompt_tokens, completion_tokens, batch=batch) if pricing is not None else None
    return prompt_tokens, completion_tokens, cost, skipped


def default_pricing(judge: Judge) -> Pricing | None:
    model = getattr(judge, "model", None)
    if isinstance(model, str):
        return pricing_for(model)
    return Pricing(0.0, 0.0) if not hasattr(judge, "model") else None


def finalize_summary(summary: AnnotationSummary, planned: list[PlannedItem], store: AnnotationStore) -> None:
    """Fill the ``final_*`` fields from the store."""
    all_keys = [key for item in planned for key in item.keys.values()]
    done = store.done_keys(all_keys)
    reasons: Counter[str] = Counter()
    for item in planned:
        missing = [key for key in item.keys.values() if key not in done]
        if not missing:
            summary.final_items_done += 1
            continue
        failed = False
        for key in missing:
            judgment = store.lookup(key)
            if judgment is not None and not judgment.ok:
                reasons[judgment.error or "unknown"] += 1
                failed = True
        summary.final_items_failed += failed
    summary.final_failed_by_reason = dict(reasons)


async def run_annotation(
    items: Iterable[Triplet],
    judge: Judge,
    store: AnnotationStore,
    *,
    concurrency: int = 16,
    rpm: float | None = None,
    tpm: float | None = None,
    dry_run: bool = False,
    progress: bool = True,
    pricing: Pricing | None = None,
) -> AnnotationSummary:
    """Grade every item's missing perspectives and store the judgments.

    Args:
        items: `Triplet`s (e.g. from `reward_edit_pipeline.data.iter_triplets`).
        judge (`Judge`): the backend (`OpenAIJudge`, `FunctionJudge`, ...).
        store (`AnnotationStore`): where judgments go; finished work in it is never redone.
        concurrency (`int`, defaults to 16): maximum API requests in flight.
        rpm / tpm (`float`, *optional*): client-side requests-per-minute / tokens-per-minute limits.
        dry_run (`bool`, defaults to `False`): only count the calls and estimate tokens and cost; no calls, no writes.
        progress (`bool`, defaults to `True`): show a progress bar (ETA, calls/s, tokens, cost) on stderr.
        pricing (`Pricing`, *optional*): token prices for cost figures; the model's list price by default.

    Returns:
        `AnnotationSummary`. Failed judgments are stored with their reason and retried by the next run.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"`concurrency` must be an integer >= 1, got {concurrency!r}")
    limiter = CallLimiter(concurrency, rpm, tpm)
    pricing = pricing if pricing is not None else default_pricing(judge)
    started = time.monotonic()
    planned = await asyncio.to_thread(plan_annotation, items, judge, store, not dry_run)
    summary = AnnotationSummary(items=len(planned), dry_run=dry_run)
    summary.calls_planned = count_calls(planned, judge)
    summary.cached = sum(len(PERSPECTIVES) - len(item.todo) for item in planned)
    if dry_run:
        (
            summary.estimated_prompt_tokens,
            summary.estimated_completion_tokens,
            summary.estimated_cost_usd,
            summary.estimate_skipped_items,
        ) = estimate(planned, judge, pricing)
        summary.elapsed_s = time.monotonic() - started
        return summary

    queue: asyncio.Queue[PlannedItem] = asyncio.Queue()
    for item in planned:
        if item.todo:
            queue.put_nowait(item)
    bar = _progress_bar(sum(len(item.todo) for item in planned), progress)
    settings_by_perspective = {p: judge.fingerprint(p) for p in PERSPECTIVES}

    def judge_error(item: PlannedItem, error: BaseException) -> list[PerspectiveJudgment]:
        return [
            PerspectiveJudgment.failure(p, "judge_error", f"{type(error).__name__}: {error}", attempts=0)
            for p in item.todo
        ]

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            triplet = item.triplet
            try:
                result = await judge.ajudge(
                    triplet.instruction, triplet.original, triplet.edited, perspectives=item.todo, limiter=limiter
                )
                judgments = list(result.judgments)
            except JudgeConfigurationError:
                raise  # nothing can succeed: stop the run instead of failing every item
            except Exception as error:  # a backend bug must not lose the item: record it as failed
                judgments = judge_error(item, error)
            store.record_many(
                (item.keys[j.perspective], triplet.id, j, judge.name, settings_by_perspective[j.perspective])
                for j in judgments
            )
            for judgment in judgments:
                summary.judged_ok += judgment.ok
                summary.judged_failed += not judgment.ok
                summary.prompt_tokens += judgment.prompt_tokens
                summary.completion_tokens += judgment.completion_tokens
            summary.requests += _requests_made(judgments, _combined(judge))
            if bar is not None:
                cost = pricing.cost(summary.prompt_tokens, summary.completion_tokens) if pricing else None
                bar.set_postfix(
                    failed=summary.judged_failed,
                    tokens=f"{summary.prompt_tokens + summary.completion_tokens:,}",
                    cost=f"${cost:.2f}" if cost is not None else "?",
                    refresh=False,
                )
                bar.update(len(judgments))

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, queue.qsize())))))
    finally:
        if bar is not None:
            bar.close()
        await judge.aclose()
    summary.elapsed_s = time.monotonic() - started
    summary.peak_in_flight = limiter.peak_in_flight
    summary.cost_usd = pricing.cost(summary.prompt_tokens, summary.completion_tokens) if pricing else None
    finalize_summary(summary, planned, store)
    return summary


def _requests_made(judgments: list[PerspectiveJudgment], combined: bool) -> int:
    if combined:
        return max((j.attempts for j in judgments), default=0)
    return sum(j.attempts for j in judgments)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="call", desc="annotate", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def annotate(items: Iterable[Triplet], judge: Judge, store: AnnotationStore, **kwargs: Any) -> AnnotationSummary:
    """Synchronous `run_annotation`."""
    return run_sync(run_annotation(items, judge, store, **kwargs))
