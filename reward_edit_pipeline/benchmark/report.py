"""Aggregate per-item results into the benchmark report and write it as JSON, Markdown, HTML and PNG plots.

A *row* is one (setting, item) result, a JSON-friendly dict::

    {"setting": slug, "item_id": ..., "image": ..., "edit_type": ..., "instruction": ...,
     "original": "originals/...png", "edited": "edits/<slug>/...png",      # relative to the output folder
     "judgments": {"following": {"ok", "score", "verdict", "failure_text", "error", "error_message"}, ...} | None,
     "metrics": {"l1": ..., "l2": ..., ...}}

Each statistic is computed over the judgments of its perspective that succeeded; failed ones are counted (per
perspective and per reason) and listed, never dropped silently. Following accuracy is the share of ``"yes"`` verdicts
among successful following judgments that carry a verdict.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..rewards import PERSPECTIVES
from .stats import DEFAULT_BOOTSTRAP_RESAMPLES, bootstrap_mean, sign_test_p_value

REPORT_VERSION = 1


def summarize_rows(
    rows: Sequence[Mapping[str, Any]],
    metric_names: Sequence[str] = (),
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Statistics of one group of rows (one setting, overall or one edit type)."""
    summary: dict[str, Any] = {"n_items": len(rows)}
    judged_rows = [row for row in rows if row.get("judgments") is not None]
    summary["n_judged_items"] = len(judged_rows)
    summary["n_fully_judged_items"] = sum(
        1 for row in judged_rows if all(row["judgments"][p]["ok"] for p in PERSPECTIVES)
    )
    failed: dict[str, int] = {}
    reasons: Counter[str] = Counter()
    for perspective in PERSPECTIVES:
        failures = [row["judgments"][perspective] for row in judged_rows if not row["judgments"][perspective]["ok"]]
        failed[perspective] = len(failures)
        reasons.update(judgment["error"] for judgment in failures)
    summary["failed_judgments"] = {**failed, "total": sum(failed.values()), "by_reason": dict(sorted(reasons.items()))}

    following_ok = [row["judgments"]["following"] for row in judged_rows if row["judgments"]["following"]["ok"]]
    verdicts = [1.0 if judgment["verdict"] == "yes" else 0.0 for judgment in following_ok if judgment["verdict"]]
    summary["following_verdicts_missing"] = sum(1 for judgment in following_ok if not judgment["verdict"])
    summary["following_accuracy"] = bootstrap_mean(verdicts, resamples, seed=seed).to_dict()
    for perspective in PERSPECTIVES:
        scores = [row["judgments"][perspective]["score"] for row in judged_rows if row["judgments"][perspective]["ok"]]
        summary[f"mean_{perspective}"] = bootstrap_mean(scores, resamples, seed=seed).to_dict()
    for perspective in ("preserving", "quality"):
        yes = [
            1.0 if row["judgments"][perspective]["verdict"] == "yes" else 0.0
            for row in judged_rows
            if row["judgments"][perspective]["ok"] and row["judgments"][perspective]["verdict"]
        ]
        summary[f"{perspective}_yes_rate"] = bootstrap_mean(yes, resamples, seed=seed).to_dict()
    summary["metrics"] = {
        name: bootstrap_mean(
            [row["metrics"][name] for row in rows if row.get("metrics", {}).get(name) is not None], resamples, seed=seed
        ).to_dict()
        for name in metric_names
    }
    return summary


def _compare_outcome(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, perspective: str) -> str | None:
    if a is None or b is None or not a[perspective]["ok"] or not b[perspective]["ok"]:
        return None
    if a[perspective]["score"] > b[perspective]["score"]:
        return "win"
    if a[perspective]["score"] < b[perspective]["score"]:
        return "loss"
    return "tie"


def _tally(outcomes: Sequence[str | None]) -> dict[str, Any]:
    counts = Counter(outcomes)
    wins, ties, losses = counts.get("win", 0), counts.get("tie", 0), counts.get("loss", 0)
    return {
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "not_compared": counts.get(None, 0),
        "sign_test_p": sign_test_p_value(wins, losses),
    }


