"""`run_evaluation`: load the benchmark, generate every edit, score it, and write the report.

Output folder layout::

    <out>/originals/<image>.<key>.png            # each photo resized as the models see it
    <out>/edits/<setting slug>/<item>.<key>.png  # the edited images (cached; re-runs skip them)
    <out>/metrics_cache.jsonl                    # non-LVLM metric values (cached per edited file and metric model)
    <out>/report.json, report.md, index.html, plots/*.png

Judgments live in the annotation store (default ``<out>/judgments.sqlite``), which makes re-runs call the judge only
for what is not finished yet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..rewards import PERSPECTIVES
from .generation import (
    EditPlan,
    EditRecord,
    EditSetting,
    GenerationConfig,
    PipelineLoader,
    build_settings,
    default_pipeline_loader,
    generate_edits,
    plan_edits,
)
from .loaders import EDIT_TYPES, BenchmarkItem, load_benchmark
from .metrics import MetricSuite, load_metric_suite
from .report import build_report, write_html, write_json, write_markdown, write_plots
from .stats import DEFAULT_BOOTSTRAP_RESAMPLES

# (records to judge, progress) -> {(setting slug, item id): {perspective: judgment dict}}
JudgeEdits = Callable[[Sequence[EditRecord], bool], Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]]]


@dataclass
class EvaluationConfig:
    """Everything `run_evaluation` needs besides the judge.

    Attributes:
        bench: benchmark folder or file (see `load_benchmark`).
        models: models to evaluate (`load_pipeline` arguments).
        score_settings: reward conditions to run each model with.
        out_dir: output folder.
        generation: how edits are generated.
        failure_text: the failure-text condition (``None``: each model's "no failure" text).
        limit: evaluate only the first ``limit`` items of the benchmark.
        compare: two settings (label, slug or 1-based index) for the win/loss view, or ``None``.
        metrics: which optional metric families to try (``"clip"``, ``"dino"``); L1/L2 always run.
        clip_model / dino_model: local weights for the optional metrics (see `load_metric_suite`).
        bootstrap_resamples: resamples of each confidence interval.
        judge_description: shown in the report (e.g. the judge model).
        progress: show progress bars.
    """

    bench: Path
    models: Sequence[str]
    out_dir: Path
    score_settings: Sequence[tuple[float, float, float]] = ((5.0, 5.0, 5.0),)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    failure_text: str | None = None
    limit: int | None = None
    compare: Sequence[str] | None = None
    metrics: Sequence[str] = ("clip", "dino")
    clip_model: str | None = None
    dino_model: str | None = None
    bootstrap_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES
    judge_description: str | None = None
    progress: bool = True


def select_items(items: Sequence[BenchmarkItem], limit: int | None) -> list[BenchmarkItem]:
    if limit is None:
        return list(items)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"`limit` (--limit) must be an integer >= 1, got {limit!r}")
    return list(items[:limit])


def resolve_compare(compare: Sequence[str] | None, settings: Sequence[EditSetting]) -> tuple[str, str] | None:
    """Map ``--compare`` to two setting slugs: ``[]`` means "the two settings of this run"."""
    if compare is None:
        return None
    choices = ", ".join(repr(setting.label) for setting in settings)
    if len(compare) == 0:
        if len(settings) != 2:
            raise ValueError(
                f"--compare without arguments needs exactly 2 settings, this run has {len(settings)} ({choices}); "
                "name the two to compare: --compare A B"
            )
        return settings[0].slug, settings[1].slug
    if len(compare) != 2:
        raise ValueError(f"--compare takes 0 or 2 settings, got {len(compare)}: {list(compare)!r}")
    slugs = []
    for name in compare:
        matches = [
            setting
            for index, setting in enumerate(settings, start=1)
            if name in (setting.label, setting.slug, setting.model, str(index))
        ]
        if len(matches) != 1:
            raise ValueError(
                f"--compare {name!r} must name exactly one setting by label, folder name or 1-based index; "
                f"settings are: {choices}"
            )
        slugs.append(matches[0].slug)
    if slugs[0] == slugs[1]:
        raise ValueError(f"--compare needs two different settings, got {list(compare)!r} twice the same")
    return slugs[0], slugs[1]


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def compute_metrics(
    plan: EditPlan, suite: MetricSuite, cache_path: Path, progress: bool = True
) -> dict[tuple[str, str], dict[str, float]]:
    """Metric values per (setting, item), cached in a JSONL file keyed by edited file name and metric set."""
    from tqdm.auto import tqdm

    suite_key = ",".join(suite.available) + "|" + ",".join(getattr(s, "model_name", "") for s in suite.scorers)
    cache: dict[str, dict[str, float]] = {}
    if cache_path.is_file():
        for line in cache_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash: recomputed below
                continue
            if isinstance(entry, dict) and entry.get("suite") == suite_key:
                cache[entry["edited"]] = entry["values"]
    values: dict[tuple[str, str], dict[str, float]] = {}
    pending = []
    for key, record in plan.records.items():
        if record.edited_path.name in cache:
            values[key] = cache[record.edited_path.name]
        else:
            pending.append((key, record))
    if pending:
        with open(cache_path, "a", encoding="utf-8") as handle:
            for key, record in tqdm(pending, desc="metrics", unit="img", disable=not progress):
                with Image.open(record.original_path) as original, Image.open(record.edited_path) as edited:
                    values[key] = suite(original.convert("RGB"), edited.convert("RGB"), record.item.instruction)
                entry = {"suite": suite_key, "edited": record.edited_path.name, "values": values[key]}
                handle.write(json.dumps(entry) + "\n")
                handle.flush()
    return values


def run_evaluation(
    config: EvaluationConfig,
    judge_edits: JudgeEdits | None,
    pipeline_loader: PipelineLoader = default_pipeline_loader,
) -> dict[str, Any]:
    """Run the whole benchmark and write ``report.json``, ``report.md``, ``index.html`` and plots into ``out_dir``.

    Args:
        config: what to evaluate and how.
        judge_edits: grades a list of `EditRecord` (see `reward_edit_pipeline.benchmark.scoring.make_store_judge`);
            ``None`` skips LVLM judging (the report then holds only the non-LVLM metrics, with a notice).
        pipeline_loader: loads one setting's pipeline (tests and callers can inject their own).

    Returns the report dict (as written to ``report.json``).
    """
    out_dir = Path(config.out_dir)
    items = select_items(load_benchmark(config.bench), config.limit)
    settings = build_settings(config.models, config.score_settings, config.failure_text)
    compare = resolve_compare(config.compare, settings)
    out_dir.mkdir(parents=True, exist_ok=True)

    plan = plan_edits(items, settings, config.generation, out_dir)
    generated = generate_edits(plan, settings, pipeline_loader, progress=config.progress)

    notices: list[str] = []
    suite = load_metric_suite(
        config.clip_model, config.dino_model, device=config.generation.device or "cpu", enabled=config.metrics
    )
    notices += suite.notices
    metric_values = compute_metrics(plan, suite, out_dir / "metrics_cache.jsonl", config.progress)

    judgments: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]] = {}
    if judge_edits is None:
        notices.append("LVLM judging skipped (--no-judge): only non-LVLM metrics are reported")
    else:
        judgments = judge_edits(list(plan.records.values()), config.progress)

    rows = []
    for (slug, item_id), record in plan.records.items():
        item_judgments = judgments.get((slug, item_id))
        rows.append(
            {
                "setting": slug,
                "item_id": item_id,
                "image": record.item.image_name,
                "edit_type": record.item.edit_type,
                "instruction": record.item.instruction,
                "original": _relative(record.original_path, out_dir),
                "edited": _relative(record.edited_path, out_dir),
                "judgments": None if item_judgments is None else {p: dict(item_judgments[p]) for p in PERSPECTIVES},
                "metrics": metric_values.get((slug, item_id), {}),
            }
        )
    snapshots = sorted(
        {
            judgment["model"]
            for item_judgments in judgments.values()
            for judgment in item_judgments.values()
            if judgment.get("model")
        }
    )
    run_info = {
        "bench": str(config.bench),
        "n_items": len(items),
        "judge_model": config.judge_description,
        "judge_snapshots": snapshots,
        "generated_now": generated,
        **{key: value for key, value in asdict(config.generation).items()},
        "failure_text": config.failure_text,
    }
    settings_info = [
        {
            "slug": s.slug,
            "label": s.label,
            "model": s.model,
            "reward_scores": list(s.reward_scores),
            "failure_text": s.failure_text,
        }
        for s in settings
    ]
    edit_types = [t for t in EDIT_TYPES if any(item.edit_type == t for item in items)]
    edit_types += sorted({item.edit_type for item in items} - set(edit_types))
    report = build_report(
        rows,
        settings_info,
        edit_types,
        run_info,
        notices,
        metric_names=suite.available,
        compare=compare,
        resamples=config.bootstrap_resamples,
        seed=config.generation.seed,
    )
    plot_files, plot_notices = write_plots(report, out_dir / "plots")
    report["notices"] += plot_notices
    write_json(report, out_dir / "report.json")
    write_markdown(report, out_dir / "report.md")
    write_html(report, out_dir / "index.html", plot_files)
    return report
