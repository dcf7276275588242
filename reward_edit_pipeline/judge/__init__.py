"""The multi-reward LVLM judge and the annotation engine (no torch needed).

>>> from reward_edit_pipeline.judge import OpenAIJudge
>>> judge = OpenAIJudge(model="gpt-4o")  # key from $OPENAI_API_KEY  # doctest: +SKIP
>>> result = judge.judge("make the sky pink", "before.jpg", "after.jpg")  # doctest: +SKIP
>>> result.scores, result.failure_texts, result.verdicts  # doctest: +SKIP
"""

from .base import (
    FAILURE_REASONS,
    Judge,
    JudgeConfigurationError,
    JudgeResult,
    PerspectiveJudgment,
    check_perspectives,
)
from .engine import AnnotationSummary, annotate, plan_annotation, run_annotation
from .function_judge import FunctionJudge
from .limits import CallLimiter
from .openai_judge import OpenAIJudge, parse_retry_after
from .parsing import ReplyParseError, extract_fields, judgment_from_reply
from .pricing import KNOWN_PRICES, Pricing, pricing_for
from .prompts import PromptTemplate, load_judgment_schema, load_prompt_set
from .store import AnnotationStore, StoredItem, call_key

__all__ = [
    "FAILURE_REASONS",
    "KNOWN_PRICES",
    "AnnotationStore",
    "AnnotationSummary",
    "CallLimiter",
    "FunctionJudge",
    "Judge",
    "JudgeConfigurationError",
    "JudgeResult",
    "OpenAIJudge",
    "PerspectiveJudgment",
    "Pricing",
    "PromptTemplate",
    "ReplyParseError",
    "StoredItem",
    "annotate",
    "call_key",
    "check_perspectives",
    "extract_fields",
    "judgment_from_reply",
    "load_judgment_schema",
    "load_prompt_set",
    "plan_annotation",
    "parse_retry_after",
    "pricing_for",
    "run_annotation",
]
