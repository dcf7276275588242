"""`RewardFluxKontextPipeline`: FLUX.1 Kontext [dev] editing conditioned on multi-perspective rewards."""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import FluxKontextPipeline
from diffusers.utils import logging

from ..devices import normalize_dtype_kwarg
from ..downloads import apply_pickle_rule
from ..models.transformer_flux_reward import RewardFluxTransformer2DModel
from ..rewards import BEST_SCORES
from .reward_dit_common import (
    REWARD_ADAPTER_MODULES_FILE,
    FailureTextInput,
    RewardDiTPipelineMixin,
    ScoreInput,
    batch_size_from_prompt,
    encode_unique_texts,
    validate_num_images_per_prompt,
)

logger = logging.get_logger(__name__)

# Pinned: saved folders record these names in model_index.json.
LOADER_MODULE_STEM = "pipeline_reward_flux_kontext"
PACKAGE_CLASSES: dict[str, type] = {RewardFluxTransformer2DModel.__name__: RewardFluxTransformer2DModel}
#: written by `reward-edit train --backbone flux-kontext` into `<output_dir>/reward_lora/` next to the LoRA
REWARD_MODULES_FILE = REWARD_ADAPTER_MODULES_FILE

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import load_image
        >>> from reward_edit_pipeline import RewardFluxKontextPipeline

        >>> pipe = RewardFluxKontextPipeline.from_pretrained("path/to/reward-flux-kontext", dtype=torch.bfloat16)
        >>> pipe.to("cuda")
        >>> image = load_image("photo.jpg")
        >>> edited = pipe(image=image, prompt="make it a snowy winter day", guidance_scale=2.5).images[0]
        >>> # ask for less preservation, or describe failures to avoid
        >>> edited = pipe(image=image, prompt="make it a snowy winter day", reward_scores=(5, 3, 5),
        ...               failure_text=("the sky is unchanged", None, None)).images[0]
        ```
"""


class RewardFluxKontextPipeline(RewardDiTPipelineMixin, FluxKontextPipeline):
    r"""FLUX.1 Kontext editing with reward conditions (Gu et al., ICLR 2025, on a DiT editor).

    Components: as `FluxKontextPipeline`, with `transformer` a [`RewardFluxTransformer2DModel`]. The failure text is
    embedded with the CLIP text encoder (pooled output, the same embedding Flux uses for `pooled_projections`).

    The reward condition is computed once per call and reaches the transformer through
    `joint_attention_kwargs["reward_condition"]`; the denoising loop is the parent's, unchanged (true CFG, callbacks,
    LoRA scale all work as in `FluxKontextPipeline`). With true CFG both the prompt and the negative-prompt pass use
    the requested reward condition.
    """

    loader_module_stem = LOADER_MODULE_STEM
    package_classes = PACKAGE_CLASSES
    reward_transformer_class = RewardFluxTransformer2DModel
    stock_loader_name = "from_flux_kontext"
    stock_checkpoint_name = "FLUX.1 Kontext"

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        text_encoder_2,
        tokenizer_2,
        transformer: RewardFluxTransformer2DModel,
        image_encoder=None,
        feature_extractor=None,
    ) -> None:
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_base(
        cls, pipe: FluxKontextPipeline, reward_init: str = "zero", **reward_config: Any
    ) -> RewardFluxKontextPipeline:
        """Wrap a loaded `FluxKontextPipeline` in one call: its transformer gets new reward modules (base weights
        shared, not copied); every other component is reused. With `reward_init="zero"` the result edits exactly like
        `pipe` until trained. `reward_config`: `reward_token_dim`, `reward_sinusoid_dim`, `no_failure_text`, …"""
        if isinstance(pipe.transformer, RewardFluxTransformer2DModel):
            raise ValueError("the pipeline's transformer already has reward modules")
        components = dict(pipe.components)
        components["transformer"] = RewardFluxTransformer2DModel.from_transformer(
            pipe.transformer, reward_init=reward_init, **reward_config
        )
        logger.info("wrapped the FLUX.1 Kontext transformer with %s-initialised reward modules", reward_init)
        return cls(**components)

    @classmethod
    def from_flux_kontext(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        reward_init: str = "zero",
        reward_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RewardFluxKontextPipeline:
        """Load a stock FLUX.1 Kontext checkpoint (e.g. the `black-forest-labs/FLUX.1-Kontext-dev` layout) with
        `FluxKontextPipeline.from_pretrained(..., **kwargs)` and wrap it (`from_base(..., **reward_config)`). Weights
        are read from safetensors only unless `allow_pickle=True`."""
        normalize_dtype_kwarg(kwargs)
        apply_pickle_rule(pretrained_model_name_or_path, kwargs, f"{cls.__name__}.from_flux_kontext")
        base = FluxKontextPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls.from_base(base, reward_init, **(reward_config or {}))

    # ------------------------------------------------------------------ reward conditions
    def encode_failure_text(self, texts: list[str], device: torch.device | None = None) -> torch.Tensor:
        """Pooled CLIP embeddings `[len(texts), D]` of resolved failure texts (each distinct text encoded once)."""
        device = device or self._execution_device
        return encode_unique_texts(
            texts, lambda unique: self._get_clip_prompt_embeds(unique, num_images_per_prompt=1, device=device)
        )

    def input_size_call_kwargs(self, image: Any) -> dict[str, Any]:
        """Call arguments that edit at the input image's size (rounded down to a multiple of 16) instead of the
        stock behaviour (resize to a preferred ~1 megapixel Kontext resolution). Used by `run_edit` (CLI, benchmark)."""
        width, height = (
            image.size if hasattr(image, "size") and isinstance(image.size, tuple) else image.shape[-2:][::-1]
        )
        multiple = self.vae_scale_factor * 2
        width, height = max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)
        return {"height": height, "width": width, "max_area": height * width, "_auto_resize": False}

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: Any = None,
        prompt: str | list[str] | None = None,
        reward_scores: ScoreInput | None = BEST_SCORES,
        failure_text: FailureTextInput = None,
        reward_guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        r"""Edit `image` following `prompt`, conditioned on reward scores and a failure text.

        Args:
            image, prompt: as in `FluxKontextPipeline` (the image to edit and the instruction).
            reward_scores (triple, list of triples, tensor `[3]`/`[B, 3]`, or `None`, defaults to `(5, 5, 5)`):
                following, preserving, quality, each in [0, 5]; `None` selects the null reward condition.
            failure_text (`str`, `tuple`, `list` or `None`, defaults to `None`): `None` → the model's "no failure"
                text (`transformer.config.no_failure_text`); a string is used as is; a tuple
                `(following, preserving, quality)` is joined with `"; "` (a missing or blank one written `None`);
                a list gives one such value per prompt.
            reward_guidance_scale (`float`, defaults to 1.0): `> 1` also runs the null reward condition and pushes the
                prediction away from it (meaningful for models trained with reward dropout).
            num_images_per_prompt, prompt_embeds, joint_attention_kwargs, **kwargs: as in `FluxKontextPipeline`
                (e.g. `guidance_scale`, `num_inference_steps`, `generator`, `height`, `width`, `max_area`).

        Returns:
            `FluxPipelineOutput` or a tuple, as the parent.
        """
        batch_size = batch_size_from_prompt(prompt, prompt_embeds)
        validate_num_images_per_prompt(num_images_per_prompt)
        if joint_attention_kwargs and "reward_condition" in joint_attention_kwargs:
            raise ValueError(
                "pass rewards as `reward_scores`/`failure_text`, not joint_attention_kwargs['reward_condition']"
            )
        condition = self.prepare_reward_condition(
            reward_scores, failure_text, reward_guidance_scale, batch_size, num_images_per_prompt
        )
        return super().__call__(
            image=image,
            prompt=prompt,
            num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds,
            joint_attention_kwargs={**(joint_attention_kwargs or {}), "reward_condition": condition},
            **kwargs,
        )
