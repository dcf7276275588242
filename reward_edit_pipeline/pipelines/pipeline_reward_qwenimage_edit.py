"""`RewardQwenImageEditPipeline` / `RewardQwenImageEditPlusPipeline`: Qwen-Image-Edit conditioned on rewards.

The stock pipelines resize every reference image to about 1024² pixels for the VAE (and, in the Plus pipeline, to
about 384² for the vision-language prompt) whatever the input size; the areas are module constants there. Here they
are pipeline config exposed as attributes (`vae_image_area`, `condition_image_area`, in pixels; `__init__` /
`from_pretrained` arguments, saved in `model_index.json`), so a small model or a fast preview can use smaller
references; their defaults reproduce the stock pipelines. Because those areas are read inside
the stock `__call__`, this module has its own `__call__` (same steps and the same numbers as diffusers 0.42.1's, plus
the reward condition); everything else (prompt encoding, latent preparation, packing, the VAE) is the parent's.

The failure text is embedded with the pipeline's own Qwen2.5-VL text encoder: the text alone (no chat template, no
image) is tokenized, run through the text encoder, and the last hidden states are averaged over its tokens (padding
excluded) into one `[D]` vector per distinct text, once per call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_shift, retrieve_timesteps
from diffusers.utils import logging

from ..devices import normalize_dtype_kwarg
from ..downloads import apply_pickle_rule
from ..models.reward_dit_mixin import REWARD_CONDITION_KEY
from ..models.transformer_qwenimage_reward import RewardQwenImageTransformer2DModel
from ..rewards import BEST_SCORES
from .reward_dit_common import (
    FailureTextInput,
    RewardDiTPipelineMixin,
    ScoreInput,
    batch_size_from_prompt,
    encode_unique_texts,
    validate_num_images_per_prompt,
)

logger = logging.get_logger(__name__)

PACKAGE_CLASSES: dict[str, type] = {RewardQwenImageTransformer2DModel.__name__: RewardQwenImageTransformer2DModel}
STOCK_VAE_IMAGE_AREA = 1024 * 1024
STOCK_PLUS_CONDITION_IMAGE_AREA = 384 * 384
FAILURE_TEXT_MAX_TOKENS = 256

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers.utils import load_image
        >>> from reward_edit_pipeline import RewardQwenImageEditPlusPipeline

        >>> pipe = RewardQwenImageEditPlusPipeline.from_pretrained("path/to/reward-qwen-image-edit", dtype=torch.bfloat16)
        >>> pipe.to("cuda")
        >>> image = load_image("photo.jpg")
        >>> edited = pipe(image=image, prompt="make it a snowy winter day", num_inference_steps=40).images[0]
        >>> # ask for less preservation, or describe failures to avoid
        >>> edited = pipe(image=image, prompt="make it a snowy winter day", reward_scores=(5, 3, 5),
        ...               failure_text=("the sky is unchanged", None, None)).images[0]
        ```
"""


