"""`RewardSmartEditPipeline`: SmartEdit (Huang et al., CVPR 2024) with multi-reward conditions (Gu et al., ICLR 2025).

The multimodal LLM (transformers' `LlamaForCausalLM` + `CLIPVisionModel`, LLaVA-style) reads the image and the
instruction; its states at the added `<img_i>` tokens go through `SmartEditBridge` (Q-Former + BIM) into the text
condition and a `conv_in` residual of an 8-channel `RewardUNet2DConditionModel`, which takes the reward scores and the
failure text exactly as in `RewardEditPipeline`. `SmartEditPipeline` is the same class; with a zero-initialised reward
UNet (`reward_init="zero"`) it is plain SmartEdit.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.utils import logging

from ..devices import normalize_dtype_kwarg
from ..downloads import DOWNLOAD_KWARGS, apply_pickle_rule, download_pipeline_files
from ..models.smartedit_bridge import (
    IMAGE_FIELD,
    IMAGE_TOKENS_FIELD,
    INSTRUCTION_FIELD,
    SmartEditBridge,
    check_llm_generation,
)
from ..models.unet_2d_reward import RewardUNet2DConditionModel
from ..rewards import BEST_SCORES
from .pipeline_reward_edit import (
    COMPONENT_SHIM_SOURCE,
    PUBLIC_LIBRARY,
    FailureTextInput,
    RewardEditPipeline,
    ScoreInput,
)
from .reward_dit_common import prepare_reward_inputs

logger = logging.get_logger(__name__)

# Pinned: saved folders record this loader module name.
SMARTEDIT_LOADER_MODULE_STEM = "pipeline_reward_smartedit"
SMARTEDIT_PACKAGE_CLASSES: dict[str, type] = {
    RewardUNet2DConditionModel.__name__: RewardUNet2DConditionModel,
    SmartEditBridge.__name__: SmartEditBridge,
}
SMARTEDIT_LOADER_SHIM_SOURCE = '''"""Loader shim for `diffusers.DiffusionPipeline.from_pretrained(<this folder or repo>, trust_remote_code=True)`.

It only imports the installed package (`pip install reward-edit-pipeline`); it downloads and runs no other code.
"""

from reward_edit_pipeline import RewardSmartEditPipeline

__all__ = ["RewardSmartEditPipeline"]
'''

__all__ = ["RewardSmartEditPipeline", "SmartEditPipeline"]


def onload_offloaded(module: torch.nn.Module) -> None:
    """Move `module` to its execution device when an accelerate offload hook manages it
    (`enable_model_cpu_offload`), as a call of its `forward` would; the pipeline calls parts of the LLM (embeddings,
    the decoder, the LM head) and of the bridge directly, which the hook does not see. No hook: nothing to do."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        hook.pre_forward(module)


