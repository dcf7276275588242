"""Reward training of DiT editors (`reward-edit train --backbone flux-kontext`): LoRA + reward modules.

What is trained: LoRA adapters (PEFT, rank `--lora_rank`) on the attention projections of the frozen base
transformer, and the reward modules (`reward_conditioner.*`, `reward_attention.*`) in full, both kept in float32.
The base weights stay frozen in the run's weight dtype (`--mixed_precision bf16` → bfloat16 with autocast on CUDA).

Data: the same triplets and reward records as the SD trainer (`--train_data_dir`/`--dataset_name`, `--rewards`,
read by `train/sources.py`). Every example is encoded once before training (VAE latents of the original and the
edited image, prompt embeddings, pooled failure-text embeddings: "cached latents and text embeddings"); the VAE and
text encoders are then moved to the CPU, so only the transformer stays on the accelerator. The cache itself lives in
CPU memory (T5 embeddings dominate: 512 × 4096 values per example, ≈ 4 MB in bf16, so ≈ 80 GB for 20K examples;
use `--max_train_samples` or a machine with the RAM; a disk-backed cache is not implemented).

Each backbone plugs in through a `DitBackboneAdapter` registered in `BACKBONES` (FLUX.1 Kontext here; the
Qwen-Image-Edit adapter registers itself the same way). The loop is single-process: one device, deterministic from
`--seed` (each micro-batch draws its examples uniformly, with replacement, from a seeded generator; an "epoch" is
`len(examples) / (batch × accumulation)` steps), resumable exactly (trainable weights, AdamW state and the random
generator are checkpointed as safetensors; no pickle). Multi-GPU (accelerate) is not implemented for the DiT backbones.

SD-trainer flags that do not apply here (`--use_ema`, `--conditioning_dropout_prob`, `--random_flip`,
`--cache_latents`, `--use_8bit_adam`, validation flags) are ignored, with a log line when they differ from defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .dit_backbones import BACKBONES, DitBackboneAdapter, draw_flow_matching_batch, read_model_index, register_backbone
from .lora import check_lora_alpha, check_lora_rank, make_lora_config

logger = logging.getLogger(__name__)

DIT_BACKBONES: tuple[str, ...] = ("flux-kontext", "qwen-image-edit")
BACKBONE_CHOICES: tuple[str, ...] = ("sd15", "smartedit", *DIT_BACKBONES)  # smartedit: train/smartedit.py
CHECKPOINT_PREFIX = "checkpoint-"
ADAPTER_FOLDER = "reward_lora"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
#: the PEFT settings a checkpoint records (in state.json) and a resuming run must match
CHECKPOINT_LORA_SETTINGS: tuple[str, ...] = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules")


def add_dit_arguments(parser: argparse.ArgumentParser) -> None:
    """`--backbone` and the DiT-only flags (added to the trainer's parser by `train/args.py`)."""
    group = parser.add_argument_group("DiT backbones (--backbone flux-kontext | qwen-image-edit)")
    group.add_argument(
        "--backbone",
        type=str,
        default="sd15",
        choices=BACKBONE_CHOICES,
        help=(
            "sd15: the paper's InstructPix2Pix UNet (needs --stage). flux-kontext: FLUX.1 Kontext [dev] "
            "(--pretrained_model_name_or_path: a FluxKontextPipeline folder, wrapped with zero-initialised reward "
            "modules, or a RewardFluxKontextPipeline folder to continue). qwen-image-edit: Qwen-Image-Edit. "
            "smartedit: stage 2 of a converted SmartEdit folder (docs/smartedit.md)."
        ),
    )
    group.add_argument("--lora_rank", type=int, default=16, help="DiT: LoRA rank on the attention projections.")
    group.add_argument("--lora_alpha", type=float, default=None, help="DiT: LoRA alpha (default: the rank).")
    group.add_argument(
        "--reward_token_dim", type=int, default=768, help="DiT: width of the reward tokens when wrapping a base model."
    )
    group.add_argument(
        "--dit_guidance_scale",
        type=float,
        default=1.0,
        help="DiT: embedded guidance value fed to guidance-distilled transformers (FLUX.1 Kontext) while training.",
    )


def validate_dit_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check a DiT run's own flags and mark it a stage-2 run; the caller then runs the shared checks
    (`train.args.validate_args`)."""
    if args.backbone not in BACKBONES:
        raise ValueError(f"--backbone {args.backbone!r} has no trainer adapter here; available: {sorted(BACKBONES)}")
    if args.stage not in (None, 2):
        raise ValueError(f"--stage applies to --backbone sd15 only (DiT training is reward training), got {args.stage}")
    args.stage = 2
    if args.mixed_precision == "fp16":
        raise ValueError(
            "--mixed_precision fp16 is not supported for DiT backbones (activations overflow); use bf16 or no"
        )
    check_lora_rank("--lora_rank", args.lora_rank)
    check_lora_alpha("--lora_alpha", args.lora_alpha)
    if args.reward_token_dim < 1:
        raise ValueError(f"--reward_token_dim must be an integer >= 1, got {args.reward_token_dim}")
    if not (math.isfinite(args.dit_guidance_scale) and args.dit_guidance_scale >= 0):
        raise ValueError(f"--dit_guidance_scale must be a finite number >= 0, got {args.dit_guidance_scale}")
    return args


# ---------------------------------------------------------------------------------------------- backbone adapters
class FluxKontextAdapter(DitBackboneAdapter):
    """FLUX.1 Kontext: rectified-flow loss on packed latents; the reference image tokens follow the noisy ones."""

    name = "flux-kontext"

    def load_pipeline(self, args: argparse.Namespace, dtype: Any) -> Any:
        from reward_edit_pipeline.pipelines.pipeline_reward_flux_kontext import RewardFluxKontextPipeline

        path = args.pretrained_model_name_or_path
        transformer_class = (read_model_index(path).get("transformer") or [None, None])[1]
        if transformer_class == "RewardFluxTransformer2DModel":
            return RewardFluxKontextPipeline.from_pretrained(path, dtype=dtype)
        return RewardFluxKontextPipeline.from_flux_kontext(
            path, reward_config={"reward_token_dim": args.reward_token_dim}, dtype=dtype, revision=args.revision
        )

    def lora_target_modules(self, transformer: Any) -> list[str]:
        names = []
        for name, _ in transformer.named_modules():
            if ".attn." in name and name.rsplit(".attn.", 1)[1] in (
                "to_q",
                "to_k",
                "to_v",
                "to_out.0",
                "add_q_proj",
                "add_k_proj",
                "add_v_proj",
                "to_add_out",
            ):
                names.append(name)
        return names

    def encode_examples(
        self, pipe: Any, examples: Sequence[Any], resolution: int, device: Any, skips: Any = None, chunk: int = 8
    ) -> dict[str, Any]:
        import torch

        from .data import ImageLoadError, TripletDataset

        multiple = pipe.vae_scale_factor * 2
        if resolution % multiple:
            raise ValueError(f"--resolution must be a multiple of {multiple} for FLUX.1 Kontext, got {resolution}")
        vae = pipe.vae
        loader = TripletDataset(examples, tokenizer=None, resolution=resolution, with_rewards=False)
        kept, pixels = [], []
        for example in examples:  # unreadable or misaligned pairs are skipped and counted, as in the SD trainer
            try:
                pixels.append(torch.stack(loader.load_pair(example)))
                kept.append(example)
            except ImageLoadError as error:
                if skips is None:
                    raise
                skips.add(error.reason, example.key, str(error))
        if not kept:
            raise ValueError("no readable training examples (see the skipped-sample log)")
        columns: dict[str, list[Any]] = {name: [] for name in ("original", "edited", "prompt", "pooled", "failure")}
        text_ids = latent_ids = None
        for start in range(0, len(kept), chunk):  # encoders run in small chunks; the cache lives on the CPU
            batch = kept[start : start + chunk]
            images = torch.cat(pixels[start : start + chunk]).to(device=device, dtype=vae.dtype)  # [orig, edit]*n
            latents = vae.encode(images).latent_dist.mode()
            latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
            channels, height, width = latents.shape[1:]
            packed = pipe._pack_latents(latents, latents.shape[0], channels, height, width).float().cpu()
            columns["original"].append(packed[0::2])
            columns["edited"].append(packed[1::2])
            prompt_embeds, pooled, text_ids = pipe.encode_prompt(
                prompt=[example.instruction for example in batch],
                prompt_2=None,
                device=device,
                max_sequence_length=min(512, pipe.tokenizer_2.model_max_length),
            )
            columns["prompt"].append(prompt_embeds.cpu())
            columns["pooled"].append(pooled.cpu())
            columns["failure"].append(
                pipe.encode_failure_text([example.failure_text for example in batch], device).cpu()
            )
            latent_ids = pipe._prepare_latent_image_ids(1, height // 2, width // 2, "cpu", torch.float32)
        reference_ids = latent_ids.clone()
        reference_ids[..., 0] = 1
        return {
            "keys": [example.key for example in kept],
            "edited_latents": torch.cat(columns["edited"]),
            "original_latents": torch.cat(columns["original"]),
            "prompt_embeds": torch.cat(columns["prompt"]),
            "pooled_prompt_embeds": torch.cat(columns["pooled"]),
            "failure_text_embeds": torch.cat(columns["failure"]),
            "reward_scores": torch.tensor([example.reward_scores for example in kept], dtype=torch.float32),
            "txt_ids": text_ids.cpu(),
            "img_ids": torch.cat([latent_ids, reference_ids], dim=0),
        }

    def training_loss(
        self, transformer: Any, cache: dict[str, Any], rows: Any, generator: Any, null_reward_mask: Any, args: Any
    ) -> Any:
        batch = draw_flow_matching_batch(transformer, cache, rows, generator, args)
        weight_dtype = batch.weight_dtype
        prediction = transformer(
            hidden_states=batch.model_input,
            encoder_hidden_states=batch.pick(cache, "prompt_embeds").to(weight_dtype),
            pooled_projections=batch.pick(cache, "pooled_prompt_embeds").to(weight_dtype),
            timestep=batch.sigmas.to(weight_dtype),
            img_ids=cache["img_ids"].to(batch.device),
            txt_ids=cache["txt_ids"].to(batch.device),
            guidance=batch.guidance,
            reward_scores=batch.pick(cache, "reward_scores"),
            failure_text_embeds=batch.pick(cache, "failure_text_embeds"),
            null_reward_mask=null_reward_mask,
            return_dict=False,
        )[0]
        return batch.loss(prediction)


register_backbone(FluxKontextAdapter())


# ---------------------------------------------------------------------------------------------- state
@dataclass
class DitTrainingState:
    global_step: int
    losses: list[float]


def _trainable_parameters(transformer: Any) -> dict[str, Any]:
    return {name: parameter for name, parameter in transformer.named_parameters() if parameter.requires_grad}


def save_dit_checkpoint(folder: str, transformer: Any, optimizer: Any, generator: Any, state: DitTrainingState) -> None:
    """Trainable weights, AdamW moments, the random generator and counters; written to `<folder>.tmp` first."""
    from safetensors.torch import save_file

    temporary = folder + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    trainable = _trainable_parameters(transformer)
    save_file(
        {name: tensor.detach().contiguous() for name, tensor in trainable.items()},
        os.path.join(temporary, TRAINABLE_FILE),
    )
    optimizer_tensors: dict[str, Any] = {"generator_state": generator.get_state()}
    names = list(trainable)
    for index, parameter in enumerate(trainable.values()):
        for key, value in optimizer.state.get(parameter, {}).items():
            optimizer_tensors[f"{names[index]}::{key}"] = value.detach().contiguous()
    save_file(optimizer_tensors, os.path.join(temporary, OPTIMIZER_FILE))
    with open(os.path.join(temporary, STATE_FILE), "w", encoding="utf-8") as handle:
        json.dump(
            {"global_step": state.global_step, "losses": state.losses, "lora": lora_settings(transformer)}, handle
        )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temporary, folder)


def lora_settings(transformer: Any) -> dict[str, Any]:
    """The LoRA settings a checkpoint must share with the run that resumes it (rank, alpha, patterns, targets)."""
    from reward_edit_pipeline.pipelines.reward_dit_common import lora_adapter_metadata

    metadata = lora_adapter_metadata(transformer)
    return {name: metadata.get(name) for name in CHECKPOINT_LORA_SETTINGS}


def load_dit_checkpoint(folder: str, transformer: Any, optimizer: Any, generator: Any) -> DitTrainingState:
    import torch
    from safetensors.torch import load_file

    with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as handle:
        state = json.load(handle)
    saved, current = state.get("lora"), lora_settings(transformer)
    if saved is None:
        logger.info("checkpoint %s records no LoRA settings (an older run); resuming with this run's", folder)
    elif saved != current:
        differing = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
        raise ValueError(
            f"checkpoint {folder!r} was trained with other LoRA settings {{setting: (checkpoint, this run)}}: "
            f"{differing}; resume with the same --lora_rank and --lora_alpha"
        )
    trainable = _trainable_parameters(transformer)
    weights = load_file(os.path.join(folder, TRAINABLE_FILE))
    if set(weights) != set(trainable):
        raise ValueError(
            f"checkpoint {folder!r} does not match this run's trainable parameters (different --lora_rank or backbone?)"
        )
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(weights[name])
    tensors = load_file(os.path.join(folder, OPTIMIZER_FILE))
    generator.set_state(tensors.pop("generator_state"))
    for name, parameter in trainable.items():
        entry = {key.split("::", 1)[1]: value for key, value in tensors.items() if key.split("::", 1)[0] == name}
        if entry:
            optimizer.state[parameter] = {
                key: value.to(parameter.device) if key != "step" else value for key, value in entry.items()
            }
    return DitTrainingState(global_step=state["global_step"], losses=list(state["losses"]))


def list_dit_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        suffix = name[len(CHECKPOINT_PREFIX) :]
        if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append((int(suffix), os.path.join(output_dir, name)))
    return sorted(found)


# ---------------------------------------------------------------------------------------------- training
def setup_trainable(transformer: Any, adapter: DitBackboneAdapter, rank: int, alpha: float | None) -> list[Any]:
    """Freeze the base, add LoRA (B = 0, so the output is unchanged) and unfreeze the reward modules; trainable
    parameters are float32."""
    import torch

    transformer.requires_grad_(False)
    transformer.add_adapter(make_lora_config(rank, alpha, adapter.lora_target_modules(transformer)))
    for parameter in transformer.reward_parameters():
        parameter.requires_grad_(True)
    trainable = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.to(torch.float32)
    return trainable


def train_dit(args: argparse.Namespace, step_callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run a DiT reward training (see the module docstring); returns a summary (also written as `summary.json`)."""
    import torch

    from reward_edit_pipeline.pipelines.reward_dit_common import save_reward_adapter

    from .data import SkipCounter
    from .sources import load_training_examples

    adapter = BACKBONES[args.backbone]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    weight_dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
    ignored = [
        name
        for name, default in (("use_ema", True), ("conditioning_dropout_prob", 0.05), ("use_8bit_adam", False))
        if getattr(args, name, default) != default
    ]
    if ignored:
        logger.info("flags of the SD trainer that DiT training ignores: %s", ignored)
    os.makedirs(args.output_dir, exist_ok=True)

    skips = SkipCounter()
    examples = load_training_examples(args, skips)
    if not examples:
        raise ValueError("no training examples with reward records (see the skipped-sample log)")
    torch.manual_seed(args.seed)  # initialisation of new reward modules and LoRA weights
    pipe = adapter.load_pipeline(args, weight_dtype)
    pipe.set_progress_bar_config(disable=True)
    encoders = [name for name in ("vae", "text_encoder", "text_encoder_2") if getattr(pipe, name, None) is not None]
    for name in encoders:  # encoders on the device while caching; the transformer joins only afterwards
        getattr(pipe, name).to(device)
    started = time.perf_counter()
    with torch.no_grad():
        cache = adapter.encode_examples(pipe, examples, args.resolution, device, skips)
    logger.info("encoded %d examples in %.1fs", len(cache["keys"]), time.perf_counter() - started)
    for name in encoders:
        getattr(pipe, name).to("cpu")
    transformer = pipe.transformer.to(device)
    torch.manual_seed(args.seed)
    trainable = setup_trainable(transformer, adapter, args.lora_rank, args.lora_alpha)
    transformer.train()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    state = DitTrainingState(global_step=0, losses=[])
    resume = args.resume_from_checkpoint
    if resume == "latest":
        checkpoints = list_dit_checkpoints(args.output_dir)
        resume = checkpoints[-1][1] if checkpoints else None
    if resume is not None:
        state = load_dit_checkpoint(resume, transformer, optimizer, generator)
        logger.info("resumed from %s at step %d", resume, state.global_step)

    num_examples = len(cache["keys"])
    samples_per_step = args.train_batch_size * args.gradient_accumulation_steps
    total_steps = args.max_train_steps or math.ceil(num_examples / samples_per_step) * args.num_train_epochs
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=weight_dtype == torch.bfloat16)
    while state.global_step < total_steps:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(args.gradient_accumulation_steps):
            rows = torch.randint(0, num_examples, (args.train_batch_size,), generator=generator)
            null_mask = torch.rand(args.train_batch_size, generator=generator) < args.reward_dropout_prob
            with autocast:
                loss = adapter.training_loss(transformer, cache, rows.to(device), generator, null_mask.to(device), args)
            (loss / args.gradient_accumulation_steps).backward()
            step_loss += loss.item() / args.gradient_accumulation_steps
        torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        state.global_step += 1
        state.losses.append(step_loss)
        logger.info("step %d/%d loss %.5f", state.global_step, total_steps, step_loss)
        if step_callback is not None:
            step_callback(state.global_step)
        if state.global_step % args.checkpointing_steps == 0 or state.global_step == total_steps:
            folder = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{state.global_step}")
            save_dit_checkpoint(folder, transformer, optimizer, generator, state)
            if args.checkpoints_total_limit is not None:
                for _, old in list_dit_checkpoints(args.output_dir)[: -args.checkpoints_total_limit]:
                    shutil.rmtree(old)

    # Outputs: the adapter (LoRA in diffusers' format + reward modules), then the full pipeline with LoRA merged.
    transformer.eval()
    adapter_dir = os.path.join(args.output_dir, ADAPTER_FOLDER)
    os.makedirs(adapter_dir, exist_ok=True)
    save_reward_adapter(adapter_dir, type(pipe), transformer)  # LoRA with its alpha, reward modules, config
    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()
    if weight_dtype != torch.float32:  # the trained float32 weights join the base's dtype in the saved pipeline
        transformer.to(weight_dtype)
    pipe.save_pretrained(args.output_dir)
    summary = {
        "backbone": args.backbone,
        "global_step": state.global_step,
        "losses": state.losses,
        "num_examples": num_examples,
        "skipped": skips.as_dict(),
        "trainable_parameters": sum(parameter.numel() for parameter in trainable),
    }
    with open(os.path.join(args.output_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


# The Qwen-Image-Edit adapter lives in its own module (train/dit_qwen.py) and registers itself when imported.
from . import dit_qwen  # noqa: E402, F401
