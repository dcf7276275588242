"""Replicate the paper's central claim at CPU scale, end to end with the project's own code.

    .venv/bin/python -m experiments.replication.run --out runs/replication          # full run (~25 min, 2 CPU cores)
    .venv/bin/python -m experiments.replication.run --out /tmp/smoke --smoke        # wiring check (~1 min)

Steps: world + flawed training triplets -> rewards by the exact judge through `annotate` + `AnnotationStore` -> a
tiny VAE fitted to the world -> per seed, from one common random InstructPix2Pix initialization and with equal steps:
(a) `baseline`: stage 1 (InstructPix2Pix, no rewards), (b) `reward`: stage 2 (scores + failure texts), (c)
`scores_only`: stage 2 with every failure text "None" -> all trained by `reward_edit_pipeline.train.main` -> loaded
with `load_pipeline`, edits of held-out scenes with rewards (5, 5, 5) and no failure text, graded by the exact judge
through the same annotation engine -> table, significance tests, plots, a reward sweep.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .flaws import AXES, FlawConfig, flawed_ground_truth
from .judge import WorldRegistry, make_exact_judge
from .world import EDIT_TYPES, Sample, generate_samples, image_key

logger = logging.getLogger("replication")

VARIANTS = ("baseline", "reward", "scores_only")
PERSPECTIVES = ("following", "preserving", "quality")
TRAIN_WORLD_SEED, EVAL_WORLD_SEED = 1_000, 2_000


# ----------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="experiments.replication.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Output folder (created; re-running reuses finished stages).")
    parser.add_argument("--train-size", type=int, default=2800, help="Training triplets (default 2800).")
    parser.add_argument("--eval-size", type=int, default=140, help="Held-out evaluation triplets (default 140).")
    parser.add_argument("--flaw-rate", type=float, default=0.4, help="Fraction of flawed ground truths, in [0, 1].")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Training seeds (default 0 1 2).")
    parser.add_argument(
        "--variants", nargs="+", default=["baseline", "reward"], choices=VARIANTS, help="Default: baseline reward."
    )
    parser.add_argument("--steps", type=int, default=1200, help="Optimization steps per model (equal for all).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--inference-steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--image-guidance-scale", type=float, default=1.5)
    parser.add_argument(
        "--sweep-values",
        type=float,
        nargs="*",
        default=[1.0, 3.0, 5.0],
        help="Requested following (and quality) scores of the inference sweep; empty to skip.",
    )
    parser.add_argument("--jobs", type=int, default=2, help="Training processes at a time (one thread each).")
    parser.add_argument("--image-size", type=int, default=16, help="World image side: 16 (default), 32 or 64.")
    parser.add_argument("--smoke", action="store_true", help="Trivial sizes: checks the wiring, not the claim.")
    return parser


def validate(args: argparse.Namespace) -> argparse.Namespace:
    if args.smoke:
        args.train_size, args.eval_size, args.steps = 56, 14, 3
        args.inference_steps, args.seeds, args.batch_size = 2, args.seeds[:1], 8
        args.sweep_values = [1.0, 5.0]
        args.variants = list(VARIANTS)
    checks = [
        (args.train_size >= 7, f"--train-size must be >= 7 (one per edit type), got {args.train_size}"),
        (args.eval_size >= 7, f"--eval-size must be >= 7 (one per edit type), got {args.eval_size}"),
        (0.0 <= args.flaw_rate <= 1.0, f"--flaw-rate must be in [0, 1], got {args.flaw_rate}"),
        (args.steps >= 1, f"--steps must be >= 1, got {args.steps}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.jobs >= 1, f"--jobs must be >= 1, got {args.jobs}"),
        (args.inference_steps >= 1, f"--inference-steps must be >= 1, got {args.inference_steps}"),
        (args.learning_rate > 0, f"--learning-rate must be > 0, got {args.learning_rate}"),
        (args.image_size in (16, 32, 64), f"--image-size must be 16, 32 or 64, got {args.image_size}"),
        (all(0 <= v <= 5 for v in args.sweep_values), f"--sweep-values must be in [0, 5], got {args.sweep_values}"),
        (len(set(args.seeds)) == len(args.seeds), f"--seeds must be distinct, got {args.seeds}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    return args


# ----------------------------------------------------------------------------------------------- data
def _save_png(array: np.ndarray, path: Path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def build_world(args: argparse.Namespace, out: Path) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """Training samples (with flawed ground truths written to disk) and held-out evaluation samples."""
    train = generate_samples(args.train_size, TRAIN_WORLD_SEED, args.image_size, prefix="t")
    evaluation = generate_samples(args.eval_size, EVAL_WORLD_SEED, args.image_size, prefix="e")
    train_keys = {image_key(s.edit.instruction, s.result.original) for s in train}
    held_out = [s for s in evaluation if image_key(s.edit.instruction, s.result.original) not in train_keys]
    data = out / "data"
    (data / "train").mkdir(parents=True, exist_ok=True)
    (data / "eval").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(TRAIN_WORLD_SEED + 1)
    config = FlawConfig(rate=args.flaw_rate)
    rows, flaw_rows = [], []
    for sample in train:
        edited, applied = flawed_ground_truth(sample, config, rng)
        original_path = _save_png(sample.result.original, data / "train" / f"{sample.sample_id}_0.png")
        edited_path = _save_png(edited, data / "train" / f"{sample.sample_id}_1.png")
        rows.append(
            {
                "id": sample.sample_id,
                "instruction": sample.edit.instruction,
                "original": original_path,
                "edited": edited_path,
            }
        )
        flaw_rows.append({"id": sample.sample_id, "edit_type": sample.edit.edit_type, **applied.__dict__})
    _write_jsonl(data / "train.jsonl", rows)
    _write_jsonl(data / "train_flaws.jsonl", flaw_rows)
    eval_rows = []
    for sample in held_out:
        original_path = _save_png(sample.result.original, data / "eval" / f"{sample.sample_id}_0.png")
        target_path = _save_png(sample.result.target, data / "eval" / f"{sample.sample_id}_target.png")
        eval_rows.append(
            {
                "id": sample.sample_id,
                "instruction": sample.edit.instruction,
                "original": original_path,
                "target": target_path,
                "edit_type": sample.edit.edit_type,
            }
        )
    _write_jsonl(data / "eval.jsonl", eval_rows)
    stats = {
        "train_triplets": len(train),
        "eval_triplets": len(held_out),
        "eval_dropped_as_seen_in_training": len(evaluation) - len(held_out),
        "flawed_fraction": float(np.mean([any(r[a] for a in AXES) for r in flaw_rows])),
        "flawed_by_axis": {a: float(np.mean([bool(r[a]) for r in flaw_rows])) for a in AXES},
    }
    return train, held_out, stats


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def annotate_training(out: Path, registry: WorldRegistry) -> dict[str, Any]:
    """Rewards of the training triplets by the exact judge, through the project's annotation engine and store."""
    from reward_edit_pipeline.data import iter_triplets
    from reward_edit_pipeline.judge import AnnotationStore, annotate

    judge = make_exact_judge(registry)
    store_path = out / "rewards.sqlite"
    with AnnotationStore(store_path) as store:
        summary = annotate(iter_triplets(out / "data" / "train.jsonl"), judge, store, concurrency=8, progress=False)
        items = list(store.iter_items())
    scores = np.array([item.scores for item in items if item.complete], dtype=float)
    # scores-only ablation: the same scores, every failure text empty ("None; None; None")
    rows = [
        {"id": item.item_id, "status": "done", "scores": list(item.scores), "failure_texts": ["", "", ""]}
        for item in items
        if item.complete
    ]
    _write_jsonl(out / "rewards_scores_only.jsonl", rows)
    return {
        "annotation_summary": summary.format(),
        "annotated": len(items),
        "complete": int(len(scores)),
        "mean_scores": dict(zip(PERSPECTIVES, scores.mean(axis=0).round(3).tolist())),
        "fraction_below_5": dict(zip(PERSPECTIVES, (scores < 5).mean(axis=0).round(3).tolist())),
    }


