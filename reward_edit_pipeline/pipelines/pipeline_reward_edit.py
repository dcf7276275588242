"""`RewardEditPipeline`: InstructPix2Pix editing conditioned on multi-perspective rewards (Gu et al., ICLR 2025)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils import logging

from ..devices import diffusers_dtype_kwarg, normalize_dtype_kwarg
from ..downloads import DOWNLOAD_KWARGS, PIPELINE_ALLOW_PATTERNS, apply_pickle_rule, download_pipeline_files
from ..images import DEFAULT_MAX_IMAGE_PIXELS, array_to_float, check_image_pixels, pil_to_array
from ..models.unet_2d_reward import RewardUNet2DConditionModel
from ..rewards import BEST_SCORES
from .reward_dit_common import (
    FailureTextInput,
    ScoreInput,
    prepare_reward_inputs,
    prepare_reward_scores,
    resolve_failure_texts,
)

logger = logging.get_logger(__name__)

DTYPE_KWARG = diffusers_dtype_kwarg()  # `dtype` (diffusers >= 0.42) or `torch_dtype`


# Classes this package contributes as pipeline components (model_index.json: ["reward_edit_pipeline", name]).
PACKAGE_CLASSES: dict[str, type] = {RewardUNet2DConditionModel.__name__: RewardUNet2DConditionModel}

# Pinned for the life of the project: saved folders record these names in `model_index.json` (`_class_name` as
# [loader module, class], components as [library, class]), so renaming either breaks every published folder.
LOADER_MODULE_STEM = "pipeline_reward_edit"
PUBLIC_LIBRARY = "reward_edit_pipeline"
LOADER_SHIM_SOURCE = '''"""Loader shim for `diffusers.DiffusionPipeline.from_pretrained(<this folder or repo>, trust_remote_code=True)`.

It only imports the installed package (`pip install reward-edit-pipeline`); it downloads and runs no other code.
`reward_edit_pipeline.RewardEditPipeline.from_pretrained(...)` loads this folder without executing this file.
"""

from reward_edit_pipeline import RewardEditPipeline

__all__ = ["RewardEditPipeline"]
'''

COMPONENT_SHIM_SOURCE = '''"""Loader shim for `DiffusionPipeline.from_pretrained(<this repo>, trust_remote_code=True)`: diffusers needs a
`<component>/reward_edit_pipeline.py` for a component whose class comes from the installed `reward-edit-pipeline`
package. It holds no model code; `RewardEditPipeline.from_pretrained` never runs it.
"""

from reward_edit_pipeline import {class_name}  # noqa: F401
'''


__all__ = ["PIPELINE_ALLOW_PATTERNS", "RewardEditPipeline", "download_pipeline_files", "encode_failure_texts"]


def encode_failure_texts(
    text_encoder: Any, tokenizer: Any, texts: Sequence[str], device: torch.device | str | None = None
) -> torch.Tensor:
    """Pooled text-encoder embeddings `[len(texts), D]` of already-resolved failure texts (`text_encoder(ids)[1]`, as
    the official code), padded to the tokenizer's maximum length. Identical texts are encoded once.

    The one failure-text encoder: `RewardEditPipeline.encode_failure_text` (inference) and the trainer's embedding
    table (`reward_edit_pipeline.train.cache`) both call it, so training and inference cannot drift apart.
    """
    device = torch.device(device) if device is not None else text_encoder.device
    unique_texts = list(dict.fromkeys(texts))
    if not unique_texts:
        return torch.zeros(0, text_encoder.config.hidden_size, device=device, dtype=text_encoder.dtype)
    inputs = tokenizer(
        unique_texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    untruncated = tokenizer(unique_texts, padding="longest", return_tensors="pt").input_ids
    if untruncated.shape[-1] > inputs.input_ids.shape[-1]:
        logger.warning(
            "failure text longer than %d tokens is truncated by the text encoder: %r",
            tokenizer.model_max_length,
            [text for text in unique_texts if len(tokenizer(text).input_ids) > tokenizer.model_max_length],
        )
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = inputs.attention_mask.to(device)
    pooled = text_encoder(inputs.input_ids.to(device), attention_mask=attention_mask)[1]
    index = torch.tensor([unique_texts.index(text) for text in texts], device=pooled.device)
    return pooled.index_select(0, index)


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from reward_edit_pipeline import RewardEditPipeline

        >>> pipe = RewardEditPipeline.from_pretrained("path/to/reward-edit-model", dtype=torch.float16).to("cuda")
        >>> image = Image.open("photo.jpg").convert("RGB")
        >>> # the paper's inference setting: best rewards (5, 5, 5) and no failure text
        >>> edited = pipe("make it a snowy winter day", image, num_inference_steps=30,
        ...               generator=torch.Generator("cuda").manual_seed(42)).images[0]
        >>> # ask for less preservation, or describe failures to avoid
        >>> edited = pipe("make it a snowy winter day", image, reward_scores=(5, 3, 5),
        ...               failure_text=("the sky is unchanged", None, None)).images[0]
        ```
"""


