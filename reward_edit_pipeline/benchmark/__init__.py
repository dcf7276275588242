"""The Real-Edit benchmark: load a benchmark, edit every item with each model/setting, judge, and report.

`reward-edit evaluate` is the command-line shell over `run_evaluation`; see docs/evaluate.md.
"""

from .generation import EditSetting, GenerationConfig, build_settings, official_edit_size, prepare_input_image
from .loaders import (
    EDIT_TYPES,
    BenchmarkFormatError,
    BenchmarkItem,
    load_benchmark,
    load_jsonl_benchmark,
    load_real_edit,
)
from .report import build_report, compare_settings, summarize_rows
from .runner import EvaluationConfig, run_evaluation
from .scoring import judge_edit_records, make_store_judge
from .stats import bootstrap_mean, sign_test_p_value

__all__ = [
    "EDIT_TYPES",
    "BenchmarkFormatError",
    "BenchmarkItem",
    "EditSetting",
    "EvaluationConfig",
    "GenerationConfig",
    "bootstrap_mean",
    "build_report",
    "build_settings",
    "compare_settings",
    "judge_edit_records",
    "load_benchmark",
    "load_jsonl_benchmark",
    "load_real_edit",
    "make_store_judge",
    "official_edit_size",
    "prepare_input_image",
    "run_evaluation",
    "sign_test_p_value",
    "summarize_rows",
]