# ----------------------------------------------------------------------------------------------- models
def build_base(args: argparse.Namespace, out: Path, train: list[Sample]) -> dict[str, Any]:
    """The identity VAE (scaled on the training images) and one random-UNet InstructPix2Pix folder per seed: the
    common initialization of every variant of that seed."""
    from .models import build_identity_vae, save_base_pipeline, set_scaling_factor

    rows = [json.loads(line) for line in open(out / "data" / "train.jsonl", encoding="utf-8")]
    images = [np.asarray(Image.open(r["edited"]).convert("RGB")) for r in rows]
    vae = build_identity_vae(args.image_size)
    scaling = set_scaling_factor(vae, np.stack(images))
    for seed in args.seeds:
        save_base_pipeline(out / "base" / f"seed{seed}", vae, unet_seed=seed, text_seed=0, image_size=args.image_size)
    return {"kind": "identity AutoencoderKL (pixels as latents)", "scaling_factor": scaling}


def trainer_arguments(args: argparse.Namespace, out: Path, seed: int, variant: str) -> list[str]:
    """The flags of one training run of the project's trainer (`python -m reward_edit_pipeline.train`)."""
    output_dir = out / "models" / f"seed{seed}" / variant
    argv = [
        "--stage",
        "1" if variant == "baseline" else "2",
        "--pretrained_model_name_or_path",
        str(out / "base" / f"seed{seed}"),
        "--train_data_dir",
        str(out / "data" / "train.jsonl"),
        "--output_dir",
        str(output_dir),
        "--resolution",
        str(args.image_size),
        "--no-random_flip",  # "top left" / "top right" are in the instructions: a flip would contradict them
        "--train_batch_size",
        str(args.batch_size),
        "--gradient_accumulation_steps",
        "1",
        "--max_train_steps",
        str(args.steps),
        "--learning_rate",
        str(args.learning_rate),
        "--lr_scheduler",
        "cosine",
        "--lr_warmup_steps",
        str(max(1, args.steps // 20)),
        "--mixed_precision",
        "no",
        "--no-gradient_checkpointing",
        "--dataloader_num_workers",
        "0",
        "--cache_latents",
        "--latents_cache_dir",
        str(out / "latents_cache" / f"seed{seed}_{variant}"),
        "--use_ema",
        "--ema_decay",
        "0.995",
        "--report_to",
        "none",
        "--checkpointing_steps",
        str(args.steps + 1),
        "--seed",
        str(seed),
    ]
    if variant == "reward":
        argv += ["--rewards", str(out / "rewards.sqlite")]
    elif variant == "scores_only":
        argv += ["--rewards", str(out / "rewards_scores_only.jsonl")]
    return argv


def train_all(args: argparse.Namespace, out: Path, runs: list[tuple[int, str]]) -> dict[str, float]:
    """Train every (seed, variant) with the project's trainer, `--jobs` processes at a time, one torch thread each
    (two OpenMP threads per process on a shared 2-core machine slow training down many times over)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending = []
    for seed, variant in runs:
        output_dir = out / "models" / f"seed{seed}" / variant
        if (output_dir / "train_summary.json").is_file():
            continue  # finished by an earlier invocation
        if output_dir.exists():
            shutil.rmtree(output_dir)
        pending.append((seed, variant))
    running: list[tuple[subprocess.Popen, int, str, float, Any]] = []
    durations: dict[str, float] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            seed, variant = pending.pop(0)
            (out / "logs").mkdir(parents=True, exist_ok=True)
            log = open(out / "logs" / f"train_seed{seed}_{variant}.log", "w", encoding="utf-8")
            command = [sys.executable, "-m", "reward_edit_pipeline.train"] + trainer_arguments(args, out, seed, variant)
            logger.info("training seed %d %s: %s", seed, variant, " ".join(command))
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
            running.append((process, seed, variant, time.perf_counter(), log))
        time.sleep(1.0)
        for entry in list(running):
            process, seed, variant, started, log = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            log.close()
            if process.returncode != 0:
                for other in running:
                    other[0].kill()
                raise RuntimeError(
                    f"training seed {seed} {variant} failed (exit {process.returncode}); see "
                    f"{out / 'logs' / f'train_seed{seed}_{variant}.log'}"
                )
            durations[f"train_seed{seed}_{variant}"] = round(time.perf_counter() - started, 1)
            logger.info("trained seed %d %s in %.1f s", seed, variant, durations[f"train_seed{seed}_{variant}"])
    return durations


def training_summary(out: Path, seed: int, variant: str) -> dict[str, Any]:
    path = out / "models" / f"seed{seed}" / variant / "train_summary.json"
    return json.loads(path.read_text(encoding="utf-8"))


def generate_edits(
    args: argparse.Namespace,
    model_dir: Path,
    eval_rows: list[dict[str, Any]],
    reward_scores: tuple[float, ...],
    seed: int,
    batch: int = 70,
) -> list[np.ndarray]:
    """Edits of the held-out scenes by the project's pipeline (`load_pipeline` -> `RewardEditPipeline`)."""
    import torch

    from reward_edit_pipeline import load_pipeline

    pipe = load_pipeline(str(model_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    edits: list[np.ndarray] = []
    for start in range(0, len(eval_rows), batch):
        rows = eval_rows[start : start + batch]
        images = [Image.open(r["original"]).convert("RGB") for r in rows]
        generator = torch.Generator().manual_seed(10_000 * seed + start)
        with torch.no_grad():
            output = pipe(
                [r["instruction"] for r in rows],
                image=images,
                reward_scores=reward_scores,
                failure_text=None,
                num_inference_steps=args.inference_steps,
                guidance_scale=args.guidance_scale,
                image_guidance_scale=args.image_guidance_scale,
                generator=generator,
                output_type="np",
            )
        edits += [np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8) for image in output.images]
    return edits


def judge_edits(
    out: Path, name: str, eval_rows: list[dict[str, Any]], edits: list[np.ndarray], registry: WorldRegistry
) -> list[dict[str, Any]]:
    """Grade edits with the exact judge through `annotate` + `AnnotationStore` (the LVLM code path)."""
    from reward_edit_pipeline.data import iter_triplets
    from reward_edit_pipeline.judge import AnnotationStore, annotate

    folder = out / "edits" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for row, edit in zip(eval_rows, edits):
        rows.append(
            {
                "id": row["id"],
                "instruction": row["instruction"],
                "original": row["original"],
                "edited": _save_png(edit, folder / f"{row['id']}.png"),
            }
        )
    _write_jsonl(folder / "manifest.jsonl", rows)
    with AnnotationStore(folder / "judgments.sqlite") as store:
        annotate(
            iter_triplets(folder / "manifest.jsonl"), make_exact_judge(registry), store, concurrency=8, progress=False
        )
        results = []
        for row in eval_rows:
            item = store.get(row["id"])
            if item is None or not item.complete:
                raise RuntimeError(f"judging {name}/{row['id']} failed: {item and item.judgments}")
            results.append(
                {
                    "id": row["id"],
                    "edit_type": row["edit_type"],
                    "scores": list(item.scores),
                    "following_yes": item.judgments["following"].verdict == "yes",
                    "failure_texts": list(item.failure_texts),
                }
            )
    return results


def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
    scores = np.array([r["scores"] for r in results], dtype=float)
    summary = {p: float(scores[:, i].mean()) for i, p in enumerate(PERSPECTIVES)}
    summary["following_accuracy"] = float(np.mean([r["following_yes"] for r in results]))
    summary["all_yes"] = float(np.mean([r["following_yes"] and min(r["scores"][1:]) >= 4 for r in results]))
    return summary


# ----------------------------------------------------------------------------------------------- statistics
METRICS = ("following_accuracy", "following", "preserving", "quality")


def compare(per_item: dict[str, dict[int, list[dict[str, Any]]]], a: str, b: str) -> dict[str, Any]:
    """Paired tests of variant `b` against `a` over (seed, item) pairs: the two share the seed's initialization and
    the same sampling noise. Wilcoxon signed-rank for scores, exact McNemar (binomial on discordant pairs) for
    following accuracy; plus Welch's t-test on the per-seed means (few seeds: low power)."""
    from scipy import stats

    seeds = sorted(set(per_item[a]) & set(per_item[b]))
    tests: dict[str, Any] = {}
    for index, perspective in enumerate(PERSPECTIVES):
        x = np.array([r["scores"][index] for s in seeds for r in per_item[a][s]])
        y = np.array([r["scores"][index] for s in seeds for r in per_item[b][s]])
        difference = y - x
        if np.all(difference == 0):
            p_value = 1.0
        else:
            p_value = float(stats.wilcoxon(y, x, zero_method="wilcox").pvalue)
        seed_a = [np.mean([r["scores"][index] for r in per_item[a][s]]) for s in seeds]
        seed_b = [np.mean([r["scores"][index] for r in per_item[b][s]]) for s in seeds]
        welch = float(stats.ttest_ind(seed_b, seed_a, equal_var=False).pvalue) if len(seeds) > 1 else float("nan")
        tests[perspective] = {
            "mean_difference": float(difference.mean()),
            "wilcoxon_p": p_value,
            "welch_seed_means_p": welch,
            "pairs": int(len(x)),
        }
    x = np.array([r["following_yes"] for s in seeds for r in per_item[a][s]])
    y = np.array([r["following_yes"] for s in seeds for r in per_item[b][s]])
    only_b, only_a = int(np.sum(y & ~x)), int(np.sum(x & ~y))
    p_value = float(stats.binomtest(only_b, only_b + only_a, 0.5).pvalue) if only_a + only_b else 1.0
    seed_a = [np.mean([r["following_yes"] for r in per_item[a][s]]) for s in seeds]
    seed_b = [np.mean([r["following_yes"] for r in per_item[b][s]]) for s in seeds]
    welch = float(stats.ttest_ind(seed_b, seed_a, equal_var=False).pvalue) if len(seeds) > 1 else float("nan")
    tests["following_accuracy"] = {
        "mean_difference": float(y.mean() - x.mean()),
        "mcnemar_exact_p": p_value,
        "discordant": [only_b, only_a],
        "welch_seed_means_p": welch,
        "pairs": int(len(x)),
    }
    return tests


def format_table(per_seed: dict[str, dict[int, dict[str, float]]], tests: dict[str, Any]) -> str:
    lines = [
        "| model | following acc. (%) | following | preserving | quality | all three ok (%) |",
        "|---|---|---|---|---|---|",
    ]
    for variant, seeds in per_seed.items():
        cells = []
        for metric in ("following_accuracy", "following", "preserving", "quality", "all_yes"):
            values = np.array([seeds[s][metric] for s in sorted(seeds)])
            scale = 100.0 if metric in ("following_accuracy", "all_yes") else 1.0
            std = values.std(ddof=1) * scale if len(values) > 1 else 0.0
            cells.append(f"{values.mean() * scale:.2f} ± {std:.2f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, test in tests.items():
        lines.append(f"**{name}** (paired over seed × item):")
        for metric, values in test.items():
            p_name = "mcnemar_exact_p" if metric == "following_accuracy" else "wilcoxon_p"
            lines.append(
                f"- {metric}: difference {values['mean_difference']:+.3f}, {p_name.split('_')[0]} p = "
                f"{values[p_name]:.2g}, Welch on seed means p = {values['welch_seed_means_p']:.2g} "
                f"({values['pairs']} pairs)"
            )
    return "\n".join(lines)


def plot(out: Path, per_seed: dict[str, dict[int, dict[str, float]]], sweeps: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    variants = list(per_seed)
    for axis, metric in zip(axes, METRICS):
        values = [
            [per_seed[v][s][metric] * (100 if metric == "following_accuracy" else 1) for s in sorted(per_seed[v])]
            for v in variants
        ]
        means = [np.mean(v) for v in values]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
        axis.bar(range(len(variants)), means, yerr=stds, capsize=4, color=["#888", "#2a7", "#7ad"][: len(variants)])
        for number, v in enumerate(values):
            axis.scatter([number] * len(v), v, color="k", s=10, zorder=3)
        axis.set_xticks(range(len(variants)), variants, rotation=15)
        axis.set_title(metric.replace("_", " ") + (" (%)" if metric == "following_accuracy" else " (0-5)"))
    figure.tight_layout()
    path = out / "scores.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    paths.append(str(path))
    if sweeps:
        figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for axis, (swept, metric) in zip(axes, (("following", "following_accuracy"), ("quality", "quality"))):
            for variant, by_value in sweeps.get(swept, {}).items():
                xs = sorted(by_value, key=float)
                ys = [
                    np.mean([m[metric] for m in by_value[x].values()]) * (100 if "accuracy" in metric else 1)
                    for x in xs
                ]
                es = [
                    np.std([m[metric] for m in by_value[x].values()]) * (100 if "accuracy" in metric else 1) for x in xs
                ]
                axis.errorbar([float(x) for x in xs], ys, yerr=es, marker="o", capsize=3, label=variant)
            axis.set_xlabel(f"requested {swept} score (others 5)")
            axis.set_ylabel(metric.replace("_", " "))
            axis.legend()
        figure.tight_layout()
        path = out / "sweep.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(str(path))
    return paths


def save_examples(out: Path, eval_rows: list[dict[str, Any]], variants: list[str], seed: int, count: int = 14) -> str:
    """A grid: original | clean target | each variant's edit, for the first `count` held-out items."""
    chosen = []
    for edit_type in EDIT_TYPES:
        chosen += [r for r in eval_rows if r["edit_type"] == edit_type][: max(1, count // len(EDIT_TYPES))]
    tiles = []
    for row in chosen:
        images = [
            np.asarray(Image.open(row["original"]).convert("RGB")),
            np.asarray(Image.open(row["target"]).convert("RGB")),
        ]
        for variant in variants:
            images.append(np.asarray(Image.open(out / "edits" / f"seed{seed}_{variant}" / f"{row['id']}.png")))
        tiles.append(np.concatenate([np.pad(i, ((1, 1), (1, 1), (0, 0)), constant_values=255) for i in images], 1))
    grid = np.concatenate(tiles, 0)
    path = out / "examples.png"
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)
    (out / "examples.txt").write_text(
        "columns: original | clean target | "
        + " | ".join(variants)
        + f" (seed {seed})\n"
        + "\n".join(r["instruction"] for r in chosen)
        + "\n",
        encoding="utf-8",
    )
    return str(path)


# ----------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # see `train_all`: oversubscribed OpenMP threads are the slowest option on a busy CPU
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        logger.info("%s: %.1f s", name, timings[name])
        return time.perf_counter()

    t = time.perf_counter()
    train, held_out, world_stats = build_world(args, out)
    registry = WorldRegistry(train + held_out)
    t = lap("world", t)
    annotation_stats = annotate_training(out, registry)
    t = lap("annotation", t)
    vae_stats = build_base(args, out, train)
    t = lap("vae_and_init", t)

    eval_rows = [json.loads(line) for line in open(out / "data" / "eval.jsonl", encoding="utf-8")]
    # Upper references, graded by the same judge: the clean targets and the VAE round trip of the targets.
    reference = {}
    reference["clean_target"] = summarize(
        judge_edits(
            out,
            "clean_target",
            eval_rows,
            [np.asarray(Image.open(r["target"]).convert("RGB")) for r in eval_rows],
            registry,
        )
    )
    reference["vae_round_trip_of_target"] = summarize(
        judge_edits(
            out,
            "vae_round_trip",
            eval_rows,
            vae_round_trip(out / "base" / f"seed{args.seeds[0]}", [r["target"] for r in eval_rows]),
            registry,
        )
    )
    reference["unedited_original"] = summarize(
        judge_edits(
            out,
            "unedited",
            eval_rows,
            [np.asarray(Image.open(r["original"]).convert("RGB")) for r in eval_rows],
            registry,
        )
    )

    train_summaries: dict[str, Any] = {}
    per_item: dict[str, dict[int, list[dict[str, Any]]]] = {v: {} for v in args.variants}
    per_seed: dict[str, dict[int, dict[str, float]]] = {v: {} for v in args.variants}
    sweeps: dict[str, dict[str, dict[str, dict[int, dict[str, float]]]]] = {}
    t = time.perf_counter()
    timings.update(train_all(args, out, [(seed, variant) for seed in args.seeds for variant in args.variants]))
    t = lap("training_all", t)
    for seed in args.seeds:
        for variant in args.variants:
            t = time.perf_counter()
            summary = training_summary(out, seed, variant)
            train_summaries[f"seed{seed}/{variant}"] = {
                k: summary[k]
                for k in (
                    "optimization_steps",
                    "samples_seen",
                    "final_loss",
                    "wall_time_s",
                    "mean_step_time_s",
                    "base_model_handling",
                )
            }
            model_dir = out / "models" / f"seed{seed}" / variant
            edits = generate_edits(args, model_dir, eval_rows, (5.0, 5.0, 5.0), seed)
            results = judge_edits(out, f"seed{seed}_{variant}", eval_rows, edits, registry)
            per_item[variant][seed] = results
            per_seed[variant][seed] = summarize(results)
            if variant != "baseline":
                for swept, index in (("following", 0), ("quality", 2)):
                    for value in args.sweep_values:
                        requested = [5.0, 5.0, 5.0]
                        requested[index] = float(value)
                        if value == 5.0:
                            metrics = per_seed[variant][seed]
                        else:
                            sweep_edits = generate_edits(args, model_dir, eval_rows, tuple(requested), seed)
                            metrics = summarize(
                                judge_edits(
                                    out, f"seed{seed}_{variant}_{swept}{value:g}", eval_rows, sweep_edits, registry
                                )
                            )
                        sweeps.setdefault(swept, {}).setdefault(variant, {}).setdefault(f"{value:g}", {})[seed] = (
                            metrics
                        )
            t = lap(f"eval_seed{seed}_{variant}", t)

    tests = {}
    if "baseline" in args.variants:
        for variant in args.variants:
            if variant != "baseline":
                tests[f"{variant} vs baseline"] = compare(per_item, "baseline", variant)
    table = format_table(per_seed, tests)
    plots = plot(out, per_seed, sweeps)
    examples = save_examples(out, eval_rows, args.variants, args.seeds[0])
    by_type = {
        variant: {
            edit_type: float(
                np.mean(
                    [
                        r["following_yes"]
                        for s in per_item[variant]
                        for r in per_item[variant][s]
                        if r["edit_type"] == edit_type
                    ]
                )
            )
            for edit_type in EDIT_TYPES
        }
        for variant in args.variants
    }
    report = {
        "command": " ".join([sys.executable, "-m", "experiments.replication.run"] + sys.argv[1:]),
        "arguments": vars(args),
        "world": world_stats,
        "training_rewards": annotation_stats,
        "vae": vae_stats,
        "references": reference,
        "per_seed": per_seed,
        "following_accuracy_by_edit_type": by_type,
        "tests": tests,
        "sweeps": sweeps,
        "training": train_summaries,
        "timings_s": timings,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "plots": plots + [examples],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "results.md").write_text(format_report(report, table), encoding="utf-8")
    logger.info("results:\n%s", table)
    logger.info("wall time %.1f s; report in %s", report["wall_time_s"], out / "results.md")
    return report


def vae_round_trip(model_dir: Path, paths: list[str]) -> list[np.ndarray]:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae").eval()
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths])
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels.float() / 127.5 - 1).latent_dist.mode()).sample
    return list(((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


def format_report(report: dict[str, Any], table: str) -> str:
    lines = [
        "# Replication results",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Wall time: {report['wall_time_s']:.0f} s",
        "",
        table,
        "",
        "## References (same judge)",
        "",
        "| reference | following acc. (%) | following | preserving | quality |",
        "|---|---|---|---|---|",
    ]
    for name, m in report["references"].items():
        lines.append(
            f"| {name} | {m['following_accuracy'] * 100:.1f} | {m['following']:.2f} | {m['preserving']:.2f} "
            f"| {m['quality']:.2f} |"
        )
    lines += [
        "",
        "## Following accuracy by edit type (all seeds)",
        "",
        "| model | " + " | ".join(EDIT_TYPES) + " |",
        "|---|" + "---|" * len(EDIT_TYPES),
    ]
    for variant, by_type in report["following_accuracy_by_edit_type"].items():
        lines.append(f"| {variant} | " + " | ".join(f"{by_type[t] * 100:.0f}" for t in EDIT_TYPES) + " |")
    for swept, by_variant in report["sweeps"].items():
        metric = "following_accuracy" if swept == "following" else "quality"
        lines += ["", f"## Sweep of the requested {swept} score (others 5): {metric}", ""]
        for variant, by_value in by_variant.items():
            cells = []
            for value in sorted(by_value, key=float):
                vals = [m[metric] * (100 if "accuracy" in metric else 1) for m in by_value[value].values()]
                cells.append(f"{value}: {np.mean(vals):.2f} ± {np.std(vals):.2f}")
            lines.append(f"- {variant}: " + ", ".join(cells))
    lines += [
        "",
        "## Data",
        "",
        "```",
        json.dumps(
            {"world": report["world"], "training_rewards": report["training_rewards"], "vae": report["vae"]}, indent=1
        ),
        "```",
        "",
        "## Timings (s)",
        "",
        "```",
        json.dumps(report["timings_s"], indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)
    except ValueError as error:
        parser.error(str(error))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