class RewardEditPipeline(StableDiffusionInstructPix2PixPipeline):
    r"""Instruction-based image editing with reward conditions (multi-reward InstructPix2Pix).

    Components (as in `StableDiffusionInstructPix2PixPipeline`):
        vae ([`AutoencoderKL`]): encodes the input image and decodes the edited latents.
        text_encoder ([`~transformers.CLIPTextModel`]): encodes the instruction, and the failure text (pooled output).
        tokenizer ([`~transformers.CLIPTokenizer`]): tokenizer of `text_encoder`.
        unet ([`RewardUNet2DConditionModel`]): the reward-conditioned denoiser.
        scheduler ([`SchedulerMixin`]): e.g. `EulerAncestralDiscreteScheduler` (the paper's evaluation).
        safety_checker, feature_extractor, image_encoder: optional, as in the parent pipeline.

    Guidance: InstructPix2Pix's 3-way batch `[text+image, image-only, unconditional]` — every branch receives the
    requested reward condition (as the official evaluation does). With `reward_guidance_scale > 1` a fourth branch
    `[text+image, null reward]` is added and the prediction is pushed away from it.
    """

    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    #: largest input image (width x height) accepted; set `pipe.max_image_pixels = N` (or None) to change it
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet: RewardUNet2DConditionModel,
        scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker: bool = False,
    ) -> None:
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        # Saved folders name the class as [loader module, class] and components as ["reward_edit_pipeline", class]
        # (for DiffusionPipeline + trust_remote_code, which runs the one-line shims). Loading through this class
        # needs no remote code: read the class name back plainly and point each component of this package at the
        # module that defines it, so diffusers imports it instead of executing a shim file from the folder.
        config = super()._dict_from_json_file(json_file)
        class_name = config.get("_class_name")
        if isinstance(class_name, (list, tuple)) and list(class_name) == [LOADER_MODULE_STEM, cls.__name__]:
            config["_class_name"] = cls.__name__
        for name, entry in config.items():
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == PUBLIC_LIBRARY and isinstance(entry[1], str):
                component_class = PACKAGE_CLASSES.get(entry[1])
                if component_class is not None:
                    config[name] = [component_class.__module__, entry[1]]
        return config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> RewardEditPipeline:
        """Load a saved `RewardEditPipeline` folder or Hub repo id (see `DiffusionPipeline.from_pretrained`).

        A repo id is downloaded first (configs, safetensors weights and tokenizer files only: no pickles, no code).
        The loading dtype may be given as `dtype=` or by its older name `torch_dtype=`.
        A plain InstructPix2Pix checkpoint is refused with a pointer to `from_instruct_pix2pix`, and the official
        release layout with a pointer to `from_official`. Weights are read from safetensors only unless
        `allow_pickle=True` (`reward_edit_pipeline.downloads.apply_pickle_rule`).
        """
        normalize_dtype_kwarg(kwargs)
        apply_pickle_rule(pretrained_model_name_or_path, kwargs, f"{cls.__name__}.from_pretrained")
        if not os.path.isdir(pretrained_model_name_or_path):
            download_kwargs = {key: kwargs.pop(key) for key in DOWNLOAD_KWARGS if key in kwargs}
            pretrained_model_name_or_path = download_pipeline_files(
                str(pretrained_model_name_or_path), **download_kwargs
            )
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipe.unet, RewardUNet2DConditionModel):
            raise ValueError(
                f"{pretrained_model_name_or_path!s} holds a plain {type(pipe.unet).__name__}, not a "
                "RewardUNet2DConditionModel. Use RewardEditPipeline.from_instruct_pix2pix(...) to wrap an "
                "InstructPix2Pix checkpoint, or RewardEditPipeline.from_official(...) for the official release "
                "folder (or reward_edit_pipeline.load_pipeline, which detects the layout)."
            )
        return pipe

    @classmethod
    def from_instruct_pix2pix(
        cls, pretrained_model_name_or_path: str | os.PathLike, reward_init: str = "zero", **kwargs: Any
    ) -> RewardEditPipeline:
        """Wrap a stock `StableDiffusionInstructPix2PixPipeline` checkpoint (e.g. the `timbrooks/instruct-pix2pix`
        layout) with new reward modules. With `reward_init="zero"` (default) the result edits exactly like the stock
        pipeline until it is trained. Weights are read from safetensors only unless `allow_pickle=True`."""
        normalize_dtype_kwarg(kwargs)
        apply_pickle_rule(pretrained_model_name_or_path, kwargs, f"{cls.__name__}.from_instruct_pix2pix")
        unet_kwargs = {key: kwargs[key] for key in _SUBMODEL_KWARGS if key in kwargs}
        base_unet = UNet2DConditionModel.from_pretrained(pretrained_model_name_or_path, subfolder="unet", **unet_kwargs)
        unet = RewardUNet2DConditionModel.from_unet(base_unet, reward_init=reward_init)
        logger.info("wrapped the InstructPix2Pix UNet with %s-initialised reward modules", reward_init)
        return super().from_pretrained(pretrained_model_name_or_path, unet=unet, **kwargs)

    @classmethod
    def from_official(
        cls, path: str | os.PathLike, use_paper_scheduler: bool = True, **kwargs: Any
    ) -> RewardEditPipeline:
        """Load the official stage-2 release folder (`Gstar666/Reward-InsPix2Pix/stage2_reward_instruct_pix2pix`:
        a diffusers InstructPix2Pix folder whose `unet/` carries the official reward keys).

        With `use_paper_scheduler=True` the scheduler is switched to `EulerAncestralDiscreteScheduler` (from the
        folder's scheduler config), as in the paper's evaluation; this is logged. Weights are read from safetensors
        only unless `allow_pickle=True`.
        """
        if not os.path.isdir(path):
            raise FileNotFoundError(f"`path` must be a local official release folder, got {os.fspath(path)!r}")
        normalize_dtype_kwarg(kwargs)
        allow_pickle = kwargs.get("allow_pickle", False)
        apply_pickle_rule(path, kwargs, f"{cls.__name__}.from_official")
        unet = RewardUNet2DConditionModel.from_official_unet(
            os.path.join(path, "unet"), torch_dtype=kwargs.get(DTYPE_KWARG), allow_pickle=allow_pickle
        )
        pipe = super().from_pretrained(path, unet=unet, **kwargs)
        if use_paper_scheduler and not isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler):
            logger.info("from_official: using EulerAncestralDiscreteScheduler, the paper's evaluation scheduler")
            pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        return pipe

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | os.PathLike, **kwargs: Any) -> RewardEditPipeline:
        """Not supported: a single checkpoint file (``.ckpt``/``.safetensors`` in the original Stable Diffusion layout)
        has no reward modules and no reward configuration. Raises `NotImplementedError` naming what to use instead."""
        raise NotImplementedError(
            f"RewardEditPipeline cannot be loaded from a single checkpoint file ({pretrained_model_link_or_path!r}):"
            " a reward-conditioned model is a diffusers folder. Use RewardEditPipeline.from_pretrained(folder or repo id)"
            " for a saved RewardEditPipeline, RewardEditPipeline.from_official(folder) for the official release folder,"
            " or RewardEditPipeline.from_instruct_pix2pix(folder or repo id) to wrap an InstructPix2Pix checkpoint"
            " (reward_edit_pipeline.load_pipeline detects which of these a folder is)."
        )

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs: Any):
        """Save as safetensors, loadable by `RewardEditPipeline.from_pretrained(folder)` and by
        `diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` (through a one-line loader
        module written into the folder, which imports this installed package)."""
        if not safe_serialization:
            raise ValueError("RewardEditPipeline saves safetensors only; `safe_serialization=False` is not supported")
        if kwargs.get("push_to_hub"):
            raise ValueError("use `reward-edit push-model` (reward_edit_pipeline.hub) to upload a saved folder")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path, encoding="utf-8") as handle:
            model_index = json.load(handle)
        model_index["_class_name"] = [LOADER_MODULE_STEM, type(self).__name__]
        if isinstance(self.unet, RewardUNet2DConditionModel):  # record the public module path, not the file's
            model_index["unet"] = [PUBLIC_LIBRARY, type(self.unet).__name__]
        with open(index_path, "w", encoding="utf-8") as handle:
            json.dump(model_index, handle, indent=2, sort_keys=True)
            handle.write("\n")
        with open(os.path.join(save_directory, f"{LOADER_MODULE_STEM}.py"), "w", encoding="utf-8") as handle:
            handle.write(LOADER_SHIM_SOURCE)
        for name, entry in model_index.items():  # Hub repo ids need <component>/reward_edit_pipeline.py to exist
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == PUBLIC_LIBRARY:
                with open(os.path.join(save_directory, name, f"{PUBLIC_LIBRARY}.py"), "w", encoding="utf-8") as handle:
                    handle.write(COMPONENT_SHIM_SOURCE.format(class_name=entry[1]))

    # ------------------------------------------------------------------ reward conditions
    def encode_failure_text(self, texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        """Pooled text-encoder embeddings `[len(texts), D]` of already-resolved failure texts
        (`text_encoder(ids)[1]`, as the official code); see `encode_failure_texts`, which training uses too."""
        return encode_failure_texts(self.text_encoder, self.tokenizer, texts, device or self._execution_device)

    def prepare_reward_scores(self, reward_scores: ScoreInput, batch_size: int) -> torch.Tensor:
        """Validate `reward_scores` (`reward_edit_pipeline.rewards.parse_reward_scores`: a triple, a text such as
        ``"5,5,5"``, a list of triples, or an array/tensor `[3]`/`[B, 3]`, values in [0, 5]) and return a float32
        `[batch_size, 3]` tensor (one triple is broadcast)."""
        return prepare_reward_scores(reward_scores, batch_size)

    def prepare_failure_texts(self, failure_text: FailureTextInput, batch_size: int) -> list[str]:
        """Resolve `failure_text` to one string per prompt with `reward_edit_pipeline.rewards.resolve_failure_text`
        (`None`, `""` or blank → the model's no-failure text; a string or a tuple of per-perspective texts → used for
        every prompt); a list gives one such value per prompt."""
        return resolve_failure_texts(failure_text, batch_size, self.unet.config.no_failure_text)

    # ------------------------------------------------------------------ checks
    def check_reward_edit_inputs(
        self,
        prompt: str | list[str] | None,
        image: Any,
        num_inference_steps: int,
        guidance_scale: float,
        image_guidance_scale: float,
        reward_guidance_scale: float,
        num_images_per_prompt: int,
        prompt_embeds: torch.Tensor | None,
        output_type: str,
    ) -> tuple[int, int]:
        """Validate the call's arguments; return (number of prompts, number of images)."""
        if prompt is None and prompt_embeds is None:
            raise ValueError("provide `prompt` (the edit instruction) or `prompt_embeds`")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not all(isinstance(text, str) for text in prompts) or not prompts:
                raise TypeError(f"`prompt` must be a non-empty string or a list of strings, got {prompt!r}")
            empty = [i for i, text in enumerate(prompts) if not text.strip()]
            if empty:
                raise ValueError(f"`prompt` must not be empty (empty instruction at index {empty})")
            batch_size = len(prompts)
        else:
            batch_size = prompt_embeds.shape[0]
        if image is None:
            raise ValueError("`image` (the image to edit) is required")
        images = image if isinstance(image, list) else [image]
        for item in images:
            if not isinstance(item, (PIL.Image.Image, np.ndarray, torch.Tensor)):
                raise TypeError(
                    "`image` must be a PIL image, numpy array, torch tensor or a list of them, "
                    f"got {type(item).__name__}"
                )
        num_images = sum(item.shape[0] if isinstance(item, torch.Tensor) and item.ndim == 4 else 1 for item in images)
        if isinstance(image, np.ndarray) and image.ndim == 4:
            num_images = image.shape[0]
        if num_images not in (1, batch_size):
            raise ValueError(f"got {num_images} images for {batch_size} prompts; pass 1 image or one per prompt")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, int)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
        for name, value, lowest in (
            ("guidance_scale", guidance_scale, 0.0),
            ("image_guidance_scale", image_guidance_scale, 0.0),
            ("reward_guidance_scale", reward_guidance_scale, 1.0),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < lowest
            ):
                raise ValueError(f"`{name}` must be a finite number >= {lowest:g}, got {value!r}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent', got {output_type!r}")
        if guidance_scale <= 1.0 or image_guidance_scale < 1.0:
            logger.warning(
                "guidance is off: guidance_scale=%g (needs > 1) and image_guidance_scale=%g (needs >= 1) switch "
                "InstructPix2Pix's classifier-free guidance on together, so the edit uses the text+image prediction "
                "alone and ignores both scales",
                guidance_scale,
                image_guidance_scale,
            )
        return batch_size, num_images

    @property
    def image_size_multiple(self) -> int:
        """Input images are padded (bottom/right, edge pixels repeated) to a multiple of this, then cropped back."""
        return self.vae_scale_factor

    def _image_to_pixels(self, image: Any) -> np.ndarray | torch.Tensor | None:
        """One image argument → RGB in [0, 1]: float32 numpy `[B, H, W, 3]` (PIL, numpy) or tensor `[B, 3, H, W]`;
        `None` for a tensor of latents."""
        name = "image"
        if isinstance(image, PIL.Image.Image):
            return pil_to_array(image, name, self.max_image_pixels)[None]
        if isinstance(image, np.ndarray):
            return array_to_float(image, name, self.max_image_pixels)
        if not isinstance(image, torch.Tensor):
            raise TypeError(
                f"`image` must be a PIL image, numpy array, torch tensor or a list of them, got {type(image).__name__}"
            )
        pixels = image[None] if image.ndim == 3 else image
        if pixels.ndim != 4:
            raise ValueError(f"`image` as a tensor must be [C, H, W] or [B, C, H, W], got shape {tuple(image.shape)}")
        channels = pixels.shape[1]
        if channels == self.vae.config.latent_channels and channels not in (1, 3):
            return None  # image latents (diffusers' convention for tensors with the VAE's latent channels)
        if channels not in (1, 3):
            raise ValueError(
                f"`image` as a tensor must have 1 or 3 channels in dim -3 ([B, C, H, W], RGB in [0, 1]) or "
                f"{self.vae.config.latent_channels} (latents), got shape {tuple(image.shape)}; pass RGBA images as PIL "
                "or numpy [H, W, 4] (composited on white)"
            )
        check_image_pixels(pixels.shape[-1], pixels.shape[-2], self.max_image_pixels, name)
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
        elif pixels.is_floating_point():
            pixels = pixels.detach().float()
            low, high = float(pixels.min()), float(pixels.max())
            if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or high > 1.0:
                raise ValueError(
                    f"`image` as a float tensor must hold values in [0, 1], got min {low:g} and max {high:g} "
                    "(for a [-1, 1] tensor pass (image + 1) / 2)"
                )
        else:
            raise TypeError(f"`image` as a tensor must be float in [0, 1] or uint8, got dtype {pixels.dtype}")
        return pixels.expand(-1, 3, -1, -1) if channels == 1 else pixels

    def _preprocess_image(self, image: Any) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """The one input-image path (see `reward_edit_pipeline.images`): PIL images of any mode, numpy arrays
        (uint8, uint16, float in [0, 1]), tensors `[B, C, H, W]` in [0, 1], or a list of them → pixels in [-1, 1],
        padded at the bottom/right (edge pixels repeated) to a multiple of `image_size_multiple`.

        Returns `(pixels, (height, width))`, the size to crop the decoded result back to; for a tensor of image latents
        (`vae.config.latent_channels` channels) returns `(latents, None)`.
        """
        items = image if isinstance(image, list) else [image]
        if not items:
            raise ValueError("`image` is an empty list; pass one image or one per prompt")
        batches = [self._image_to_pixels(item) for item in items]
        if any(batch is None for batch in batches):
            if not all(batch is None for batch in batches):
                raise ValueError("`image` mixes latents and pixel images; pass one kind")
            latents = [item if item.ndim == 4 else item[None] for item in items]
            return torch.cat(latents), None
        sizes = {tuple(batch.shape[1:3] if isinstance(batch, np.ndarray) else batch.shape[-2:]) for batch in batches}
        if len(sizes) > 1:
            listed = ", ".join(f"{width}x{height}" for height, width in sorted(sizes))
            raise ValueError(f"all images of one call must have the same size (W x H), got {listed}")
        # [B, H, W, 3] arrays become a channels-last view, as in diffusers' VaeImageProcessor (the VAE's float result
        # depends on the memory layout, so this keeps edits identical to the stock InstructPix2Pix pipeline's)
        if all(isinstance(batch, np.ndarray) for batch in batches):
            pixels = torch.from_numpy(np.concatenate(batches) if len(batches) > 1 else batches[0]).permute(0, 3, 1, 2)
        else:
            tensors = [
                torch.from_numpy(batch).permute(0, 3, 1, 2) if isinstance(batch, np.ndarray) else batch
                for batch in batches
            ]
            pixels = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        height, width = pixels.shape[-2:]
        multiple = self.image_size_multiple
        pad_bottom, pad_right = -height % multiple, -width % multiple
        if pad_bottom or pad_right:
            logger.info(
                "image %dx%d padded to %dx%d for the model (edge pixels repeated); the result is cropped back",
                width,
                height,
                width + pad_right,
                height + pad_bottom,
            )
            pixels = torch.nn.functional.pad(pixels, (0, pad_right, 0, pad_bottom), mode="replicate")
        # one memory layout whatever the source (a PIL image's stride-0 batch view loses channels-last in `pad`): the
        # VAE's float result depends on it, and the same picture must give the same pixels from every front end
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels * 2.0 - 1.0, (height, width)

    @property
    def interrupt(self) -> bool:
        """True once a step callback has set `pipe._interrupt = True`; the denoising loop then stops."""
        return getattr(self, "_interrupt", False)

    # ------------------------------------------------------------------ call
    def _combine_branch_predictions(
        self, noise_pred: torch.Tensor, num_model_branches: int, reward_guidance_scale: float | None
    ) -> torch.Tensor:
        """One guided prediction from the UNet's batched branches: `[text, image, uncond]` (InstructPix2Pix
        classifier-free guidance, `guidance_scale` on the text and `image_guidance_scale` on the image) or `[text]`
        without CFG, then optionally a null-reward branch last, pushed away from by `reward_guidance_scale`."""
        branches = noise_pred.chunk(num_model_branches)
        if self.do_classifier_free_guidance:
            noise_pred_text, noise_pred_image, noise_pred_uncond = branches[:3]
            noise_pred = (
                noise_pred_uncond
                + self.guidance_scale * (noise_pred_text - noise_pred_image)
                + self.image_guidance_scale * (noise_pred_image - noise_pred_uncond)
            )
        else:
            noise_pred_text = noise_pred = branches[0]
        if reward_guidance_scale is not None:
            noise_pred = noise_pred + (reward_guidance_scale - 1.0) * (noise_pred_text - branches[-1])
        return noise_pred

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        reward_scores: ScoreInput | None = BEST_SCORES,
        failure_text: FailureTextInput = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        reward_guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> StableDiffusionPipelineOutput | tuple:
        r"""Edit `image` following `prompt`, conditioned on reward scores and a failure text.

        Args:
            prompt (`str` or `list[str]`): the edit instruction(s). Required unless `prompt_embeds` is given.
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                the image(s) to edit; one image, or one per prompt. PIL images of any mode (transparency composited
                on white, 16-bit scaled), numpy `[H, W(, C)]`/`[B, H, W, C]` (uint8, uint16 or float in [0, 1]),
                tensors `[B, C, H, W]` float in [0, 1]. Any width and height: the image is padded to a multiple of
                `image_size_multiple` and the result cropped back, so **the output has the input's size** (except
                `output_type="latent"`). Images over `max_image_pixels` are refused.
            reward_scores (triple, list of triples, tensor `[3]`/`[B, 3]`, or `None`, *optional*, defaults to `(5, 5, 5)`):
                following, preserving, quality, each in [0, 5]; `(5, 5, 5)` is the paper's inference setting.
                `None` selects the null reward condition (what reward-condition dropout trains; "no reward").
            failure_text (`str`, `tuple`, `list` or `None`, *optional*, defaults to `None`):
                `None`, `""` or blank → the model's "no failure" text (`unet.config.no_failure_text`,
                `"None; None; None"` for the official weights); another string is used (stripped); a tuple `(following, preserving, quality)` of texts is
                joined with `"; "` (a missing one written `None`); a list gives one such value per prompt.
            num_inference_steps (`int`, *optional*, defaults to 30): denoising steps (the paper uses 30).
            guidance_scale (`float`, *optional*, defaults to 7.5): text guidance. Guidance is on when
                `guidance_scale > 1` and `image_guidance_scale >= 1`, as in InstructPix2Pix; otherwise both scales
                are ignored, with a logged warning.
            image_guidance_scale (`float`, *optional*, defaults to 1.5): image guidance.
            reward_guidance_scale (`float`, *optional*, defaults to 1.0):
                `> 1` adds a branch with the null reward condition and pushes the prediction away from it:
                `eps += (reward_guidance_scale - 1) * (eps_text_image - eps_text_image_null_reward)`. Meaningful only
                for models trained with reward-condition dropout (`--reward_dropout_prob`); the official weights were
                not.
            negative_prompt, num_images_per_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds,
            output_type, return_dict, cross_attention_kwargs: as in `StableDiffusionInstructPix2PixPipeline`.
            callback_on_step_end (`Callable`, *optional*): called as `fn(pipe, step, timestep, callback_kwargs)`
                after each step; `callback_kwargs` holds the tensors named in `callback_on_step_end_tensor_inputs`
                (from `latents`, `prompt_embeds`, `image_latents`; the last two in the guidance batch order
                `[text+image, image-only, unconditional(, null reward)]`). Returned tensors replace them. Setting
                `pipe._interrupt = True` stops the loop.

        Returns:
            [`StableDiffusionPipelineOutput`] or `tuple` (images, nsfw flags).
        """
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown_inputs = [
            name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs
        ]
        if unknown_inputs:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be in {self._callback_tensor_inputs}, got {unknown_inputs}"
            )

        # 0. Check inputs
        batch_size, _ = self.check_reward_edit_inputs(
            prompt,
            image,
            num_inference_steps,
            guidance_scale,
            image_guidance_scale,
            reward_guidance_scale,
            num_images_per_prompt,
            prompt_embeds,
            output_type,
        )
        reward_inputs = prepare_reward_inputs(
            reward_scores, failure_text, reward_guidance_scale, batch_size, self.unet.config.no_failure_text
        )
        reward_scores, failure_texts = reward_inputs.reward_scores, reward_inputs.failure_texts
        use_null_reward, reward_guidance_scale = reward_inputs.use_null_reward, reward_inputs.reward_guidance_scale

        # 1. Define call parameters
        self._guidance_scale = guidance_scale
        self._image_guidance_scale = image_guidance_scale
        self._interrupt = False
        device = self._execution_device
        do_reward_guidance = reward_guidance_scale > 1.0
        total = batch_size * num_images_per_prompt

        # 2. Encode the instruction: [text, unconditional, unconditional] when guiding
        prompt_embeds = self._encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )

        # 3. Encode the reward condition once per call (one row per generated image; identical failure texts are
        #    encoded once), repeated over the guidance branches; every denoising step reuses it
        reward_scores = reward_scores.repeat_interleave(num_images_per_prompt, dim=0).to(device)
        failure_text_embeds = self.encode_failure_text(failure_texts, device).repeat_interleave(
            num_images_per_prompt, dim=0
        )
        num_branches = 3 if self.do_classifier_free_guidance else 1
        branch_scores = reward_scores.repeat(num_branches, 1)
        branch_text_embeds = failure_text_embeds.repeat(num_branches, 1)
        null_reward_mask = None
        if use_null_reward:  # every branch gets the null condition
            null_reward_mask = torch.ones(branch_scores.shape[0], dtype=torch.bool, device=device)
        if do_reward_guidance:  # extra branch: text + image with the null reward condition
            prompt_embeds = torch.cat([prompt_embeds, prompt_embeds[:total]])
            branch_scores = torch.cat([branch_scores, reward_scores])
            branch_text_embeds = torch.cat([branch_text_embeds, failure_text_embeds])
            null_reward_mask = torch.zeros(branch_scores.shape[0], dtype=torch.bool, device=device)
            null_reward_mask[-total:] = True
        reward_condition = self.unet.compute_reward_condition(
            branch_scores, branch_text_embeds, null_reward_mask, device=device
        )

        # 4. Preprocess the image: one per generated image, in prompt order
        image, input_size = self._preprocess_image(image)
        if image.shape[0] == 1 and batch_size > 1:
            image = image.expand(batch_size, *image.shape[1:])
        if num_images_per_prompt > 1:  # (copy only when needed: the VAE's result depends on the memory layout)
            image = image.repeat_interleave(num_images_per_prompt, dim=0)

        # 5. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 6. Image latents: [image, image, zeros] when guiding (+ image for the null-reward branch)
        image_latents = self.prepare_image_latents(
            image, total, 1, prompt_embeds.dtype, device, self.do_classifier_free_guidance
        )
        if do_reward_guidance:
            image_latents = torch.cat([image_latents, image_latents[:total]])
        height, width = (size * self.vae_scale_factor for size in image_latents.shape[-2:])

        # 7. Noise latents
        num_channels_latents = self.vae.config.latent_channels
        latents = self.prepare_latents(
            total, num_channels_latents, height, width, prompt_embeds.dtype, device, generator, latents
        )
        if num_channels_latents + image_latents.shape[1] != self.unet.config.in_channels:
            raise ValueError(
                f"the UNet expects {self.unet.config.in_channels} input channels but latents ({num_channels_latents}) "
                f"+ image latents ({image_latents.shape[1]}) give {num_channels_latents + image_latents.shape[1]}"
            )

        # 8. Extra scheduler arguments
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 9. Denoising loop
        num_model_branches = num_branches + (1 if do_reward_guidance else 0)
        self._num_timesteps = len(timesteps)
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                latent_model_input = torch.cat([latents] * num_model_branches)
                scaled_latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                scaled_latent_model_input = torch.cat([scaled_latent_model_input, image_latents], dim=1)
                noise_pred = self.unet(
                    scaled_latent_model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    reward_condition=reward_condition,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]

                noise_pred = self._combine_branch_predictions(
                    noise_pred, num_model_branches, reward_guidance_scale if do_reward_guidance else None
                )

                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "image_latents": image_latents,
                    }
                    callback_kwargs = {name: callback_kwargs[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    image_latents = callback_outputs.pop("image_latents", image_latents)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 10. Decode
        if output_type != "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            if input_size is not None:  # crop the padding of `_preprocess_image` away: output size = input size
                image = image[..., : input_size[0], : input_size[1]]
            image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
        else:
            image, has_nsfw_concept = latents, None
        do_denormalize = (
            [True] * image.shape[0] if has_nsfw_concept is None else [not nsfw for nsfw in has_nsfw_concept]
        )
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image, has_nsfw_concept)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)


_SUBMODEL_KWARGS: tuple[str, ...] = (
    "use_safetensors",
    "torch_dtype",
    "dtype",
    "revision",
    "variant",
    "cache_dir",
    "token",
    "local_files_only",
    "force_download",
)