def mean_over_tokens(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The failure-text pooling of the Qwen-Image reward models (also used by the ComfyUI nodes): the float32 mean of
    `hidden_states` `[B, L, D]` over each row's own tokens (`attention_mask` `[B, L]`, 1 = a token of the text)."""
    hidden = hidden_states.float()
    weights = attention_mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def dimensions_for_area(area: int, aspect_ratio: float) -> tuple[int, int]:
    """(width, height), multiples of 32, of about `area` pixels at `aspect_ratio` = width / height (the stock rule)."""
    width = math.sqrt(area * aspect_ratio)
    height = width / aspect_ratio
    return max(32, round(width / 32) * 32), max(32, round(height / 32) * 32)


def _validate_area(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 32 * 32:
        raise ValueError(f"`{name}` must be an int number of pixels >= {32 * 32} (32×32), got {value!r}")
    return value


class _RewardQwenImageEditMixin(RewardDiTPipelineMixin):
    """What the single-image and the Plus reward pipelines share (loading, reward inputs, the denoising call)."""

    package_classes = PACKAGE_CLASSES
    reward_transformer_class = RewardQwenImageTransformer2DModel
    stock_loader_name = "from_qwen_image_edit"
    stock_checkpoint_name = "Qwen-Image-Edit"
    stock_pipeline_class: type
    default_condition_image_area: int

    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        processor,
        transformer,
        vae_image_area: int | None = None,
        condition_image_area: int | None = None,
    ) -> None:
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            processor=processor,
            transformer=transformer,
        )
        self._init_reference_areas(vae_image_area, condition_image_area)

    def _check_prompt_count(self, prompt: str | list[str] | None) -> None:
        """Hook: refuse prompt counts the variant does not edit (the Plus pipeline edits one prompt per call)."""

    def _init_reference_areas(self, vae_image_area: int | None, condition_image_area: int | None) -> None:
        """Validate the reference areas, record them in the pipeline config (saved in `model_index.json`, so a saved
        folder keeps its areas) and expose them as attributes (assigning one later updates the config too)."""
        vae_image_area = STOCK_VAE_IMAGE_AREA if vae_image_area is None else vae_image_area
        if condition_image_area is None:
            condition_image_area = self.default_condition_image_area
        _validate_area("vae_image_area", vae_image_area)
        _validate_area("condition_image_area", condition_image_area)
        self.register_to_config(vae_image_area=vae_image_area, condition_image_area=condition_image_area)
        self.vae_image_area = vae_image_area
        self.condition_image_area = condition_image_area

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_base(
        cls,
        pipe: QwenImageEditPipeline | QwenImageEditPlusPipeline,
        reward_init: str = "zero",
        vae_image_area: int | None = None,
        condition_image_area: int | None = None,
        **config: Any,
    ):
        """Wrap a loaded stock pipeline in one call: its transformer gets new reward modules (base weights shared,
        not copied; the failure-text width is the text encoder's hidden size); every other component is reused.
        With `reward_init="zero"` the result edits exactly like `pipe` (at the same reference areas) until trained.
        `config`: `reward_token_dim`, `reward_sinusoid_dim`, `no_failure_text`, …; the areas default to the stock
        pipeline's."""
        if isinstance(pipe.transformer, RewardQwenImageTransformer2DModel):
            raise ValueError("the pipeline's transformer already has reward modules")
        config.setdefault("failure_text_embed_dim", pipe.text_encoder.config.text_config.hidden_size)
        components = dict(pipe.components)
        components["transformer"] = RewardQwenImageTransformer2DModel.from_transformer(
            pipe.transformer, reward_init=reward_init, **config
        )
        logger.info("wrapped the Qwen-Image transformer with %s-initialised reward modules", reward_init)
        return cls(**components, vae_image_area=vae_image_area, condition_image_area=condition_image_area)

    @classmethod
    def from_qwen_image_edit(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        reward_init: str = "zero",
        reward_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        """Load a stock Qwen-Image-Edit checkpoint (`Qwen/Qwen-Image-Edit` layout for `RewardQwenImageEditPipeline`,
        `-2509`/`-2511` for the Plus pipeline) with the stock pipeline's `from_pretrained(..., **kwargs)` and wrap
        it (`from_base(..., **reward_config)`; `vae_image_area` / `condition_image_area` may be given here too).
        Weights are read from safetensors only unless `allow_pickle=True`."""
        normalize_dtype_kwarg(kwargs)
        apply_pickle_rule(pretrained_model_name_or_path, kwargs, f"{cls.__name__}.from_qwen_image_edit")
        areas = {name: kwargs.pop(name) for name in ("vae_image_area", "condition_image_area") if name in kwargs}
        stock = cls.stock_pipeline_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls.from_base(stock, reward_init, **areas, **(reward_config or {}))

    # ------------------------------------------------------------------ reward conditions
    def _encode_unique_failure_texts(self, texts: list[str], device: torch.device) -> torch.Tensor:
        inputs = self.tokenizer(
            texts, padding=True, truncation=True, max_length=FAILURE_TEXT_MAX_TOKENS, return_tensors="pt"
        )
        untruncated = self.tokenizer(texts, padding=True, return_tensors="pt").input_ids
        if untruncated.shape[-1] > inputs.input_ids.shape[-1]:
            logger.warning("failure text longer than %d tokens is truncated", FAILURE_TEXT_MAX_TOKENS)
        attention_mask = inputs.attention_mask.to(device)
        outputs = self.text_encoder(
            input_ids=inputs.input_ids.to(device), attention_mask=attention_mask, output_hidden_states=True
        )
        return mean_over_tokens(outputs.hidden_states[-1], attention_mask)

    def encode_failure_text(self, texts: list[str], device: torch.device | None = None) -> torch.Tensor:
        """Pooled Qwen2.5-VL embeddings `[len(texts), D]` (float32) of resolved failure texts: the mean of the text
        encoder's last hidden states over each text's tokens. Each distinct text is encoded once."""
        device = device or self._execution_device
        return encode_unique_texts(texts, lambda unique: self._encode_unique_failure_texts(unique, device))

    def input_size_call_kwargs(self, image: Any) -> dict[str, Any]:
        """Call arguments that edit at the input image's size (rounded down to a multiple of 16) instead of the
        default output area. Used by `run_edit` (CLI, benchmark). The reference images keep `vae_image_area`."""
        first = image[-1] if isinstance(image, list) else image
        if not isinstance(first, PIL.Image.Image):
            raise TypeError(f"`image` must be a PIL image or a list of them, got {type(first).__name__}")
        width, height = first.size
        multiple = self.vae_scale_factor * 2
        return {
            "height": max(multiple, height // multiple * multiple),
            "width": max(multiple, width // multiple * multiple),
        }

    # ------------------------------------------------------------------ reference images
    def _prepare_reference_images(self, images: list[PIL.Image.Image]) -> tuple[Any, Any, list[tuple[int, int]], float]:
        """→ (images for the vision-language prompt, VAE input(s), VAE (width, height) per reference, aspect ratio
        of the default output)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        prompt: str | list[str] | None = None,
        reward_scores: ScoreInput | None = BEST_SCORES,
        failure_text: FailureTextInput = None,
        reward_guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        true_cfg_scale: float = 4.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (the stock signature)
        max_sequence_length: int = 512,
    ) -> QwenImagePipelineOutput | tuple:
        r"""Edit `image` following `prompt`, conditioned on reward scores and a failure text.

        Args:
            image (`PIL.Image.Image` or list of them): the image to edit (`RewardQwenImageEditPipeline`: one, or one
                per prompt); the reference image(s) (`RewardQwenImageEditPlusPipeline`: several images are all shown
                to the model, one prompt per call).
            prompt (`str` or `list[str]`): the edit instruction(s).
            reward_scores (triple, list of triples, tensor `[3]`/`[B, 3]`, or `None`, defaults to `(5, 5, 5)`):
                following, preserving, quality, each in [0, 5]; `None` selects the null reward condition.
            failure_text (`str`, `tuple`, `list` or `None`, defaults to `None`): `None` → the model's "no failure"
                text (`transformer.config.no_failure_text`); a string is used as is; a tuple
                `(following, preserving, quality)` is joined with `"; "` (a missing or blank one written `None`);
                a list gives one such value per prompt.
            reward_guidance_scale (`float`, defaults to 1.0): `> 1` also runs the null reward condition and pushes the
                prediction away from it (meaningful for models trained with reward dropout); doubles the transformer
                batch.
            height, width (`int`, *optional*): output size; defaults to about `pipe.vae_image_area` pixels at the
                reference image's aspect ratio (multiples of 16).
            Other arguments: as in the stock pipeline (`negative_prompt` + `true_cfg_scale` > 1 for true CFG, in
                which both passes use the requested reward condition).

        The reference images are resized to about `pipe.vae_image_area` pixels for the VAE and
        `pipe.condition_image_area` pixels for the vision-language prompt (attributes; stock defaults 1024² and
        1024² for the Edit pipeline, 1024² and 384² for the Plus pipeline).

        Returns:
            `QwenImagePipelineOutput` or a tuple, as the stock pipeline.
        """
        self._check_prompt_count(prompt)
        # 0. Check inputs
        batch_size = batch_size_from_prompt(prompt, prompt_embeds)
        images = image if isinstance(image, list) else [image]
        if image is None or not images or not all(isinstance(item, PIL.Image.Image) for item in images):
            raise TypeError(f"`image` must be a PIL image or a non-empty list of PIL images, got {image!r}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        validate_num_images_per_prompt(num_images_per_prompt)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent', got {output_type!r}")
        if attention_kwargs and REWARD_CONDITION_KEY in attention_kwargs:
            raise ValueError(
                f"pass rewards as `reward_scores`/`failure_text`, not attention_kwargs['{REWARD_CONDITION_KEY}']"
            )
        _validate_area("vae_image_area", self.vae_image_area)
        _validate_area("condition_image_area", self.condition_image_area)

        prompt_images, vae_images, vae_sizes, aspect_ratio = self._prepare_reference_images(images)
        default_width, default_height = dimensions_for_area(self.vae_image_area, aspect_ratio)
        multiple_of = self.vae_scale_factor * 2
        width = (width or default_width) // multiple_of * multiple_of
        height = (height or default_height) // multiple_of * multiple_of
        self.check_inputs(
            prompt,
            height,
            width,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            prompt_embeds_mask=prompt_embeds_mask,
            negative_prompt_embeds_mask=negative_prompt_embeds_mask,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_sequence_length=max_sequence_length,
        )
        self._guidance_scale = guidance_scale
        self._attention_kwargs = dict(attention_kwargs or {})
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device

        # 1. Reward condition: validated and embedded once for the whole call
        condition = self.prepare_reward_condition(
            reward_scores, failure_text, reward_guidance_scale, batch_size, num_images_per_prompt, device
        )
        transformer_kwargs = {**self._attention_kwargs, REWARD_CONDITION_KEY: condition}

        # 2. Prompts (the vision-language encoder sees the reference images)
        has_neg_prompt = negative_prompt is not None or negative_prompt_embeds is not None
        if true_cfg_scale > 1 and not has_neg_prompt:
            logger.warning("true_cfg_scale > 1 has no effect without a negative_prompt")
        elif true_cfg_scale <= 1 and has_neg_prompt:
            logger.warning("negative_prompt is ignored: true_cfg_scale <= 1")
        do_true_cfg = true_cfg_scale > 1 and has_neg_prompt
        prompt_embeds, prompt_embeds_mask = self.encode_prompt(
            image=prompt_images,
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            prompt_embeds_mask=prompt_embeds_mask,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            max_sequence_length=max_sequence_length,
        )
        if do_true_cfg:
            negative_prompt_embeds, negative_prompt_embeds_mask = self.encode_prompt(
                image=prompt_images,
                prompt=negative_prompt,
                prompt_embeds=negative_prompt_embeds,
                prompt_embeds_mask=negative_prompt_embeds_mask,
                device=device,
                num_images_per_prompt=num_images_per_prompt,
                max_sequence_length=max_sequence_length,
            )

        # 3. Latents: noise for the target, packed VAE latents of the reference image(s)
        num_channels_latents = self.transformer.config.in_channels // 4
        latents, image_latents = self.prepare_latents(
            vae_images,
            batch_size * num_images_per_prompt,
            num_channels_latents,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        patch = self.vae_scale_factor * 2
        img_shapes = [
            [(1, height // patch, width // patch), *[(1, ref_h // patch, ref_w // patch) for ref_w, ref_h in vae_sizes]]
        ] * (batch_size * num_images_per_prompt)

        # 4. Timesteps (resolution-dependent shift, as the stock pipelines)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps) if sigmas is None else sigmas
        mu = calculate_shift(
            latents.shape[1],
            self.scheduler.config.get("base_image_seq_len", 256),
            self.scheduler.config.get("max_image_seq_len", 4096),
            self.scheduler.config.get("base_shift", 0.5),
            self.scheduler.config.get("max_shift", 1.15),
        )
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu
        )
        num_warmup_steps = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        self._num_timesteps = len(timesteps)
        if self.transformer.config.guidance_embeds:
            if guidance_scale is None:
                raise ValueError("`guidance_scale` is required for a guidance-distilled transformer")
            guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(latents.shape[0])
        else:
            if guidance_scale is not None:
                logger.warning("guidance_scale is ignored: the transformer is not guidance-distilled")
            guidance = None

        # 5. Denoising loop
        self.scheduler.set_begin_index(0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                latent_model_input = latents if image_latents is None else torch.cat([latents, image_latents], dim=1)
                timestep = t.expand(latents.shape[0]).to(latents.dtype)
                with self.transformer.cache_context("cond"):
                    noise_pred = self.transformer(
                        hidden_states=latent_model_input,
                        timestep=timestep / 1000,
                        guidance=guidance,
                        encoder_hidden_states_mask=prompt_embeds_mask,
                        encoder_hidden_states=prompt_embeds,
                        img_shapes=img_shapes,
                        attention_kwargs=transformer_kwargs,
                        return_dict=False,
                    )[0][:, : latents.size(1)]
                if do_true_cfg:
                    with self.transformer.cache_context("uncond"):
                        neg_noise_pred = self.transformer(
                            hidden_states=latent_model_input,
                            timestep=timestep / 1000,
                            guidance=guidance,
                            encoder_hidden_states_mask=negative_prompt_embeds_mask,
                            encoder_hidden_states=negative_prompt_embeds,
                            img_shapes=img_shapes,
                            attention_kwargs=transformer_kwargs,
                            return_dict=False,
                        )[0][:, : latents.size(1)]
                    combined = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)
                    cond_norm = torch.norm(noise_pred, dim=-1, keepdim=True)
                    noise_norm = torch.norm(combined, dim=-1, keepdim=True)
                    noise_pred = combined * (cond_norm / noise_norm)

                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local_tensors = {"latents": latents, "prompt_embeds": prompt_embeds}
                    callback_kwargs = {name: local_tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 6. Decode
        self._current_timestep = None
        if output_type == "latent":
            output = latents
        else:
            latents = self._unpack_latents(latents, height, width, self.vae_scale_factor).to(self.vae.dtype)
            z_dim = self.vae.config.z_dim
            latents_mean = torch.tensor(self.vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents)
            inverse_std = (1.0 / torch.tensor(self.vae.config.latents_std).view(1, z_dim, 1, 1, 1)).to(latents)
            latents = latents / inverse_std + latents_mean
            decoded = self.vae.decode(latents, return_dict=False)[0][:, :, 0]
            output = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output,)
        return QwenImagePipelineOutput(images=output)


class RewardQwenImageEditPipeline(_RewardQwenImageEditMixin, QwenImageEditPipeline):
    r"""Qwen-Image-Edit with reward conditions (Gu et al., ICLR 2025, on a DiT editor): one reference image per prompt.

    Components: as `QwenImageEditPipeline`, with `transformer` a [`RewardQwenImageTransformer2DModel`].

    Attributes (also `__init__` / `from_pretrained` arguments; saved in `model_index.json`):
        vae_image_area (`int`, defaults to 1024²): pixels of the reference image given to the VAE and to the
            vision-language prompt (the stock pipeline uses one resize for both), and of the default output.
        condition_image_area (`int`): unused by this variant (kept equal in meaning to the Plus pipeline's).
    """

    loader_module_stem = "pipeline_reward_qwenimage_edit"
    stock_pipeline_class = QwenImageEditPipeline
    default_condition_image_area = STOCK_VAE_IMAGE_AREA

    def _prepare_reference_images(self, images):
        first_width, first_height = images[0].size
        width, height = dimensions_for_area(self.vae_image_area, first_width / first_height)
        resized = self.image_processor.resize(images, height, width)
        vae_image = self.image_processor.preprocess(resized, height, width).unsqueeze(2)
        prompt_image = resized if len(resized) > 1 else resized[0]
        return prompt_image, vae_image, [(width, height)], first_width / first_height


class RewardQwenImageEditPlusPipeline(_RewardQwenImageEditMixin, QwenImageEditPlusPipeline):
    r"""Qwen-Image-Edit-2509 / -2511 with reward conditions: one or several reference images, one prompt per call.

    Components: as `QwenImageEditPlusPipeline`, with `transformer` a [`RewardQwenImageTransformer2DModel`]
    (`zero_cond_t=True` for -2511: the reward vector is added to both halves of its doubled timestep embedding).

    Attributes (also `__init__` / `from_pretrained` arguments; saved in `model_index.json`):
        vae_image_area (`int`, defaults to 1024²): pixels of each reference image given to the VAE, and of the
            default output.
        condition_image_area (`int`, defaults to 384²): pixels of each reference image in the vision-language prompt.
    """

    loader_module_stem = "pipeline_reward_qwenimage_edit_plus"
    stock_pipeline_class = QwenImageEditPlusPipeline
    default_condition_image_area = STOCK_PLUS_CONDITION_IMAGE_AREA

    def _check_prompt_count(self, prompt: str | list[str] | None) -> None:
        if isinstance(prompt, list) and len(prompt) > 1:
            raise ValueError(
                f"{type(self).__name__} edits one prompt per call (as QwenImageEditPlusPipeline), got {len(prompt)}"
            )

    def _prepare_reference_images(self, images):
        condition_images, vae_images, vae_sizes = [], [], []
        for item in images:
            ratio = item.size[0] / item.size[1]
            condition_width, condition_height = dimensions_for_area(self.condition_image_area, ratio)
            vae_width, vae_height = dimensions_for_area(self.vae_image_area, ratio)
            condition_images.append(self.image_processor.resize(item, condition_height, condition_width))
            vae_images.append(self.image_processor.preprocess(item, vae_height, vae_width).unsqueeze(2))
            vae_sizes.append((vae_width, vae_height))
        last_width, last_height = images[-1].size
        return condition_images, vae_images, vae_sizes, last_width / last_height
