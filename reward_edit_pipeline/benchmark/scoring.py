"""Score benchmark edits with the project's judge and annotation store (resumable, no repeated calls).

Every (setting, item) edit becomes a `Triplet` with id ``"<setting slug>/<item id>.<edit key>"`` (the edited file's
name without ``.png``, so runs with other generation settings never share an id) and is graded by
`reward_edit_pipeline.judge.annotate`; the store keys judgments by image content, instruction and judge settings, so a
re-run calls the judge only for judgments that are missing or failed before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..rewards import PERSPECTIVES
from .generation import EditRecord

JudgmentDict = dict[str, Any]
JudgeEdits = Callable[[Sequence[EditRecord], bool], Mapping[tuple[str, str], Mapping[str, JudgmentDict]]]


def store_item_id(record: EditRecord) -> str:
    """The id of an edit in the annotation store."""
    return f"{record.setting.slug}/{record.edited_path.stem}"


def judgment_to_dict(judgment: Any) -> JudgmentDict:
    """The report's view of a `PerspectiveJudgment`."""
    return {
        "ok": judgment.ok,
        "score": judgment.score,
        "verdict": judgment.verdict,
        "failure_text": judgment.failure_text,
        "error": judgment.error,
        "error_message": judgment.error_message,
        "model": judgment.model,
        "prompt_id": judgment.prompt_id,
    }


def _not_judged(perspective: str) -> JudgmentDict:
    return {
        "ok": False,
        "score": None,
        "verdict": None,
        "failure_text": "",
        "error": "not_judged",
        "error_message": f"no {perspective} judgment in the store after the run",
        "model": None,
        "prompt_id": None,
    }


def judge_edit_records(
    records: Sequence[EditRecord],
    judge: Any,
    store_path: str | os.PathLike,
    *,
    concurrency: int = 16,
    rpm: float | None = None,
    tpm: float | None = None,
    progress: bool = True,
) -> tuple[dict[tuple[str, str], dict[str, JudgmentDict]], Any]:
    """Grade every edit of `records` into the store and read all three judgments of each back.

    Returns ``({(setting slug, item id): {perspective: judgment dict}}, AnnotationSummary)``. A perspective without a
    stored judgment (which the engine should never leave) is reported as failed with reason ``not_judged``.
    """
    from ..data.triplets import Triplet
    from ..judge import AnnotationStore, annotate

    triplets = [
        Triplet(
            id=store_item_id(record),
            instruction=record.item.instruction,
            original=record.original_path,
            edited=record.edited_path,
        )
        for record in records
    ]
    results: dict[tuple[str, str], dict[str, JudgmentDict]] = {}
    with AnnotationStore(store_path) as store:
        summary = annotate(triplets, judge, store, concurrency=concurrency, rpm=rpm, tpm=tpm, progress=progress)
        for record, triplet in zip(records, triplets):
            stored = store.get(triplet.id)
            stored_judgments = stored.judgments if stored is not None else {}
            results[(record.setting.slug, record.item.item_id)] = {
                p: judgment_to_dict(stored_judgments[p]) if p in stored_judgments else _not_judged(p)
                for p in PERSPECTIVES
            }
    return results, summary


def make_store_judge(
    store_path: str | os.PathLike,
    base_url: str | None = None,
    model: str = "gpt-4o",
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 16,
    rpm: float | None = None,
    tpm: float | None = None,
    judge: Any = None,
    summaries: list | None = None,
) -> JudgeEdits:
    """A `run_evaluation` judge callback backed by an `OpenAIJudge` (or the given `judge`) and an annotation store.

    The API key is read from the environment variable `api_key_env` (checked here, before any work starts).
    Each call's `AnnotationSummary` is appended to `summaries` when given (e.g. to count calls).
    """
    if judge is None:
        from ..judge.factory import make_judge

        try:
            judge = make_judge(model=model, base_url=base_url, api_key_env=api_key_env)
        except ValueError as error:
            raise ValueError(f"{error}; or pass --no-judge") from None
    store_path = Path(store_path)

    def judge_edits(records: Sequence[EditRecord], progress: bool) -> dict[tuple[str, str], dict[str, JudgmentDict]]:
        results, summary = judge_edit_records(
            records, judge, store_path, concurrency=concurrency, rpm=rpm, tpm=tpm, progress=progress
        )
        if summaries is not None:
            summaries.append(summary)
        return results

    return judge_edits
