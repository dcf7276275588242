"""`FunctionJudge`: a judge backed by a Python callable (programmatic judges for synthetic data, tests, studies)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from .base import ImageInput, Judge, JudgeResult, PerspectiveJudgment, check_perspectives
from .images import ImageLoadError, load_image
from .limits import CallLimiter
from .parsing import judgment_from_fields

JudgeFunction = Callable[..., Any]


class FunctionJudge(Judge):
    """A judge backed by a Python callable: for programmatic judges (synthetic data, tests, replication studies).

    ``function(perspective, instruction, original_image, edited_image)`` receives RGB PIL images (EXIF orientation
    applied) and returns either a `PerspectiveJudgment` or a ``(score, verdict, failure_text)`` tuple. It may be
    sync or async. Exceptions become ``judge_error`` failures; a score outside [0, 5] becomes
    ``score_out_of_range``. ``version`` goes into the store key: bump it when the function's behaviour changes.
    """

    def __init__(self, function: JudgeFunction, name: str = "function-judge", version: str = "1") -> None:
        if not callable(function):
            raise TypeError(f"`function` must be callable, got {type(function).__name__}")
        self.function = function
        self.name = name
        self.version = version

    def fingerprint(self, perspective: str) -> dict[str, Any]:
        return {"judge": self.name, "version": self.version, "prompt_id": f"{self.name}@{self.version}"}

    async def _one(self, perspective: str, instruction: str, original: Any, edited: Any) -> PerspectiveJudgment:
        prompt_id = self.prompt_id(perspective)
        try:
            value = self.function(perspective, instruction, original, edited)
            if asyncio.iscoroutine(value):
                value = await value
        except Exception as error:  # a programmatic judge's bug is recorded, not hidden
            return PerspectiveJudgment.failure(
                perspective, "judge_error", f"{type(error).__name__}: {error}", prompt_id=prompt_id, model=self.name
            )
        if isinstance(value, PerspectiveJudgment):
            return value
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            return PerspectiveJudgment.failure(
                perspective,
                "judge_error",
                f"the judge function must return a PerspectiveJudgment or (score, verdict, failure_text), got {value!r}",
                prompt_id=prompt_id,
                model=self.name,
            )
        score, verdict, failure_text = value
        fields = {"score": score, "verdict": verdict, "failure_text": failure_text}
        return judgment_from_fields(
            perspective, fields, raw_reply=json.dumps(fields, default=str), prompt_id=prompt_id, model=self.name
        )

    async def ajudge(
        self,
        instruction: str,
        original: ImageInput,
        edited: ImageInput,
        *,
        perspectives: Sequence[str] | None = None,
        limiter: CallLimiter | None = None,
    ) -> JudgeResult:
        wanted = check_perspectives(perspectives)
        loaded: dict[str, Any] = {}
        for role, source in (("original", original), ("edited", edited)):
            try:
                loaded[role] = await asyncio.to_thread(load_image, source)
            except ImageLoadError as error:
                failures = tuple(
                    PerspectiveJudgment.failure(
                        p, error.reason, f"{role} image: {error}", prompt_id=self.prompt_id(p), model=self.name
                    )
                    for p in wanted
                )
                return JudgeResult(failures, self.name, {p: self.prompt_id(p) for p in wanted})
        judgments = await asyncio.gather(
            *(self._one(p, instruction, loaded["original"], loaded["edited"]) for p in wanted)
        )
        return JudgeResult(tuple(judgments), self.name, {p: self.prompt_id(p) for p in wanted})