class RewardSmartEditPipeline(RewardEditPipeline):
    r"""Instruction-based editing with SmartEdit's MLLM guidance and reward conditions.

    Components:
        vae ([`AutoencoderKL`]), unet ([`RewardUNet2DConditionModel`], 8 input channels), scheduler: as in
            `RewardEditPipeline`.
        text_encoder ([`~transformers.CLIPTextModel`]), tokenizer: encode the failure text (pooled) and the empty
            prompt (the unconditional text condition of classifier-free guidance, as SmartEdit does).
        llm ([`~transformers.LlamaForCausalLM`]): the LLaVA language model, vocabulary extended by `<img_0>`…
        llm_tokenizer: its tokenizer, with the added image tokens.
        vision_encoder ([`~transformers.CLIPVisionModel`]), vision_processor ([`~transformers.CLIPImageProcessor`]):
            LLaVA's vision tower and its preprocessing.
        bridge ([`SmartEditBridge`]): LLaVA's connector, the Q-Former and the BIM.

    The call takes the same arguments as `RewardEditPipeline` (except `prompt_embeds`/`negative_prompt`, which have
    no meaning here). The instruction is put to the LLM in `bridge.config.llm_prompt_template` with the image
    features at `{image}`; the image-token states come from the teacher-forced `llm_answer_template` (as in
    SmartEdit's training) or, with `llm_generate=True`, from the LLM's own greedy answer (as in SmartEdit's
    inference). A converted SmartEdit folder holds SmartEdit's conversation and `llm_generate=True`.
    """

    _optional_components = ["safety_checker", "feature_extractor"]
    model_cpu_offload_seq = "vision_encoder->llm->bridge->text_encoder->unet->vae"

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet: RewardUNet2DConditionModel,
        scheduler,
        llm,
        llm_tokenizer,
        vision_encoder,
        vision_processor,
        bridge: SmartEditBridge,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker: bool = False,
    ) -> None:
        DiffusionPipeline.__init__(self)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            llm=llm,
            llm_tokenizer=llm_tokenizer,
            vision_encoder=vision_encoder,
            vision_processor=vision_processor,
            bridge=bridge,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        config = DiffusionPipeline._dict_from_json_file.__func__(cls, json_file)
        class_name = config.get("_class_name")
        if isinstance(class_name, (list, tuple)) and list(class_name)[0] == SMARTEDIT_LOADER_MODULE_STEM:
            config["_class_name"] = class_name[1]
        for name, entry in config.items():
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == PUBLIC_LIBRARY and isinstance(entry[1], str):
                component_class = SMARTEDIT_PACKAGE_CLASSES.get(entry[1])
                if component_class is not None:
                    config[name] = [component_class.__module__, entry[1]]
        return config

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> RewardSmartEditPipeline:
        """Load a saved SmartEdit folder (or Hub repo id: configs, safetensors and tokenizer files only).

        Weights are read from safetensors files only (`reward_edit_pipeline.downloads.apply_pickle_rule`): a component
        folder whose weights are pickles (`.bin`, `.pt`, `.pth`, `.ckpt`) with no safetensors file is refused
        (`FileNotFoundError` naming it) unless `allow_pickle=True` (trusted folders only); the pickles of the SmartEdit
        release are read by its converter (`reward-edit convert-smartedit ... --allow-pickle`)."""
        normalize_dtype_kwarg(kwargs)
        if not os.path.isdir(pretrained_model_name_or_path):
            download_kwargs = {key: kwargs.pop(key) for key in DOWNLOAD_KWARGS if key in kwargs}
            pretrained_model_name_or_path = download_pipeline_files(
                str(pretrained_model_name_or_path), **download_kwargs
            )
        apply_pickle_rule(
            pretrained_model_name_or_path,
            kwargs,
            f"{cls.__name__}.from_pretrained",
            hint="save the pipeline with save_pretrained (safetensors), or convert a SmartEdit release with "
            "`reward-edit convert-smartedit ... --allow-pickle`",
        )
        pipe = DiffusionPipeline.from_pretrained.__func__(cls, pretrained_model_name_or_path, **kwargs)
        if not isinstance(pipe.unet, RewardUNet2DConditionModel) or not isinstance(pipe.bridge, SmartEditBridge):
            raise ValueError(
                f"{pretrained_model_name_or_path!s} is not a SmartEdit folder of this package (unet: "
                f"{type(pipe.unet).__name__}, bridge: {type(pipe.bridge).__name__}); convert the released "
                "checkpoints with reward_edit_pipeline.convert_smartedit"
            )
        return pipe

    @classmethod
    def from_instruct_pix2pix(cls, *args: Any, **kwargs: Any) -> RewardSmartEditPipeline:
        raise NotImplementedError("a SmartEdit pipeline is built by reward_edit_pipeline.convert_smartedit")

    @classmethod
    def from_official(cls, *args: Any, **kwargs: Any) -> RewardSmartEditPipeline:
        raise NotImplementedError(
            "the official Reward-InsPix2Pix release is a RewardEditPipeline; SmartEdit checkpoints are converted with "
            "reward_edit_pipeline.convert_smartedit"
        )

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs: Any):
        """Save as safetensors, loadable by `RewardSmartEditPipeline.from_pretrained(folder)` and by
        `diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` (one-line loader shims that
        import this installed package)."""
        if not safe_serialization:
            raise ValueError("RewardSmartEditPipeline saves safetensors only; `safe_serialization=False` is refused")
        if kwargs.get("push_to_hub"):
            raise ValueError("use `reward-edit push-model` (reward_edit_pipeline.hub) to upload a saved folder")
        DiffusionPipeline.save_pretrained(self, save_directory, safe_serialization=True, **kwargs)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path, encoding="utf-8") as handle:
            model_index = json.load(handle)
        model_index["_class_name"] = [SMARTEDIT_LOADER_MODULE_STEM, type(self).__name__]
        for name in ("unet", "bridge"):
            model_index[name] = [PUBLIC_LIBRARY, type(getattr(self, name)).__name__]
        with open(index_path, "w", encoding="utf-8") as handle:
            json.dump(model_index, handle, indent=2, sort_keys=True)
            handle.write("\n")
        with open(os.path.join(save_directory, f"{SMARTEDIT_LOADER_MODULE_STEM}.py"), "w", encoding="utf-8") as handle:
            handle.write(SMARTEDIT_LOADER_SHIM_SOURCE)
        for name in ("unet", "bridge"):
            with open(os.path.join(save_directory, name, f"{PUBLIC_LIBRARY}.py"), "w", encoding="utf-8") as handle:
                handle.write(COMPONENT_SHIM_SOURCE.format(class_name=type(getattr(self, name)).__name__))

    # ------------------------------------------------------------------ the MLLM and the bridge
    def image_token_ids(self) -> list[int]:
        """Ids of `<img_0>`…`<img_{N-1}>` in `llm_tokenizer`; a clear error if the tokenizer lacks them."""
        names = self.bridge.image_token_names()
        ids = self.llm_tokenizer.convert_tokens_to_ids(names)
        unknown = self.llm_tokenizer.unk_token_id
        missing = [name for name, token_id in zip(names, ids) if token_id is None or token_id == unknown]
        if missing:
            raise ValueError(f"`llm_tokenizer` lacks the image tokens {missing[:4]}… (SmartEdit adds them to LLaVA's)")
        if max(ids) >= self.llm.get_input_embeddings().num_embeddings:
            raise ValueError("the LLM's embedding table is smaller than `llm_tokenizer` (resize_token_embeddings)")
        return ids

    def preprocess_vision(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels `[B, 3, H, W]` in [0, 1] → the vision tower's input. As in SmartEdit, the whole image is resized (not
        cropped) to the processor's crop size with bicubic filtering (antialiased when shrinking, like PIL's), then
        normalised with the processor's mean and std."""
        crop = self.vision_processor.crop_size
        size = (crop["height"], crop["width"])
        pixels = pixels.float()
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        processed = self.vision_processor(
            images=list(pixels.clamp(0.0, 1.0).cpu()),
            do_resize=False,
            do_center_crop=False,
            do_rescale=False,
            return_tensors="pt",
        )
        return processed["pixel_values"]

    def encode_vision(self, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Pixels `[B, 3, H, W]` in [0, 1] → CLIP patch features `[B, G², C]` (`preprocess_vision`; the hidden state
        `bridge.config.vision_feature_layer`, class token dropped, as LLaVA)."""
        pixel_values = self.preprocess_vision(pixels).to(device=device, dtype=self.vision_encoder.dtype)
        hidden_states = self.vision_encoder(pixel_values, output_hidden_states=True).hidden_states
        return self.bridge.select_vision_features(hidden_states)

    def tokenize_llm_text(self, text: str) -> list[int]:
        """LLM token ids of `text` (no BOS), split as SmartEdit's tokenizer (transformers 4.28's slow LLaMA tokenizer)
        splits it: at the tokenizer's added tokens (`<img_i>`, `<im_start>`, …; not BOS/EOS/UNK/PAD), with the
        whitespace next to them dropped, each text piece encoded on its own."""
        special = {self.llm_tokenizer.bos_token, self.llm_tokenizer.eos_token, self.llm_tokenizer.unk_token}
        special.add(self.llm_tokenizer.pad_token)
        added = sorted((t for t in self.llm_tokenizer.get_added_vocab() if t not in special), key=len, reverse=True)
        if not added:
            return self.llm_tokenizer(text, add_special_tokens=False).input_ids if text else []
        pieces = re.split("(" + "|".join(re.escape(token) for token in added) + ")", text)
        ids: list[int] = []
        for index, piece in enumerate(pieces):
            if index % 2:  # an added token
                ids.append(self.llm_tokenizer.convert_tokens_to_ids(piece))
                continue
            if index > 0:
                piece = piece.lstrip()
            if index < len(pieces) - 1:
                piece = piece.rstrip()
            if piece:
                ids.extend(self.llm_tokenizer(piece, add_special_tokens=False).input_ids)
        return ids

    def llm_input_ids(self, prompt: str, with_answer: bool = True) -> tuple[list[int], list[int]]:
        """The LLM's token ids before and after the image features for one instruction.

        The conversation is `bridge.config.llm_prompt_template` with `{instruction}` filled in, newlines removed (as
        SmartEdit does), split at `{image}` (where the image features go; the whitespace next to it is dropped, as
        next to the `<img_0>` placeholder SmartEdit replaces); with `with_answer` (teacher forcing)
        `llm_answer_template` follows, `{image_tokens}` being `<img_0> … <img_{N-1}>`. The tokenizer's start tokens
        (LLaMA: BOS) open the text; without `{image}` the image features come before them.
        """
        config = self.bridge.config
        conversation = config.llm_prompt_template
        if with_answer:
            conversation += config.llm_answer_template.replace(
                IMAGE_TOKENS_FIELD, " ".join(self.bridge.image_token_names())
            )
        before, image_field, after = conversation.partition(IMAGE_FIELD)
        if not image_field:
            before, after = "", before
        before, after = (part.replace(INSTRUCTION_FIELD, prompt).replace("\n", "") for part in (before, after))
        start = self.llm_tokenizer("", add_special_tokens=True).input_ids
        if image_field:
            return start + self.tokenize_llm_text(before.rstrip()), self.tokenize_llm_text(after.lstrip())
        return [], start + self.tokenize_llm_text(after)

    def llm_inputs_embeds(
        self, prompt: str, image_embeds: torch.Tensor, with_answer: bool = True
    ) -> tuple[torch.Tensor, list[int]]:
        """`([1, L, D] input embeddings, ids after the image rows)`: `[embed(before), image_embeds, embed(after)]`
        (`llm_input_ids`), `image_embeds` `[G², D]` being the projected CLIP features."""
        before, after = self.llm_input_ids(prompt, with_answer)
        embed_tokens = self.llm.get_input_embeddings()
        device = embed_tokens.weight.device
        rows = [
            embed_tokens(torch.tensor(before, dtype=torch.long, device=device)),
            image_embeds.to(device=device, dtype=embed_tokens.weight.dtype),
            embed_tokens(torch.tensor(after, dtype=torch.long, device=device)),
        ]
        return torch.cat(rows)[None], after

    def encode_instructions(
        self,
        prompts: list[str],
        vision_features: torch.Tensor,
        device: torch.device,
        llm_generate: bool | None = None,
        llm_max_new_tokens: int | None = None,
    ) -> torch.Tensor:
        """LLM states `[B, N, D_llm]` at the image tokens for each (instruction, image) (`llm_inputs_embeds`).

        `llm_generate=False` (teacher forcing): the answer template is part of the input and the states are read at
        its `<img_0> … <img_{N-1}>`. `llm_generate=True` (SmartEdit's inference): the LLM continues the prompt
        greedily, token by token; every emitted image token is fed back and its state kept, until `N` are kept (an
        error if the LLM ends or runs past `llm_max_new_tokens` before). Both default to the bridge config's values.
        When the LLM emits exactly the teacher-forced answer, the two give the same states (one causal pass vs. the
        same pass with a key/value cache).
        """
        check_llm_generation(llm_generate, llm_max_new_tokens, allow_none=True)
        config = self.bridge.config
        generate = config.llm_generate if llm_generate is None else llm_generate
        max_new_tokens = config.llm_max_new_tokens if llm_max_new_tokens is None else llm_max_new_tokens
        image_ids = self.image_token_ids()
        # parts of the bridge and the LLM are called directly, not through their forward: onload them first
        onload_offloaded(self.bridge)
        image_embeds = self.bridge.project_vision_features(vision_features)
        onload_offloaded(self.llm)
        states = []
        for prompt, image_embed in zip(prompts, image_embeds):
            inputs_embeds, after = self.llm_inputs_embeds(prompt, image_embed, with_answer=not generate)
            if generate:
                states.append(self._generate_image_token_states(inputs_embeds, image_ids, max_new_tokens))
                continue
            positions = [index for index, token in enumerate(after) if token in image_ids]
            if [after[index] for index in positions] != image_ids:
                raise ValueError(
                    "the teacher-forced answer must hold each image token once, in order (check `llm_answer_template` "
                    f"and that `llm_tokenizer` keeps the image tokens whole); found ids {[after[i] for i in positions]}"
                )
            offset = inputs_embeds.shape[1] - len(after)
            last_hidden_state = self.llm.model(inputs_embeds=inputs_embeds).last_hidden_state
            states.append(last_hidden_state[:, [offset + index for index in positions]])
        return torch.cat(states).to(device)

    def _generate_image_token_states(
        self, inputs_embeds: torch.Tensor, image_ids: list[int], max_new_tokens: int
    ) -> torch.Tensor:
        """Greedy decoding from `inputs_embeds` `[1, L, D]`; returns the states `[1, N, D]` of the fed-back image
        tokens (SmartEdit keeps any token of its image range, in the order emitted)."""
        image_id_set = set(image_ids)
        # the key/value cache's name: `cache` from transformers 5.x on (`past_key_values` is deprecated there)
        cache_name = "cache" if "cache" in inspect.signature(self.llm.model.forward).parameters else "past_key_values"
        output = self.llm.model(inputs_embeds=inputs_embeds, use_cache=True)
        kept, emitted = [], []
        for _ in range(max_new_tokens):
            token = int(self.llm.lm_head(output.last_hidden_state[:, -1]).argmax(dim=-1)[0])
            emitted.append(token)
            if token == self.llm_tokenizer.eos_token_id:
                break
            output = self.llm.model(
                input_ids=torch.tensor([[token]], device=inputs_embeds.device),
                use_cache=True,
                **{cache_name: getattr(output, cache_name)},
            )
            if token in image_id_set:
                kept.append(output.last_hidden_state)
                if len(kept) == len(image_ids):
                    return torch.cat(kept, dim=1)
        ended = "ended (EOS)" if emitted and emitted[-1] == self.llm_tokenizer.eos_token_id else "stopped"
        raise ValueError(
            f"the LLM {ended} after {len(emitted)} generated tokens having emitted {len(kept)} of the "
            f"{len(image_ids)} image tokens (`llm_max_new_tokens`={max_new_tokens}); generated: "
            f"{self.llm_tokenizer.decode(emitted[:64])!r}. Use `llm_generate=False` (teacher forcing) or a larger "
            "`llm_max_new_tokens` in the call, or set them as the folder's default in bridge/config.json "
            '(`"llm_generate": false`), which `reward-edit edit` and the ComfyUI nodes use'
        )

    def null_text_condition(self, device: torch.device) -> torch.Tensor:
        """CLIP text states of the empty prompt `[1, 77, D]`: SmartEdit's unconditional text condition."""
        ids = self.tokenizer(
            "", padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        return self.text_encoder(ids)[0]

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        reward_scores: ScoreInput | None = BEST_SCORES,
        failure_text: FailureTextInput = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        reward_guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        llm_generate: bool | None = None,
        llm_max_new_tokens: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> StableDiffusionPipelineOutput | tuple:
        r"""Edit `image` following `prompt`, conditioned on reward scores and a failure text.

        Arguments mean what they mean for `RewardEditPipeline.__call__` (`reward_scores=None`: the null reward
        condition; `reward_guidance_scale > 1`: push away from it). Guidance branches: `[text+image, image-only,
        unconditional]`, where the text condition is the bridge's output (empty-prompt CLIP states in the other two
        branches) and every branch gets the BIM image residual and the requested reward condition.
        The defaults (100 steps, `guidance_scale` 7.5, `image_guidance_scale` 1.5) are SmartEdit's test script's;
        it also edits at 256 × 256: `height=256, width=256` resize the image (bicubic, aspect ratio not kept) before
        editing, while the vision tower reads the image as given. `llm_generate` / `llm_max_new_tokens` (default: the
        bridge config's) choose how the LLM's image-token states are obtained (`encode_instructions`).
        `callback_on_step_end(pipe, step, timestep, {"latents": ...})` may replace the latents; setting
        `pipe._interrupt = True` stops the loop.
        """
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if any(name != "latents" for name in tensor_inputs):
            raise ValueError(f"`callback_on_step_end_tensor_inputs` must be ['latents'], got {tensor_inputs}")
        batch_size, _ = self.check_reward_edit_inputs(
            prompt,
            image,
            num_inference_steps,
            guidance_scale,
            image_guidance_scale,
            reward_guidance_scale,
            num_images_per_prompt,
            None,
            output_type,
        )
        if (height is None) != (width is None):
            raise ValueError(f"pass both `height` and `width` or neither, got height={height!r}, width={width!r}")
        for name, size in (("height", height), ("width", width)):
            if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % self.vae_scale_factor
            ):
                raise ValueError(f"`{name}` must be a positive multiple of {self.vae_scale_factor}, got {size!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        reward_inputs = prepare_reward_inputs(
            reward_scores, failure_text, reward_guidance_scale, batch_size, self.unet.config.no_failure_text
        )
        use_null_reward = reward_inputs.use_null_reward
        reward_scores, failure_texts = reward_inputs.reward_scores, reward_inputs.failure_texts
        self._guidance_scale = guidance_scale
        self._image_guidance_scale = image_guidance_scale
        self._interrupt = False
        device = self._execution_device
        total = batch_size * num_images_per_prompt
        do_reward_guidance = reward_guidance_scale > 1.0

        # 1. Image: pixels for the VAE, [0, 1] pixels for the vision tower
        pixels, input_size = self._preprocess_image(image)
        if input_size is None:
            raise ValueError("RewardSmartEditPipeline needs pixel images (the MLLM reads them), not latents")
        if pixels.shape[0] == 1 and batch_size > 1:
            pixels = pixels.expand(batch_size, *pixels.shape[1:])
        vision_pixels = (pixels[..., : input_size[0], : input_size[1]] + 1.0) / 2.0
        if height is not None:  # SmartEdit's `--resize_resolution`: the edit runs at this size
            pixels = pixels[..., : input_size[0], : input_size[1]]
            if tuple(pixels.shape[-2:]) != (height, width):
                pixels = F.interpolate(pixels.float(), size=(height, width), mode="bicubic", antialias=True)
                pixels = pixels.clamp(-1.0, 1.0)
            input_size = (height, width)

        # 2. MLLM → bridge: text condition and conv_in residual (one per prompt, then per generated image)
        vision_features = self.encode_vision(vision_pixels, device)
        llm_states = self.encode_instructions(prompts, vision_features, device, llm_generate, llm_max_new_tokens)
        latent_size = (pixels.shape[-2] // self.vae_scale_factor, pixels.shape[-1] // self.vae_scale_factor)
        bridge_output = self.bridge(llm_states, vision_features, latent_size)
        text_condition = bridge_output.encoder_hidden_states.repeat_interleave(num_images_per_prompt, dim=0)
        image_residual = bridge_output.image_residual.repeat_interleave(num_images_per_prompt, dim=0)
        dtype = self.unet.dtype
        text_condition, image_residual = text_condition.to(dtype), image_residual.to(dtype)
        num_branches = 3 if self.do_classifier_free_guidance else 1
        if self.do_classifier_free_guidance:
            null_text = self.null_text_condition(device).to(dtype)
            if null_text.shape[1:] != text_condition.shape[1:]:
                raise ValueError(
                    f"the bridge's text condition {tuple(text_condition.shape[1:])} and the empty-prompt CLIP states "
                    f"{tuple(null_text.shape[1:])} must have the same shape (num_query_tokens = tokenizer length)"
                )
            null_text = null_text.expand(total, -1, -1)
            encoder_hidden_states = torch.cat([text_condition, null_text, null_text])
        else:
            encoder_hidden_states = text_condition
        branch_residual = image_residual.repeat(num_branches, 1, 1, 1)

        # 3. Rewards (as RewardEditPipeline): every branch gets the requested condition
        reward_scores = reward_scores.repeat_interleave(num_images_per_prompt, dim=0).to(device)
        failure_text_embeds = self.encode_failure_text(failure_texts, device).repeat_interleave(
            num_images_per_prompt, dim=0
        )
        branch_scores = reward_scores.repeat(num_branches, 1)
        branch_text_embeds = failure_text_embeds.repeat(num_branches, 1)
        null_reward_mask = None
        if use_null_reward:
            null_reward_mask = torch.ones(branch_scores.shape[0], dtype=torch.bool, device=device)
        if do_reward_guidance:
            encoder_hidden_states = torch.cat([encoder_hidden_states, text_condition])
            branch_residual = torch.cat([branch_residual, image_residual])
            branch_scores = torch.cat([branch_scores, reward_scores])
            branch_text_embeds = torch.cat([branch_text_embeds, failure_text_embeds])
            null_reward_mask = torch.zeros(branch_scores.shape[0], dtype=torch.bool, device=device)
            null_reward_mask[-total:] = True

        # 4. Latents
        if num_images_per_prompt > 1:
            pixels = pixels.repeat_interleave(num_images_per_prompt, dim=0)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        image_latents = self.prepare_image_latents(pixels, total, 1, dtype, device, self.do_classifier_free_guidance)
        if do_reward_guidance:
            image_latents = torch.cat([image_latents, image_latents[:total]])
        height, width = (size * self.vae_scale_factor for size in image_latents.shape[-2:])
        num_channels_latents = self.vae.config.latent_channels
        latents = self.prepare_latents(total, num_channels_latents, height, width, dtype, device, generator, latents)
        if num_channels_latents + image_latents.shape[1] != self.unet.config.in_channels:
            raise ValueError(
                f"the UNet expects {self.unet.config.in_channels} input channels but latents ({num_channels_latents}) "
                f"+ image latents ({image_latents.shape[1]}) give {num_channels_latents + image_latents.shape[1]}"
            )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 5. Denoising loop
        num_model_branches = num_branches + (1 if do_reward_guidance else 0)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for step, t in enumerate(timesteps):
                if self.interrupt:
                    break
                model_input = self.scheduler.scale_model_input(torch.cat([latents] * num_model_branches), t)
                noise_pred = self.unet(
                    torch.cat([model_input, image_latents], dim=1),
                    t,
                    encoder_hidden_states=encoder_hidden_states,
                    reward_scores=branch_scores,
                    failure_text_embeds=branch_text_embeds,
                    null_reward_mask=null_reward_mask,
                    conv_in_residual=branch_residual,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
                noise_pred = self._combine_branch_predictions(
                    noise_pred, num_model_branches, reward_guidance_scale if do_reward_guidance else None
                )
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, step, t, {"latents": latents}) or {}
                    latents = outputs.pop("latents", latents)
                progress_bar.update()

        # 6. Decode (cropped back to the input size)
        if output_type != "latent":
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            decoded = decoded[..., : input_size[0], : input_size[1]]
            decoded, has_nsfw_concept = self.run_safety_checker(decoded, device, dtype)
        else:
            decoded, has_nsfw_concept = latents, None
        do_denormalize = (
            [True] * decoded.shape[0] if has_nsfw_concept is None else [not nsfw for nsfw in has_nsfw_concept]
        )
        images = self.image_processor.postprocess(decoded, output_type=output_type, do_denormalize=do_denormalize)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, has_nsfw_concept)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=has_nsfw_concept)


#: Plain SmartEdit: the same class (build it with a `reward_init="zero"` reward UNet, or call it with the rewards the
#: model was not trained on ignored by zero-initialised reward modules).
SmartEditPipeline = RewardSmartEditPipeline
