"""The judge interface: one editing triplet in, one judgment per perspective out.

A judge grades ``(instruction, original image, edited image)`` from the three perspectives of the paper, in the order
following, preserving, quality. Every perspective ends either ``ok`` (a score in [0, 5], a verdict and a failure text)
or failed with a reason code and the raw reply; a judge never guesses a score.

Backends implement `Judge.ajudge`: `OpenAIJudge` (any OpenAI-compatible server, in `openai_judge.py`) and
`FunctionJudge` (a Python callable, e.g. a programmatic judge for synthetic data, in `function_judge.py`). No torch
is imported here.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from ..rewards import MAX_SCORE, MIN_SCORE, PERSPECTIVES, join_failure_texts
from .limits import CallLimiter

ImageInput = Any  # a PIL image, a path (str or os.PathLike) or encoded image bytes
Verdict = Literal["yes", "no"]

# Reason codes of failed judgments. Stable strings: they are stored and counted in summaries.
FAILURE_REASONS: dict[str, str] = {
    "image_missing": "an input image file does not exist",
    "image_corrupt": "an input image could not be decoded",
    "empty_reply": "the model answered with no text",
    "refusal": "the model refused to grade",
    "unparsable_reply": "the reply holds no judgment that can be parsed",
    "missing_score": "the parsed reply has no score",
    "invalid_score": "the score is not a number",
    "score_out_of_range": f"the score is outside [{MIN_SCORE:g}, {MAX_SCORE:g}]",
    "invalid_verdict": "the verdict is neither 'yes' nor 'no'",
    "truncated_reply": "the reply was cut off (finish_reason=length)",
    "content_filter": "the reply was blocked by a content filter",
    "rate_limited": "HTTP 429 after all retries",
    "server_error": "HTTP 5xx after all retries",
    "timeout": "the request timed out after all retries",
    "connection_error": "the connection failed after all retries",
    "http_error": "a non-retryable HTTP error (4xx)",
    "malformed_response": "the server's response is not a valid chat completion",
    "batch_error": "the Batch API reported an error for this request",
    "judge_error": "the judge raised an unexpected exception",
}


class JudgeConfigurationError(RuntimeError):
    """A judge that cannot work at all (e.g. its API key variable is unset): raised, never recorded per item."""


@dataclass(frozen=True)
class PerspectiveJudgment:
    """The outcome of grading one perspective.

    Attributes:
        perspective: one of ``"following"``, ``"preserving"``, ``"quality"``.
        score: the score in [0, 5], or ``None`` when the judgment failed.
        verdict: ``"yes"``/``"no"`` (used for the benchmark's following accuracy), ``None`` if absent or failed.
        failure_text: the failure points named by the judge; ``""`` when nothing failed (or the judgment failed).
        ok: True when the judgment succeeded.
        error: the failure reason code (a key of `FAILURE_REASONS`) when ``ok`` is False, else ``None``.
        error_message: a human-readable explanation of ``error``.
        raw_reply: the model's raw reply text, kept for failures and successes alike.
        prompt_id: the id of the prompt that produced this judgment.
        model: the model snapshot the server reported (e.g. ``"gpt-4o-2024-08-06"``).
        prompt_tokens / completion_tokens: token usage reported by the server (0 if unknown).
        attempts: number of requests made (retries included).
    """

    perspective: str
    score: float | None
    verdict: Verdict | None
    failure_text: str
    ok: bool
    error: str | None = None
    error_message: str | None = None
    raw_reply: str | None = None
    prompt_id: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1

    def __post_init__(self) -> None:
        if self.perspective not in PERSPECTIVES:
            raise ValueError(f"`perspective` must be one of {PERSPECTIVES}, got {self.perspective!r}")
        if self.ok:
            if self.score is None or not (MIN_SCORE <= self.score <= MAX_SCORE):
                raise ValueError(
                    f"an ok judgment needs a score in [{MIN_SCORE:g}, {MAX_SCORE:g}], got {self.score!r} "
                    f"({self.perspective})"
                )
            if self.error is not None:
                raise ValueError(f"an ok judgment cannot carry an error, got {self.error!r}")
        elif self.error is None:
            raise ValueError(f"a failed judgment needs an `error` reason code ({self.perspective})")
        if self.verdict not in (None, "yes", "no"):
            raise ValueError(f"`verdict` must be 'yes', 'no' or None, got {self.verdict!r}")

    @classmethod
    def success(
        cls, perspective: str, score: float, verdict: Verdict | None, failure_text: str = "", **kwargs: Any
    ) -> PerspectiveJudgment:
        return cls(perspective, float(score), verdict, failure_text or "", True, None, **kwargs)

    @classmethod
    def failure(
        cls, perspective: str, error: str, error_message: str | None = None, **kwargs: Any
    ) -> PerspectiveJudgment:
        if error not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {error!r}; use one of {sorted(FAILURE_REASONS)}")
        return cls(perspective, None, None, "", False, error, error_message, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JudgeResult:
    """Judgments of one triplet, in the order following, preserving, quality (or the requested subset)."""

    judgments: tuple[PerspectiveJudgment, ...]
    judge_name: str = ""
    prompt_ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = [j.perspective for j in self.judgments]
        if order != sorted(order, key=PERSPECTIVES.index) or len(set(order)) != len(order):
            raise ValueError(f"judgments must be unique and in the order {PERSPECTIVES}, got {order}")

    def __getitem__(self, perspective: str) -> PerspectiveJudgment:
        for judgment in self.judgments:
            if judgment.perspective == perspective:
                return judgment
        raise KeyError(f"no judgment for perspective {perspective!r}; have {[j.perspective for j in self.judgments]}")

    @property
    def ok(self) -> bool:
        return all(j.ok for j in self.judgments)

    @property
    def model(self) -> str | None:
        """The resolved model snapshot(s) reported by the server, comma-joined if they differ."""
        models = sorted({j.model for j in self.judgments if j.model})
        return ",".join(models) if models else None

    @property
    def scores(self) -> tuple[float | None, ...]:
        return tuple(j.score for j in self.judgments)

    @property
    def verdicts(self) -> tuple[str | None, ...]:
        return tuple(j.verdict for j in self.judgments)

    @property
    def failure_texts(self) -> tuple[str, ...]:
        return tuple(j.failure_text for j in self.judgments)

    @property
    def failure_text(self) -> str:
        """The three failure texts joined with ``"; "`` (``"None"`` for an empty one): the model's conditioning text."""
        if [j.perspective for j in self.judgments] != list(PERSPECTIVES):
            raise ValueError("the joined failure text needs all three perspectives")
        return join_failure_texts(self.failure_texts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge_name": self.judge_name,
            "prompt_ids": dict(self.prompt_ids),
            "judgments": [j.to_dict() for j in self.judgments],
        }


def check_perspectives(perspectives: Sequence[str] | None) -> tuple[str, ...]:
    """Validate a requested subset and return it in canonical order."""
    if perspectives is None:
        return PERSPECTIVES
    if isinstance(perspectives, str):
        perspectives = [perspectives]
    unknown = [p for p in perspectives if p not in PERSPECTIVES]
    if unknown or not perspectives:
        raise ValueError(f"`perspectives` must be a non-empty subset of {PERSPECTIVES}, got {list(perspectives)!r}")
    return tuple(p for p in PERSPECTIVES if p in perspectives)


T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="reward-edit-judge", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Judge(abc.ABC):
    """Grades editing triplets. Subclasses implement `ajudge` and `fingerprint`.

    The annotation store keys each perspective's judgment by the content of the images the perspective sees, the
    instruction and `fingerprint(perspective)`; a judge must put into the fingerprint everything that changes its
    output (prompt id and text, model, sampling and image settings), and nothing else.
    """

    #: a short name for logs and records
    name: str = "judge"

    @abc.abstractmethod
    def fingerprint(self, perspective: str) -> dict[str, Any]:
        """JSON-serializable settings that determine this perspective's judgment."""

    def images_seen(self, perspective: str) -> tuple[str, ...]:
        """Which of ``("original", "edited")`` the perspective looks at (used for store keys)."""
        return ("original", "edited")

    def prompt_id(self, perspective: str) -> str:
        return str(self.fingerprint(perspective).get("prompt_id", self.name))

    def fingerprint_digest(self, perspective: str) -> str:
        payload = json.dumps(self.fingerprint(perspective), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def estimate_call(
        self, perspective: str, image_sizes: Mapping[str, tuple[int, int]], instruction: str
    ) -> tuple[int, int]:
        """Estimated (prompt tokens, completion tokens) of one call; 0 for judges that call no API."""
        return 0, 0

    @abc.abstractmethod
    async def ajudge(
        self,
        instruction: str,
        original: ImageInput,
        edited: ImageInput,
        *,
        perspectives: Sequence[str] | None = None,
        limiter: CallLimiter | None = None,
    ) -> JudgeResult:
        """Grade one triplet.

        Args:
            instruction (`str`): the editing instruction.
            original, edited: PIL images, paths or encoded bytes.
            perspectives (`Sequence[str]`, *optional*): a subset to grade; defaults to all three.
            limiter (`CallLimiter`, *optional*): shared concurrency/rate limits for API calls (the engine passes one).

        Never raises for bad images or bad replies: those become failed judgments with a reason.
        """

    def judge(
        self,
        instruction: str,
        original: ImageInput,
        edited: ImageInput,
        *,
        perspectives: Sequence[str] | None = None,
    ) -> JudgeResult:
        """Synchronous `ajudge` (works from plain code and from threads that already run an event loop)."""

        async def judge_then_release() -> JudgeResult:
            try:
                return await self.ajudge(instruction, original, edited, perspectives=perspectives)
            finally:
                await self.aclose()  # clients are bound to the event loop that run_sync closes

        return run_sync(judge_then_release())

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release network resources bound to the running event loop (no-op by default)."""

    def close(self) -> None:
        run_sync(self.aclose())
