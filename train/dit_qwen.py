"""`reward-edit train --backbone qwen-image-edit`: the Qwen-Image-Edit adapter of the DiT trainer (`train/dit.py`).

- **Model**: `--pretrained_model_name_or_path` is a stock `QwenImageEditPipeline` folder (Qwen-Image-Edit) or
  `QwenImageEditPlusPipeline` folder (-2509 / -2511), wrapped with zero-initialised reward modules
  (`RewardQwenImageEditPipeline` / `RewardQwenImageEditPlusPipeline`), or one of our saved reward folders to
  continue training.
- **LoRA targets**: the joint attention projections of every block (`to_q`, `to_k`, `to_v`, `to_out.0`,
  `add_q_proj`, `add_k_proj`, `add_v_proj`, `to_add_out`), the same names Qwen-Image LoRAs use.
- **Cache** (computed once before training, kept on the CPU; unreadable pairs skipped and counted): packed VAE latents of the edited image (target) and of the original
  image (the reference, appended to the noisy tokens as the pipelines do), the Qwen2.5-VL prompt embeddings of
  instruction + original image (one example at a time, since the Plus template numbers the images of one prompt;
  padded to the longest, with a mask), and the pooled failure-text embeddings.
- **Loss**: rectified flow, as the Qwen-Image pipelines sample (`x_σ = (1 − σ)·x₀ + σ·ε`, the model predicts
  `ε − x₀` at timestep `σ`), σ ~ U(0, 1), on the target tokens only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .dit_backbones import DitBackboneAdapter, draw_flow_matching_batch, read_model_index, register_backbone

LORA_PROJECTIONS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
_PLUS_CLASS_NAMES = ("QwenImageEditPlusPipeline", "RewardQwenImageEditPlusPipeline")


class QwenImageEditAdapter(DitBackboneAdapter):
    """Qwen-Image-Edit (and -2509 / -2511): rectified-flow loss on packed latents, reference tokens appended."""

    name = "qwen-image-edit"

    def load_pipeline(self, args: argparse.Namespace, dtype: Any) -> Any:
        from reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit import (
            RewardQwenImageEditPipeline,
            RewardQwenImageEditPlusPipeline,
        )

        path = args.pretrained_model_name_or_path
        model_index = read_model_index(path)
        class_name = model_index.get("_class_name")
        class_name = class_name[-1] if isinstance(class_name, list) else class_name
        pipeline_class = (
            RewardQwenImageEditPlusPipeline if class_name in _PLUS_CLASS_NAMES else RewardQwenImageEditPipeline
        )
        transformer_class = (model_index.get("transformer") or [None, None])[1]
        if transformer_class == "RewardQwenImageTransformer2DModel":
            return pipeline_class.from_pretrained(path, dtype=dtype)
        return pipeline_class.from_qwen_image_edit(
            path, reward_config={"reward_token_dim": args.reward_token_dim}, dtype=dtype, revision=args.revision
        )

    def lora_target_modules(self, transformer: Any) -> list[str]:
        return [
            name
            for name, _ in transformer.named_modules()
            if name.startswith("transformer_blocks.")
            and ".attn." in name
            and name.rsplit(".attn.", 1)[1] in LORA_PROJECTIONS
        ]

    def encode_examples(
        self, pipe: Any, examples: Sequence[Any], resolution: int, device: Any, skips: Any = None
    ) -> dict[str, Any]:
        import torch
        from PIL import Image

        from reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit import (
            RewardQwenImageEditPlusPipeline,
            dimensions_for_area,
        )

        from .data import ImageLoadError, TripletDataset

        multiple = pipe.vae_scale_factor * 2
        if resolution % multiple:
            raise ValueError(f"--resolution must be a multiple of {multiple} for Qwen-Image-Edit, got {resolution}")
        plus = isinstance(pipe, RewardQwenImageEditPlusPipeline)
        condition_size = dimensions_for_area(pipe.condition_image_area, 1.0)
        loader = TripletDataset(examples, tokenizer=None, resolution=resolution, with_rewards=False)
        kept, edited, original, prompt_rows, mask_rows = [], [], [], [], []
        for example in examples:  # one example at a time: the Plus template numbers the images of one prompt
            try:
                original_pixels, edited_pixels = loader.load_pair(example)
            except ImageLoadError as error:  # unreadable or misaligned pairs are skipped and counted
                if skips is None:
                    raise
                skips.add(error.reason, example.key, str(error))
                continue
            kept.append(example)
            pixels = torch.stack([original_pixels, edited_pixels]).unsqueeze(2)  # [2, 3, 1, H, W] in [-1, 1]
            latents = pipe._encode_vae_image(pixels.to(device=device, dtype=pipe.vae.dtype), generator=None)
            channels, _, height, width = latents.shape[1:]
            packed = pipe._pack_latents(latents, 2, channels, height, width).float().cpu()
            original.append(packed[0])
            edited.append(packed[1])
            # the vision-language prompt sees the (cropped) original as the pipelines show it
            array = ((original_pixels.permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            prompt_image = Image.fromarray(array.numpy())
            if plus:
                prompt_image = prompt_image.resize(condition_size, Image.Resampling.BICUBIC)
            embeds, mask = pipe.encode_prompt(
                prompt=example.instruction, image=[prompt_image] if plus else prompt_image, device=device
            )
            prompt_rows.append(embeds[0].cpu())
            mask_rows.append(torch.ones(embeds.shape[1], dtype=torch.long) if mask is None else mask[0].cpu())
        if not kept:
            raise ValueError("no readable training examples (see the skipped-sample log)")
        length = max(row.shape[0] for row in prompt_rows)
        prompt_embeds = torch.stack(
            [torch.cat([row, row.new_zeros(length - row.shape[0], row.shape[1])]) for row in prompt_rows]
        )
        prompt_mask = torch.stack([torch.cat([row, row.new_zeros(length - row.shape[0])]) for row in mask_rows])
        failure_text_embeds = pipe.encode_failure_text([example.failure_text for example in kept], device).cpu()
        tokens = (1, height // 2, width // 2)
        return {
            "keys": [example.key for example in kept],
            "edited_latents": torch.stack(edited),
            "original_latents": torch.stack(original),
            "prompt_embeds": prompt_embeds,
            "prompt_embeds_mask": prompt_mask,
            "failure_text_embeds": failure_text_embeds,
            "reward_scores": torch.tensor([example.reward_scores for example in kept], dtype=torch.float32),
            "img_shapes": [tokens, tokens],  # target, then the reference (same size here)
        }

    def training_loss(
        self, transformer: Any, cache: dict[str, Any], rows: Any, generator: Any, null_reward_mask: Any, args: Any
    ) -> Any:
        batch = draw_flow_matching_batch(transformer, cache, rows, generator, args)
        weight_dtype = batch.weight_dtype
        prediction = transformer(
            hidden_states=batch.model_input,
            encoder_hidden_states=batch.pick(cache, "prompt_embeds").to(weight_dtype),
            encoder_hidden_states_mask=batch.pick(cache, "prompt_embeds_mask"),
            timestep=batch.sigmas.to(weight_dtype),
            img_shapes=[cache["img_shapes"]] * batch.target_latents.shape[0],
            guidance=batch.guidance,
            reward_scores=batch.pick(cache, "reward_scores"),
            failure_text_embeds=batch.pick(cache, "failure_text_embeds"),
            null_reward_mask=null_reward_mask,
            return_dict=False,
        )[0]
        return batch.loss(prediction)


register_backbone(QwenImageEditAdapter())
