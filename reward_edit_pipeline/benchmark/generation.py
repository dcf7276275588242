"""Edit every benchmark item with every model/setting, with fixed seeds, caching the results on disk.

Resizing follows the official evaluation: the long side is scaled to ``resolution`` (512), the short side is then
rounded *up* to a multiple of ``multiple`` (64), the long side rounded down, and the photo is center-cropped to that size
with `PIL.ImageOps.fit` (Lanczos). Each item is edited with a fresh CPU generator seeded with ``seed``, so a result
does not depend on the order of items or on where an interrupted run resumed (the official script shares one generator
across the whole run instead).

Edited images are written atomically to ``<out>/edits/<setting slug>/<item id>.<key>.png`` where ``key`` hashes
everything that determines the pixels (model, reward scores, failure text, seed, steps, guidance, size, scheduler,
instruction and the original's bytes), so a re-run skips finished work and never reuses a stale image.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from ..images import to_rgb_image
from ..rewards import parse_score_text
from .loaders import BenchmarkItem

SCHEDULERS: tuple[str, ...] = ("euler-ancestral", "model")
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class EditSetting:
    """One column of the report: a model plus the reward conditions it is run with.

    Attributes:
        model (`str`): what `reward_edit_pipeline.load_pipeline` loads (local folder or Hub id).
        reward_scores (`tuple[float, float, float]`): (following, preserving, quality) conditions.
        failure_text (`str`, *optional*): failure-text condition; ``None`` uses the model's "no failure" text.
        label (`str`): the name shown in the report.
        slug (`str`): file-name-safe unique name, used for the folder of edited images.
    """

    model: str
    reward_scores: tuple[float, float, float]
    failure_text: str | None
    label: str
    slug: str


@dataclass(frozen=True)
class GenerationConfig:
    """How every edit is generated (the official evaluation's values by default)."""

    steps: int = 30
    seed: int = 42
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    reward_guidance_scale: float = 1.0
    resolution: int = 512
    multiple: int = 64
    scheduler: str = "euler-ancestral"
    device: str | None = None
    torch_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"`steps` must be an integer >= 1, got {self.steps!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"`seed` must be an integer in [0, 2**63), got {self.seed!r}")
        if not isinstance(self.multiple, int) or self.multiple < 8 or self.multiple % 8:
            raise ValueError(f"`multiple` must be a positive multiple of 8 (the VAE's factor), got {self.multiple!r}")
        if not isinstance(self.resolution, int) or self.resolution < self.multiple:
            raise ValueError(
                f"`resolution` must be an integer >= `multiple` ({self.multiple}), got {self.resolution!r}"
            )
        for name in ("guidance_scale", "image_guidance_scale", "reward_guidance_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"`scheduler` must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.torch_dtype not in DTYPES:
            raise ValueError(f"`torch_dtype` must be one of {', '.join(DTYPES)}, got {self.torch_dtype!r}")


def official_edit_size(width: int, height: int, resolution: int = 512, multiple: int = 64) -> tuple[int, int]:
    """The (width, height) the official evaluation edits a ``width`` x ``height`` photo at."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / multiple) * multiple / min(width, height)
    new_width = int((width * factor) // multiple) * multiple
    new_height = int((height * factor) // multiple) * multiple
    return new_width, new_height


def prepare_input_image(image: Image.Image, resolution: int = 512, multiple: int = 64) -> Image.Image:
    """Resize and center-crop a photo to `official_edit_size` with `ImageOps.fit` (Lanczos), in RGB."""
    image = to_rgb_image(image)  # the package's one image rule: EXIF, alpha on white, 16-bit scaled
    size = official_edit_size(image.width, image.height, resolution, multiple)
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _format_scores(scores: tuple[float, float, float]) -> str:
    return ",".join(f"{value:g}" for value in scores)


def parse_reward_scores(text: str, name: str = "--scores") -> tuple[float, float, float]:
    """Parse ``"5,5,5"`` (following, preserving, quality), each in [0, 5] (`rewards.parse_score_text`)."""
    return parse_score_text(text, name=name)


def build_settings(
    models: Sequence[str], score_settings: Sequence[tuple[float, float, float]], failure_text: str | None = None
) -> list[EditSetting]:
    """All (model, reward scores) combinations, with readable labels and unique file-name-safe slugs."""
    if not models:
        raise ValueError("at least one model is required (--model)")
    if not score_settings:
        raise ValueError("at least one reward-score setting is required (--scores)")
    if len(set(models)) != len(models):
        raise ValueError(f"--model given twice: {list(models)!r}")
    if len(set(score_settings)) != len(score_settings):
        raise ValueError(f"--scores given twice: {[_format_scores(s) for s in score_settings]!r}")
    names = [Path(model.rstrip("/\\")).name or model for model in models]
    if len(set(names)) != len(names):  # two folders with the same name: fall back to the full spelling
        names = list(models)
    settings: list[EditSetting] = []
    slugs: set[str] = set()
    for model, name in zip(models, names):
        for scores in score_settings:
            label = name if len(score_settings) == 1 else f"{name} [{_format_scores(scores)}]"
            slug = _SLUG_UNSAFE.sub("_", f"{name}_scores-{_format_scores(scores).replace(',', '-')}").strip("_")
            base, index = slug, 2
            while slug in slugs:
                slug, index = f"{base}_{index}", index + 1
            slugs.add(slug)
            settings.append(EditSetting(model, scores, failure_text, label, slug))
    return settings


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _short_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _model_identity(model: str) -> str:
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def save_image_atomic(image: Image.Image, path: Path) -> None:
    """Write a PNG so that a crash never leaves a truncated file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)


@dataclass
class EditRecord:
    """Where one item's original (as edited) and edited image live for one setting."""

    setting: EditSetting
    item: BenchmarkItem
    original_path: Path
    edited_path: Path

    @property
    def done(self) -> bool:
        return self.edited_path.is_file()


@dataclass
class EditPlan:
    """Paths of every (setting, item) edit, plus the prepared originals."""

    out_dir: Path
    config: GenerationConfig
    records: dict[tuple[str, str], EditRecord] = field(default_factory=dict)  # (slug, item_id) -> record

    def for_setting(self, setting: EditSetting) -> list[EditRecord]:
        return [record for (slug, _), record in self.records.items() if slug == setting.slug]


def plan_edits(
    items: Sequence[BenchmarkItem], settings: Sequence[EditSetting], config: GenerationConfig, out_dir: str | Path
) -> EditPlan:
    """Prepare (resize and save) every original once and decide the cache path of every edit."""
    out_dir = Path(out_dir)
    plan = EditPlan(out_dir=out_dir, config=config)
    image_hashes: dict[Path, str] = {}
    original_paths: dict[Path, Path] = {}
    for item in items:
        if item.image_path not in image_hashes:
            image_hashes[item.image_path] = file_sha256(item.image_path)
            key = _short_hash(
                {"image": image_hashes[item.image_path], "resolution": config.resolution, "multiple": config.multiple}
            )
            stem = _SLUG_UNSAFE.sub("_", Path(item.image_name).with_suffix("").as_posix())
            original_path = out_dir / "originals" / f"{stem}.{key}.png"
            if not original_path.is_file():
                try:
                    with Image.open(item.image_path) as photo:
                        prepared = prepare_input_image(photo, config.resolution, config.multiple)
                except OSError as error:
                    raise ValueError(f"cannot read benchmark image {item.image_path}: {error}") from error
                save_image_atomic(prepared, original_path)
            original_paths[item.image_path] = original_path
    generation_fields = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    for setting in settings:
        for item in items:
            key = _short_hash(
                {
                    "model": _model_identity(setting.model),
                    "reward_scores": setting.reward_scores,
                    "failure_text": setting.failure_text,
                    "instruction": item.instruction,
                    "image": image_hashes[item.image_path],
                    **generation_fields,
                }
            )
            edited_path = out_dir / "edits" / setting.slug / f"{item.item_id}.{key}.png"
            plan.records[(setting.slug, item.item_id)] = EditRecord(
                setting, item, original_paths[item.image_path], edited_path
            )
    return plan


PipelineLoader = Callable[[EditSetting, GenerationConfig], object]


def default_pipeline_loader(setting: EditSetting, config: GenerationConfig):
    """Load `setting.model` with `reward_edit_pipeline.load_pipeline`, switching to the official scheduler."""

    from .. import load_pipeline

    pipe = load_pipeline(setting.model, device=config.device, dtype=config.torch_dtype)  # devices.py rules
    from ..pipelines.pipeline_reward_edit import RewardEditPipeline

    if config.scheduler == "euler-ancestral" and isinstance(pipe, RewardEditPipeline):  # DiT editors keep theirs
        from diffusers import EulerAncestralDiscreteScheduler

        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def edit_one(pipe, record: EditRecord, config: GenerationConfig) -> Image.Image:
    """Run the pipeline on one item with a fresh generator seeded with ``config.seed``."""
    import torch

    with Image.open(record.original_path) as original:
        original_image = original.convert("RGB")
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    from ..pipelines.reward_dit_common import run_edit

    output = run_edit(  # one call for the SD and the DiT reward pipelines
        pipe,
        record.item.instruction,
        original_image,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance_scale,
        image_guidance_scale=config.image_guidance_scale,
        reward_scores=record.setting.reward_scores,
        failure_text=record.setting.failure_text,
        reward_guidance_scale=config.reward_guidance_scale,
        generator=generator,
    )
    edited = output.images[0]
    if edited.size != original_image.size:
        raise RuntimeError(
            f"model {record.setting.model} returned a {edited.size} image for a {original_image.size} input "
            f"({record.item.item_id})"
        )
    return edited


def generate_edits(
    plan: EditPlan,
    settings: Sequence[EditSetting],
    pipeline_loader: PipelineLoader = default_pipeline_loader,
    progress: bool = True,
) -> dict[str, int]:
    """Generate every missing edit of `plan`; returns how many images each setting generated now.

    A setting whose edits are all cached does not load its model at all.
    """
    from tqdm.auto import tqdm

    generated: dict[str, int] = {}
    for setting in settings:
        pending = [record for record in plan.for_setting(setting) if not record.done]
        generated[setting.slug] = 0
        if not pending:
            continue
        pipe = pipeline_loader(setting, plan.config)
        bar = tqdm(pending, desc=f"edit {setting.label}", unit="img", disable=not progress)
        for record in bar:
            edited = edit_one(pipe, record, plan.config)
            save_image_atomic(edited, record.edited_path)
            generated[setting.slug] += 1
        del pipe
    return generated
