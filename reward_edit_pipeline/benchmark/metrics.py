"""Non-LVLM metrics between the original and the edited image.

- ``l1`` / ``l2``: mean absolute / mean squared difference of RGB values in [0, 1] (always available; lower means the
  edit changed less, which is only "better" for preservation).
- ``clip_i``: cosine similarity of the CLIP image embeddings of original and edited image.
- ``clip_t``: cosine similarity of the CLIP embeddings of the edited image and the *instruction* (Real-Edit has no
  output captions).
- ``dino``: cosine similarity of the DINO ``[CLS]`` features of original and edited image.

CLIP and DINO need weights on this machine: a model folder, or a Hub id already in the local cache (nothing is
downloaded). When they are missing the metric is skipped and `MetricSuite.notices` says why; a path given explicitly
that does not load is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"
METRIC_NAMES: tuple[str, ...] = ("l1", "l2", "clip_i", "clip_t", "dino")


def pixel_distances(original: Image.Image, edited: Image.Image) -> dict[str, float]:
    """L1 and L2 (mean absolute and mean squared difference) of RGB values scaled to [0, 1]."""
    if original.size != edited.size:
        raise ValueError(f"original and edited image sizes differ: {original.size} vs {edited.size}")
    a = np.asarray(original.convert("RGB"), dtype=np.float64) / 255.0
    b = np.asarray(edited.convert("RGB"), dtype=np.float64) / 255.0
    difference = a - b
    return {"l1": float(np.abs(difference).mean()), "l2": float((difference**2).mean())}


class _ClipMetric:
    def __init__(self, model_name: str, device: str) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(model_name, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(model_name, local_files_only=True)
        self.device = device
        self.model_name = model_name

    def __call__(self, original: Image.Image, edited: Image.Image, instruction: str) -> dict[str, float]:
        import torch

        with torch.no_grad():
            pixels = self.processor(images=[original, edited], return_tensors="pt")["pixel_values"].to(self.device)
            image_embeds = self.model.get_image_features(pixel_values=pixels)
            if not isinstance(image_embeds, torch.Tensor):  # newer transformers may return a model output
                image_embeds = image_embeds.pooler_output
            text = self.processor(text=[instruction], return_tensors="pt", padding=True, truncation=True)
            text_embeds = self.model.get_text_features(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
            if not isinstance(text_embeds, torch.Tensor):
                text_embeds = text_embeds.pooler_output
            image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
            text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
        return {
            "clip_i": float((image_embeds[0] * image_embeds[1]).sum()),
            "clip_t": float((image_embeds[1] * text_embeds[0]).sum()),
        }


class _DinoMetric:
    def __init__(self, model_name: str, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.model = AutoModel.from_pretrained(model_name, local_files_only=True).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_name, local_files_only=True)
        self.device = device
        self.model_name = model_name

    def __call__(self, original: Image.Image, edited: Image.Image, instruction: str) -> dict[str, float]:
        import torch

        with torch.no_grad():
            pixels = self.processor(images=[original, edited], return_tensors="pt")["pixel_values"].to(self.device)
            features = self.model(pixel_values=pixels).last_hidden_state[:, 0].float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return {"dino": float((features[0] * features[1]).sum())}


@dataclass
class MetricSuite:
    """The metrics that could be loaded, plus a notice for each one that was skipped."""

    scorers: list = field(default_factory=list)
    available: list[str] = field(default_factory=lambda: ["l1", "l2"])
    notices: list[str] = field(default_factory=list)

    def __call__(self, original: Image.Image, edited: Image.Image, instruction: str) -> dict[str, float]:
        values = pixel_distances(original, edited)
        for scorer in self.scorers:
            values.update(scorer(original, edited, instruction))
        return values


def _local_snapshot(repo_id: str) -> str | None:
    """The folder of `repo_id` in the local Hugging Face cache, or ``None``; never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or not a valid repo id
        return None


def load_metric_suite(
    clip_model: str | None = None,
    dino_model: str | None = None,
    device: str = "cpu",
    enabled: Sequence[str] = ("clip", "dino"),
) -> MetricSuite:
    """Load the optional CLIP and DINO metrics from local weights only.

    Args:
        clip_model / dino_model (`str`, *optional*): a model folder or Hub id. ``None`` tries the default id
            (`DEFAULT_CLIP_MODEL`, `DEFAULT_DINO_MODEL`) in the local Hugging Face cache and skips with a notice when
            it is not there; an explicit value that cannot be loaded raises `ValueError`.
        enabled: which of ``"clip"``, ``"dino"`` to try at all (the others are skipped with a notice).
    """
    suite = MetricSuite()
    for kind, explicit, default, loader, names in (
        ("clip", clip_model, DEFAULT_CLIP_MODEL, _ClipMetric, ("clip_i", "clip_t")),
        ("dino", dino_model, DEFAULT_DINO_MODEL, _DinoMetric, ("dino",)),
    ):
        label = "/".join(name.upper().replace("_", "-") for name in names)
        if kind not in enabled:
            suite.notices.append(f"{label} skipped: disabled")
            continue
        model_name = explicit or default
        if explicit is None or not Path(explicit).exists():
            local = _local_snapshot(model_name)
            if local is None:
                if explicit is not None:
                    raise ValueError(
                        f"--{kind}-model {explicit!r}: neither a local folder nor a model in the local Hugging Face "
                        "cache (nothing is downloaded)"
                    )
                suite.notices.append(
                    f"{label} skipped: weights for {default!r} are not available locally (nothing is downloaded); "
                    f"pass --{kind}-model PATH to a local copy"
                )
                continue
            model_name = local
        try:
            scorer = loader(model_name, device)
        except (OSError, ValueError, ImportError) as error:
            raise ValueError(f"--{kind}-model {explicit or default!r}: cannot load {model_name}: {error}") from error
        suite.scorers.append(scorer)
        suite.available.extend(names)
    return suite
