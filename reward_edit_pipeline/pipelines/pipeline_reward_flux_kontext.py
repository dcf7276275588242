"""`RewardFluxKontextPipeline`: FLUX.1 Kontext [dev] editing conditioned on multi-perspective rewards."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from diffusers import FluxKontextPipeline
from diffusers.utils import logging

from ..downloads import DOWNLOAD_KWARGS, download_pipeline_files
from ..models.transformer_flux_reward import RewardFluxTransformer2DModel
from ..rewards import BEST_SCORES
from .pipeline_reward_edit import normalize_dtype_kwarg
from .reward_dit_common import (
    FailureTextInput,
    RewardCondition,
    ScoreInput,
    build_reward_condition,
    encode_unique_texts,
    prepare_reward_inputs,
    read_saved_model_index,
    rewrite_saved_model_index,
)

logger = logging.get_logger(__name__)

# Pinned: saved folders record these names in model_index.json.
LOADER_MODULE_STEM = "pipeline_reward_flux_kontext"
PACKAGE_CLASSES: dict[str, type] = {RewardFluxTransformer2DModel.__name__: RewardFluxTransformer2DModel}
#: written by `reward-edit train --backbone flux-kontext` into `<output_dir>/reward_lora/` next to the LoRA
REWARD_MODULES_FILE = "reward_modules.safetensors"

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


class RewardFluxKontextPipeline(FluxKontextPipeline):
    r"""FLUX.1 Kontext editing with reward conditions (Gu et al., ICLR 2025, on a DiT editor).

    Components: as `FluxKontextPipeline`, with `transformer` a [`RewardFluxTransformer2DModel`]. The failure text is
    embedded with the CLIP text encoder (pooled output, the same embedding Flux uses for `pooled_projections`).

    The reward condition is computed once per call and reaches the transformer through
    `joint_attention_kwargs["reward_condition"]`; the denoising loop is the parent's, unchanged (true CFG, callbacks,
    LoRA scale all work as in `FluxKontextPipeline`). With true CFG both the prompt and the negative-prompt pass use
    the requested reward condition.
    """

    #: marks the DiT call convention (`image`, then `prompt`; no image guidance) for `reward_dit_common.run_edit`
    is_dit_reward_pipeline = True

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
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        config = super()._dict_from_json_file(json_file)
        return read_saved_model_index(config, cls.__name__, LOADER_MODULE_STEM, PACKAGE_CLASSES)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> RewardFluxKontextPipeline:
        """Load a saved `RewardFluxKontextPipeline` folder or Hub repo id (configs, safetensors and tokenizer files
        only). The loading dtype may be given as `dtype=` or `torch_dtype=`. A stock FLUX.1 Kontext checkpoint is
        refused with a pointer to `from_flux_kontext`."""
        normalize_dtype_kwarg(kwargs)
        if not os.path.isdir(pretrained_model_name_or_path):
            download_kwargs = {key: kwargs.pop(key) for key in DOWNLOAD_KWARGS if key in kwargs}
            pretrained_model_name_or_path = download_pipeline_files(
                str(pretrained_model_name_or_path), **download_kwargs
            )
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipe.transformer, RewardFluxTransformer2DModel):
            raise ValueError(
                f"{pretrained_model_name_or_path!s} holds a plain {type(pipe.transformer).__name__}, not a "
                "RewardFluxTransformer2DModel. Use RewardFluxKontextPipeline.from_flux_kontext(...) to wrap a "
                "FLUX.1 Kontext checkpoint with new reward modules."
            )
        return pipe

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
        `FluxKontextPipeline.from_pretrained(..., **kwargs)` and wrap it (`from_base(..., **reward_config)`)."""
        normalize_dtype_kwarg(kwargs)
        base = FluxKontextPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls.from_base(base, reward_init, **(reward_config or {}))

    def load_reward_adapter(self, adapter_folder: str | os.PathLike) -> None:
        """Load what `reward-edit train --backbone flux-kontext` writes to `<output_dir>/reward_lora/` onto this
        (zero-initialised or base-wrapped) pipeline: the reward modules (`reward_modules.safetensors`, all keys
        required) and the LoRA (`pytorch_lora_weights.safetensors`, diffusers' format, via `load_lora_weights`)."""
        from safetensors.torch import load_file

        folder = os.fspath(adapter_folder)
        config_path = os.path.join(folder, "config.json")
        weights_path = os.path.join(folder, REWARD_MODULES_FILE)
        if not os.path.isfile(weights_path) or not os.path.isfile(config_path):
            raise FileNotFoundError(
                f"`adapter_folder` {folder!r} must hold {REWARD_MODULES_FILE} and config.json (a trainer's reward_lora/)"
            )
        with open(config_path, encoding="utf-8") as handle:
            adapter_config = json.load(handle)
        mismatched = {
            name: (adapter_config.get(name), self.transformer.config[name])
            for name in ("reward_token_dim", "reward_sinusoid_dim", "reward_num_scores", "failure_text_embed_dim")
            if adapter_config.get(name) != self.transformer.config[name]
        }
        if mismatched:
            raise ValueError(
                f"the reward adapter in {folder!r} was trained with other reward settings {{name: (adapter, pipeline)}}: "
                f"{mismatched}; wrap the base with from_base(pipe, **those settings) first"
            )
        state = load_file(weights_path)
        expected = {
            name
            for name in self.transformer.state_dict()
            if name.startswith(("reward_conditioner.", "reward_attention."))
        }
        if set(state) != expected:
            raise ValueError(
                f"{weights_path} does not match this transformer's reward modules: missing "
                f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}"
            )
        self.transformer.load_state_dict(state, strict=False)
        if os.path.isfile(os.path.join(folder, "pytorch_lora_weights.safetensors")):
            self.load_lora_weights(folder)

    @classmethod
    def from_reward_adapter(
        cls, pretrained_model_name_or_path: str | os.PathLike, adapter_folder: str | os.PathLike, **kwargs: Any
    ) -> RewardFluxKontextPipeline:
        """Wrap a stock FLUX.1 Kontext checkpoint with the reward settings of `adapter_folder` and load the adapter
        (`load_reward_adapter`): the small-download alternative to a full trained pipeline folder."""
        with open(os.path.join(os.fspath(adapter_folder), "config.json"), encoding="utf-8") as handle:
            adapter_config = json.load(handle)
        reward_config = {
            name: adapter_config[name]
            for name in (
                "failure_text_embed_dim",
                "reward_num_scores",
                "reward_sinusoid_dim",
                "reward_token_dim",
                "no_failure_text",
            )
            if name in adapter_config
        }
        pipe = cls.from_flux_kontext(pretrained_model_name_or_path, reward_config=reward_config, **kwargs)
        pipe.load_reward_adapter(adapter_folder)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs: Any):
        """Save as safetensors, loadable by `RewardFluxKontextPipeline.from_pretrained(folder)` and by
        `diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` (through one-line loader
        modules written into the folder, which import this installed package)."""
        if not safe_serialization:
            raise ValueError(
                f"{type(self).__name__} saves safetensors only; `safe_serialization=False` is not supported"
            )
        if kwargs.get("push_to_hub"):
            raise ValueError("use `reward-edit push-model` (reward_edit_pipeline.hub) to upload a saved folder")
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        rewrite_saved_model_index(save_directory, type(self).__name__, LOADER_MODULE_STEM, PACKAGE_CLASSES)

    # ------------------------------------------------------------------ reward conditions
    def encode_failure_text(self, texts: list[str], device: torch.device | None = None) -> torch.Tensor:
        """Pooled CLIP embeddings `[len(texts), D]` of resolved failure texts (each distinct text encoded once)."""
        device = device or self._execution_device
        return encode_unique_texts(
            texts, lambda unique: self._get_clip_prompt_embeds(unique, num_images_per_prompt=1, device=device)
        )

    def prepare_reward_condition(
        self,
        reward_scores: ScoreInput | None,
        failure_text: FailureTextInput,
        reward_guidance_scale: float,
        batch_size: int,
        num_images_per_prompt: int,
        device: torch.device | None = None,
    ) -> RewardCondition:
        """Validate the reward arguments and run the transformer's conditioner once for the whole call."""
        device = device or self._execution_device
        inputs = prepare_reward_inputs(
            reward_scores, failure_text, reward_guidance_scale, batch_size, self.transformer.config.no_failure_text
        )
        failure_text_embeds = self.encode_failure_text(inputs.failure_texts, device)
        return build_reward_condition(
            self.transformer.reward_conditioner, inputs, failure_text_embeds, num_images_per_prompt, device
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
        if prompt is not None:
            if isinstance(prompt, str):
                batch_size = 1
            elif isinstance(prompt, list) and prompt and all(isinstance(text, str) for text in prompt):
                batch_size = len(prompt)
            else:
                raise TypeError(f"`prompt` must be a non-empty string or a list of strings, got {prompt!r}")
        elif prompt_embeds is not None:
            batch_size = prompt_embeds.shape[0]
        else:
            raise ValueError("provide `prompt` (the edit instruction) or `prompt_embeds`")
        if (
            isinstance(num_images_per_prompt, bool)
            or not isinstance(num_images_per_prompt, int)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}")
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
