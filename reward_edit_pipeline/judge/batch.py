"""OpenAI Batch API mode (``reward-edit annotate --batch``): half-price, asynchronous annotation of large inputs.

1. Plan as the engine does (store keys; finished work and requests already in open batches are skipped).
2. Write the requests as JSONL (``custom_id`` = call key), split at the API's per-file limits (50 000 requests,
   200 MB), upload each file (``/v1/files``, purpose ``batch``) and create a batch (``/v1/batches``); every
   submitted batch is recorded in the store at once, so an interrupted run resumes polling instead of resubmitting.
3. Poll until each batch ends, download its output and error files, and ingest every line into the store; requests a
   failed/expired batch never answered are stored as ``batch_error`` failures (retried by the next run).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..records import Triplet
from .base import PerspectiveJudgment
from .engine import AnnotationSummary, count_calls, default_pricing, estimate, finalize_summary, plan_annotation
from .images import ImageLoadError
from .openai_judge import OpenAIJudge
from .pricing import Pricing
from .store import AnnotationStore

logger = logging.getLogger(__name__)

BATCH_ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")


class _ChunkWriter:
    """Writes request lines into JSONL files no larger than the limits; submits each full file."""

    def __init__(self, submit, work_dir: Path, max_requests: int, max_bytes: int) -> None:
        self.submit = submit
        self.work_dir = work_dir
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.lines: list[bytes] = []
        self.requests: list[tuple[str, str, str]] = []
        self.size = 0
        self.files = 0

    def add(self, line: bytes, request: tuple[str, str, str]) -> None:
        if len(line) > self.max_bytes:
            raise ValueError(
                f"one batch request is {len(line)} bytes, over the per-file limit of {self.max_bytes}; "
                "lower --image-max-side"
            )
        if self.lines and (len(self.lines) >= self.max_requests or self.size + len(line) > self.max_bytes):
            self.flush()
        self.lines.append(line)
        self.requests.append(request)
        self.size += len(line)

    def flush(self) -> None:
        if not self.lines:
            return
        self.files += 1
        path = self.work_dir / f"batch-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.files:04d}.jsonl"
        with path.open("wb") as handle:
            handle.writelines(self.lines)
        self.submit(path, self.requests)
        self.lines, self.requests, self.size = [], [], 0


def _failure_from_result_line(perspective: str, line: dict[str, Any], prompt_id: str) -> PerspectiveJudgment:
    response = line.get("response") or {}
    error = line.get("error") or {}
    if response:
        body = response.get("body")
        message = (
            body.get("error", {}).get("message")
            if isinstance(body, dict) and isinstance(body.get("error"), dict)
            else body
        )
        text = f"HTTP {response.get('status_code')}: {message}"
    else:
        text = f"{error.get('code')}: {error.get('message')}"
    return PerspectiveJudgment.failure(perspective, "batch_error", text[:1000], prompt_id=prompt_id)


def ingest_batch(judge: OpenAIJudge, store: AnnotationStore, batch: Any) -> tuple[int, int, int, int]:
    """Store every result of a finished batch. Returns (ok, failed, prompt tokens, completion tokens)."""
    client = judge.sync_client()
    requests = {key: (item_id, perspective) for key, item_id, perspective in store.batch_requests(batch.id)}
    seen: set[str] = set()
    entries: list[tuple[str, str, PerspectiveJudgment, str, dict]] = []
    for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
        if not file_id:
            continue
        content = client.files.content(file_id).read().decode("utf-8")
        for raw in content.splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            key = line.get("custom_id")
            if key not in requests:
                logger.warning("batch %s: result for unknown custom_id %r ignored", batch.id, key)
                continue
            item_id, perspective = requests[key]
            seen.add(key)
            response = line.get("response") or {}
            prompt_id = judge.prompts[perspective].id
            if response.get("status_code") == 200 and isinstance(response.get("body"), dict):
                judgment = judge.judgments_from_completion([perspective], response["body"])[0]
            else:
                judgment = _failure_from_result_line(perspective, line, prompt_id)
            entries.append((key, item_id, judgment, judge.name, judge.fingerprint(perspective)))
    for key, (item_id, perspective) in requests.items():
        if key not in seen:
            judgment = PerspectiveJudgment.failure(
                perspective,
                "batch_error",
                f"batch {batch.id} ended with status {batch.status!r} without a result for this request",
                prompt_id=judge.prompts[perspective].id,
            )
            entries.append((key, item_id, judgment, judge.name, judge.fingerprint(perspective)))
    store.record_many(entries)
    store.update_batch(batch.id, status=batch.status, ingested=1)
    judgments = [entry[2] for entry in entries]
    ok = sum(judgment.ok for judgment in judgments)
    return (
        ok,
        len(judgments) - ok,
        sum(judgment.prompt_tokens for judgment in judgments),
        sum(judgment.completion_tokens for judgment in judgments),
    )


def run_batch_annotation(
    items: Iterable[Triplet],
    judge: OpenAIJudge,
    store: AnnotationStore,
    *,
    dry_run: bool = False,
    pricing: Pricing | None = None,
    poll_interval: float = 30.0,
    max_requests_per_file: int = MAX_REQUESTS_PER_FILE,
    max_bytes_per_file: int = MAX_BYTES_PER_FILE,
    work_dir: str | os.PathLike | None = None,
    submit_only: bool = False,
    progress: bool = True,
    max_wait: float | None = None,
) -> AnnotationSummary:
    """Annotate through the Batch API (see module docstring). Synchronous; uses the sync `openai.OpenAI` client.

    Args:
        poll_interval (`float`, defaults to 30): seconds between status checks.
        max_requests_per_file / max_bytes_per_file: split limits (the API allows 50 000 requests and 200 MB).
        work_dir (*optional*): where JSONL files are written (default ``<store>.batches/``); kept for auditing.
        submit_only (`bool`): submit and return; a later run (with or without new items) polls and ingests.
        max_wait (`float`, *optional*): stop polling after this many seconds (batches stay recorded for a later run).
    """
    if not isinstance(judge, OpenAIJudge):
        raise TypeError(f"--batch needs an OpenAIJudge, got {type(judge).__name__}")
    if judge.combined:
        raise ValueError("--batch sends one request per perspective; drop --combined")
    if not 1 <= max_requests_per_file <= MAX_REQUESTS_PER_FILE:
        raise ValueError(
            f"`max_requests_per_file` must be in [1, {MAX_REQUESTS_PER_FILE}], got {max_requests_per_file}"
        )
    if not 1 <= max_bytes_per_file <= MAX_BYTES_PER_FILE:
        raise ValueError(f"`max_bytes_per_file` must be in [1, {MAX_BYTES_PER_FILE}], got {max_bytes_per_file}")
    started = time.monotonic()
    pricing = pricing if pricing is not None else default_pricing(judge)
    planned = plan_annotation(items, judge, store, write=not dry_run)
    in_open_batches = store.keys_in_open_batches()
    summary = AnnotationSummary(items=len(planned), dry_run=dry_run, batch=True)
    summary.cached = sum(3 - len(item.todo) for item in planned)
    summary.calls_planned = count_calls(planned, judge) - sum(
        1 for item in planned for p in item.todo if item.keys[p] in in_open_batches
    )
    if dry_run:
        (
            summary.estimated_prompt_tokens,
            summary.estimated_completion_tokens,
            summary.estimated_cost_usd,
            summary.estimate_skipped_items,
        ) = estimate(planned, judge, pricing, batch=True)
        return summary

    client = judge.sync_client()
    work_dir = Path(work_dir) if work_dir is not None else store.path.with_name(store.path.name + ".batches")
    work_dir.mkdir(parents=True, exist_ok=True)

    def submit(path: Path, requests: list[tuple[str, str, str]]) -> None:
        with path.open("rb") as handle:
            uploaded = client.files.create(file=handle, purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint=BATCH_ENDPOINT,
            completion_window="24h",
            metadata={"source": "reward-edit annotate", "store": store.path.name},
        )
        store.add_batch(batch.id, uploaded.id, batch.status, requests)
        print(f"submitted batch {batch.id}: {len(requests)} requests ({path.name})", file=sys.stderr)

    writer = _ChunkWriter(submit, work_dir, max_requests_per_file, max_bytes_per_file)
    submitted: set[str] = set(in_open_batches)
    for item in planned:
        todo = [p for p in item.todo if item.keys[p] not in submitted]
        if not todo:
            continue
        triplet = item.triplet
        roles = sorted({role for p in todo for role in judge.images_seen(p)})
        prepared, errors = {}, {}
        from .images import prepare_image

        for role in roles:
            try:
                source = triplet.original if role == "original" else triplet.edited
                prepared[role] = prepare_image(source, judge.image_max_side, judge.image_format, judge.jpeg_quality)
            except ImageLoadError as error:
                errors[role] = error
        for perspective in todo:
            key = item.keys[perspective]
            missing = [role for role in judge.images_seen(perspective) if role in errors]
            if missing:
                error = errors[missing[0]]
                judgment = PerspectiveJudgment.failure(
                    perspective,
                    error.reason,
                    f"{missing[0]} image: {error}",
                    prompt_id=judge.prompts[perspective].id,
                    attempts=0,
                )
                store.record(key, triplet.id, judgment, judge.name, judge.fingerprint(perspective))
                summary.judged_failed += 1
                continue
            body = judge.request_body(perspective, triplet.instruction, prepared)
            line = json.dumps({"custom_id": key, "method": "POST", "url": BATCH_ENDPOINT, "body": body}) + "\n"
            writer.add(line.encode("utf-8"), (key, triplet.id, perspective))
            submitted.add(key)
            summary.requests += 1
    writer.flush()

    if not submit_only:
        deadline = None if max_wait is None else time.monotonic() + max_wait
        while True:
            open_batches = store.open_batches()
            if not open_batches:
                break
            for record in open_batches:
                batch = client.batches.retrieve(record["batch_id"])
                if batch.status != record["status"]:
                    store.update_batch(batch.id, status=batch.status)
                    if progress:
                        counts = getattr(batch, "request_counts", None)
                        print(f"batch {batch.id}: {batch.status} {counts or ''}", file=sys.stderr)
                if batch.status in TERMINAL_STATUSES:
                    ok, failed, prompt_tokens, completion_tokens = ingest_batch(judge, store, batch)
                    summary.judged_ok += ok
                    summary.judged_failed += failed
                    summary.prompt_tokens += prompt_tokens
                    summary.completion_tokens += completion_tokens
            if not store.open_batches() or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(poll_interval)
    summary.elapsed_s = time.monotonic() - started
    finalize_summary(summary, planned, store)
    summary.cost_usd = pricing.cost(summary.prompt_tokens, summary.completion_tokens, batch=True) if pricing else None
    return summary