def compare_settings(
    rows: Sequence[Mapping[str, Any]], setting_a: str, setting_b: str, edit_types: Sequence[str]
) -> dict[str, Any]:
    """Per-item wins/ties/losses of setting A against setting B, per perspective (by score) and overall/per type.

    An item whose judgment failed on either side is "not compared" for that perspective (and counted as such).
    """
    by_key = {(row["setting"], row["item_id"]): row for row in rows}
    item_ids = [row["item_id"] for row in rows if row["setting"] == setting_a]
    items = []
    for item_id in item_ids:
        row_a, row_b = by_key[(setting_a, item_id)], by_key.get((setting_b, item_id))
        if row_b is None:
            continue
        judgments_a, judgments_b = row_a.get("judgments"), row_b.get("judgments")
        items.append(
            {
                "item_id": item_id,
                "edit_type": row_a["edit_type"],
                "outcomes": {p: _compare_outcome(judgments_a, judgments_b, p) for p in PERSPECTIVES},
                "scores_a": {p: (judgments_a or {}).get(p, {}).get("score") for p in PERSPECTIVES},
                "scores_b": {p: (judgments_b or {}).get(p, {}).get("score") for p in PERSPECTIVES},
            }
        )

    def tally_group(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {p: _tally([item["outcomes"][p] for item in group]) for p in PERSPECTIVES}

    return {
        "a": setting_a,
        "b": setting_b,
        "n_items": len(items),
        "overall": tally_group(items),
        "by_type": {
            edit_type: tally_group([item for item in items if item["edit_type"] == edit_type])
            for edit_type in edit_types
            if any(item["edit_type"] == edit_type for item in items)
        },
        "items": items,
    }


def build_report(
    rows: Sequence[Mapping[str, Any]],
    settings: Sequence[Mapping[str, Any]],
    edit_types: Sequence[str],
    run_info: Mapping[str, Any],
    notices: Sequence[str] = (),
    metric_names: Sequence[str] = (),
    compare: tuple[str, str] | None = None,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole report as a JSON-friendly dict (`settings` are dicts with at least ``slug`` and ``label``)."""
    results = {}
    for setting in settings:
        setting_rows = [row for row in rows if row["setting"] == setting["slug"]]
        results[setting["slug"]] = {
            "overall": summarize_rows(setting_rows, metric_names, resamples, seed),
            "by_type": {
                edit_type: summarize_rows(
                    [row for row in setting_rows if row["edit_type"] == edit_type], metric_names, resamples, seed
                )
                for edit_type in edit_types
                if any(row["edit_type"] == edit_type for row in setting_rows)
            },
        }
    report = {
        "version": REPORT_VERSION,
        "run": dict(run_info),
        "notices": list(notices),
        "settings": [dict(setting) for setting in settings],
        "edit_types": list(edit_types),
        "metric_names": list(metric_names),
        "bootstrap": {"resamples": resamples, "confidence": 0.95, "seed": seed},
        "results": results,
        "items": [dict(row) for row in rows],
    }
    if compare is not None:
        report["comparison"] = compare_settings(rows, compare[0], compare[1], edit_types)
    return report


# ----------------------------------------------------------------------------------------------------------- writers


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_json(report: Mapping[str, Any], path: Path) -> None:
    _write_text_atomic(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _fmt(estimate: Mapping[str, Any], percent: bool = False) -> str:
    if estimate["mean"] is None:
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 2)
    return (
        f"{estimate['mean'] * scale:.{digits}f} "
        f"[{estimate['ci_low'] * scale:.{digits}f}, {estimate['ci_high'] * scale:.{digits}f}]"
    )


_TABLE_COLUMNS = ("Following acc. %", "Following", "Preserving", "Quality", "Items", "Failed judgments")


def _table_cells(summary: Mapping[str, Any]) -> list[str]:
    failed = summary["failed_judgments"]
    failed_text = str(failed["total"])
    if failed["total"]:
        failed_text += " (" + ", ".join(f"{p[0].upper()}:{failed[p]}" for p in PERSPECTIVES if failed[p]) + ")"
    return [
        _fmt(summary["following_accuracy"], percent=True),
        _fmt(summary["mean_following"]),
        _fmt(summary["mean_preserving"]),
        _fmt(summary["mean_quality"]),
        str(summary["n_items"]),
        failed_text,
    ]


COMPARISON_HEADER = ["Type", "Perspective", "Wins", "Ties", "Losses", "Not compared", "Sign test p"]


def _comparison_rows(comparison: dict[str, Any]) -> list[list[str]]:
    """Rows of the per-item wins/ties/losses table (overall, then per edit type), shared by Markdown and HTML."""
    rows = []
    for group, tallies in [("all", comparison["overall"]), *comparison["by_type"].items()]:
        for perspective in PERSPECTIVES:
            tally = tallies[perspective]
            p_value = "n/a" if tally["sign_test_p"] is None else f"{tally['sign_test_p']:.3g}"
            rows.append(
                [group, perspective, str(tally["wins"]), str(tally["ties"]), str(tally["losses"]),
                 str(tally["not_compared"]), p_value]
            )  # fmt: skip
    return rows


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report's tables as Markdown (values: mean [95 % bootstrap CI])."""
    run = report["run"]
    labels = {setting["slug"]: setting["label"] for setting in report["settings"]}
    lines = [
        "# Real-Edit evaluation",
        "",
        f"Benchmark: `{run.get('bench')}` ({run.get('n_items')} items); judge: `{run.get('judge_model')}`; "
        f"seed {run.get('seed')}, {run.get('steps')} steps, resolution {run.get('resolution')}.",
        'Values are means with 95 % bootstrap confidence intervals; following accuracy is the share of "yes" '
        "verdicts. Failed judgments are counted, not dropped (F/P/Q: following/preserving/quality).",
        "",
    ]
    for notice in report["notices"]:
        lines.append(f"> Note: {notice}")
    if report["notices"]:
        lines.append("")
    lines += ["## Overall", ""]
    lines += _markdown_table(
        ["Setting", *_TABLE_COLUMNS],
        [[labels[slug], *_table_cells(result["overall"])] for slug, result in report["results"].items()],
    )
    for slug, result in report["results"].items():
        lines += ["", f"## {labels[slug]} by edit type", ""]
        lines += _markdown_table(
            ["Type", *_TABLE_COLUMNS],
            [[edit_type, *_table_cells(summary)] for edit_type, summary in result["by_type"].items()],
        )
    if report["metric_names"]:
        lines += ["", "## Non-LVLM metrics (original vs edited)", ""]
        lines += _markdown_table(
            ["Setting", *report["metric_names"]],
            [
                [labels[slug], *(_fmt(result["overall"]["metrics"][name]) for name in report["metric_names"])]
                for slug, result in report["results"].items()
            ],
        )
    comparison = report.get("comparison")
    if comparison:
        lines += ["", f"## {labels[comparison['a']]} vs {labels[comparison['b']]} (per-item wins/ties/losses)", ""]
        lines += _markdown_table(COMPARISON_HEADER, _comparison_rows(comparison))
    return "\n".join(lines) + "\n"


def write_markdown(report: Mapping[str, Any], path: Path) -> None:
    _write_text_atomic(path, render_markdown(report))


def write_plots(report: Mapping[str, Any], plots_dir: Path) -> tuple[list[str], list[str]]:
    """PNG plots of score distributions and per-type following accuracy; returns (files, notices)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ["plots skipped: matplotlib is not installed (pip install 'reward-edit-pipeline[report]')"]
    import numpy as np

    plots_dir.mkdir(parents=True, exist_ok=True)
    labels = {setting["slug"]: setting["label"] for setting in report["settings"]}
    slugs = list(report["results"])
    files = []

    figure, axes = plt.subplots(1, len(PERSPECTIVES), figsize=(4.2 * len(PERSPECTIVES), 3.4), squeeze=False)
    bins = np.arange(-0.25, 5.5, 0.5)
    for axis, perspective in zip(axes[0], PERSPECTIVES):
        data = [
            [
                row["judgments"][perspective]["score"]
                for row in report["items"]
                if row["setting"] == slug and row.get("judgments") and row["judgments"][perspective]["ok"]
            ]
            for slug in slugs
        ]
        if any(data):
            axis.hist(data, bins=bins, label=[labels[slug] for slug in slugs])
        axis.set_title(perspective)
        axis.set_xlabel("score")
        axis.set_xticks(range(6))
    axes[0][0].set_ylabel("items")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize="small")
    figure.tight_layout()
    path = plots_dir / "score_distributions.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    files.append(path.name)

    edit_types = report["edit_types"]
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(edit_types)), 3.4))
    width = 0.8 / max(1, len(slugs))
    for index, slug in enumerate(slugs):
        by_type = report["results"][slug]["by_type"]
        means, errors = [], [[], []]
        for edit_type in edit_types:
            estimate = by_type.get(edit_type, {}).get("following_accuracy", {"mean": None})
            mean = estimate["mean"]
            means.append(0.0 if mean is None else 100 * mean)
            errors[0].append(0.0 if mean is None else 100 * (mean - estimate["ci_low"]))
            errors[1].append(0.0 if mean is None else 100 * (estimate["ci_high"] - mean))
        positions = np.arange(len(edit_types)) + (index - (len(slugs) - 1) / 2) * width
        axis.bar(positions, means, width, yerr=errors, capsize=2, label=labels[slug])
    axis.set_xticks(np.arange(len(edit_types)), edit_types)
    axis.set_ylabel("following accuracy (%)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize="small")
    figure.tight_layout()
    path = plots_dir / "following_accuracy_by_type.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    files.append(path.name)
    return files, []


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; font-size: 0.9em; }
.grid td { width: 260px; }
.grid img { max-width: 256px; max-height: 256px; display: block; }
.ok { color: #176317; } .no { color: #a31515; } .failed { color: #a31515; font-weight: bold; }
.notice { background: #fff7d6; border: 1px solid #e0c860; padding: 0.4em 0.8em; margin: 0.3em 0; }
.small { font-size: 0.8em; color: #555; }
"""


def _judgment_html(judgments: Mapping[str, Any] | None) -> str:
    if judgments is None:
        return "<div class='small'>not judged</div>"
    parts = []
    for perspective in PERSPECTIVES:
        judgment = judgments[perspective]
        name = html.escape(perspective)
        if not judgment["ok"]:
            message = html.escape(judgment.get("error_message") or "")
            parts.append(f"<div class='failed'>{name}: failed ({html.escape(judgment['error'])}) {message}</div>")
            continue
        verdict = judgment.get("verdict")
        verdict_html = f" <span class='{'ok' if verdict == 'yes' else 'no'}'>{verdict}</span>" if verdict else ""
        failure = judgment.get("failure_text") or ""
        failure_html = f"<div class='small'>{html.escape(failure)}</div>" if failure else ""
        parts.append(f"<div><b>{name}</b> {judgment['score']:g}{verdict_html}{failure_html}</div>")
    return "".join(parts)


def render_html(report: Mapping[str, Any], plot_files: Sequence[str] = ()) -> str:
    """A static page: summary tables, plots, the comparison, and an image grid (original | each setting's edit)."""
    esc = html.escape
    labels = {setting["slug"]: setting["label"] for setting in report["settings"]}
    slugs = list(report["results"])
    run = report["run"]
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Real-Edit evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Real-Edit evaluation</h1>",
        f"<p class='small'>Benchmark <code>{esc(str(run.get('bench')))}</code>, {run.get('n_items')} items; judge "
        f"<code>{esc(str(run.get('judge_model')))}</code>; seed {run.get('seed')}, {run.get('steps')} steps. "
        "Values: mean [95 % bootstrap CI]. Failed judgments are counted, never dropped.</p>",
    ]
    out += [f"<div class='notice'>{esc(notice)}</div>" for notice in report["notices"]]

    def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
        rows_html = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in body)
        return f"<table><tr>{head}</tr>{rows_html}</table>"

    out.append("<h2>Overall</h2>")
    out.append(
        table(
            ["Setting", *_TABLE_COLUMNS],
            [[labels[slug], *_table_cells(report["results"][slug]["overall"])] for slug in slugs],
        )
    )
    for slug in slugs:
        out.append(f"<h3>{esc(labels[slug])} by edit type</h3>")
        out.append(
            table(
                ["Type", *_TABLE_COLUMNS],
                [[t, *_table_cells(s)] for t, s in report["results"][slug]["by_type"].items()],
            )
        )
    if report["metric_names"]:
        out.append("<h2>Non-LVLM metrics (original vs edited)</h2>")
        out.append(
            table(
                ["Setting", *report["metric_names"]],
                [
                    [
                        labels[slug],
                        *(_fmt(report["results"][slug]["overall"]["metrics"][m]) for m in report["metric_names"]),
                    ]
                    for slug in slugs
                ],
            )
        )
    for plot in plot_files:
        out.append(f"<p><img src='plots/{esc(plot)}' alt='{esc(plot)}'></p>")
    comparison = report.get("comparison")
    if comparison:
        out.append(f"<h2>{esc(labels[comparison['a']])} vs {esc(labels[comparison['b']])}</h2>")
        out.append(table(COMPARISON_HEADER, _comparison_rows(comparison)))

    out.append("<h2>Edits</h2><table class='grid'><tr><th>Original</th>")
    out += [f"<th>{esc(labels[slug])}</th>" for slug in slugs]
    out.append("</tr>")
    by_key = {(row["setting"], row["item_id"]): row for row in report["items"]}
    item_ids = list(dict.fromkeys(row["item_id"] for row in report["items"]))  # first-seen order
    for item_id in item_ids:
        first = next(by_key[(slug, item_id)] for slug in slugs if (slug, item_id) in by_key)
        out.append(
            f"<tr id='{esc(item_id)}'><td><img src='{esc(first['original'])}' alt='original'>"
            f"<div><b>{esc(first['edit_type'])}</b>: {esc(first['instruction'])}</div>"
            f"<div class='small'>{esc(item_id)}</div></td>"
        )
        for slug in slugs:
            row = by_key.get((slug, item_id))
            if row is None:
                out.append("<td></td>")
                continue
            out.append(
                f"<td><img src='{esc(row['edited'])}' alt='{esc(labels[slug])}'>{_judgment_html(row.get('judgments'))}</td>"
            )
        out.append("</tr>")
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"


def write_html(report: Mapping[str, Any], path: Path, plot_files: Sequence[str] = ()) -> None:
    _write_text_atomic(path, render_html(report, plot_files))
