"""Stage 2 for SmartEdit: `reward-edit train --stage 2 --backbone smartedit` (docs/smartedit.md).

The CLIP vision tower, the VAE and the CLIP text encoder are frozen; the bridge (Q-Former + BIM) and the reward UNet
are trained with the reward conditions. The LLM is frozen too, or (`--llm_lora_rank R`, as in SmartEdit's own
training) gets PEFT LoRA adapters on its attention projections, trained together with the bridge and the UNet; the
bridge's `vision_projection` (LLaVA's `mm_projector`, which feeds the LLM) then stays frozen, as in SmartEdit. Same
triplets and reward store as the SD trainer (`load_training_examples`, `TripletDataset`). One process, float32, no
accelerate: a small, exact trainer that checkpoints and resumes bit for bit (model, LLM LoRA, optimizer, sampler
position and random-generator state). The final folder holds the pipeline with the LoRA merged into `llm` and, in
`llm_lora/`, the adapter itself in PEFT format.

Per micro-batch: LLM states at the image tokens (no grad unless the LLM has LoRA) → bridge → text condition and
conv_in residual; the InstructPix2Pix conditioning dropout (u < p: empty prompt, p ≤ u < 2p: both, 2p ≤ u < 3p: no
image; the empty prompt is SmartEdit's null condition, the CLIP states of "") and the reward dropout (null reward
condition) as in the SD trainer; epsilon-prediction MSE on DDPM-noised latents (the folder's scheduler config).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file

from .data import EpochShuffleSampler, SkipCounter, TripletDataset, collate_training_batch
from .sources import load_training_examples

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
LLM_LORA_FILE = "llm_lora.safetensors"  # in checkpoints: the LLM's LoRA parameters (names as in `llm`)
LLM_LORA_FOLDER = "llm_lora"  # next to the saved pipeline: the adapter in PEFT format (adapter_config.json + weights)


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _llm_lora_parameters(llm: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LLM's trainable (LoRA) parameters by name; empty when the LLM is frozen."""
    return {name: parameter for name, parameter in llm.named_parameters() if parameter.requires_grad}


def _save_checkpoint(folder: Path, pipe: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                     generator: torch.Generator) -> None:  # fmt: skip
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in ("bridge", "unet"):
        weights = {key: value.detach().contiguous() for key, value in getattr(pipe, name).state_dict().items()}
        save_file(weights, str(partial / f"{name}.safetensors"))
    lora = _llm_lora_parameters(pipe.llm)
    if lora:
        save_file({key: value.detach().contiguous() for key, value in lora.items()}, str(partial / LLM_LORA_FILE))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")  # our own file; read back with weights_only=True
    # our generator (noise, timesteps, dropout masks) and torch's global one (the Q-Former's dropout layers)
    save_file(
        {"generator": generator.get_state(), "global": torch.get_rng_state()}, str(partial / "generator.safetensors")
    )
    (partial / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def _load_checkpoint(folder: Path, pipe: Any, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                     llm_lora_settings: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    saved_lora = json.loads((folder / STATE_FILE).read_text(encoding="utf-8")).get("llm_lora")
    if saved_lora != llm_lora_settings:
        raise ValueError(
            f"checkpoint {str(folder)!r} was written with the LLM LoRA settings {saved_lora or 'none (frozen LLM)'}; "
            f"this run has {llm_lora_settings or 'none (frozen LLM)'}: pass the same --llm_lora_* flags"
        )
    for name in ("bridge", "unet"):
        getattr(pipe, name).load_state_dict(load_file(str(folder / f"{name}.safetensors")), strict=True)
    lora = _llm_lora_parameters(pipe.llm)
    if lora:
        weights = load_file(str(folder / LLM_LORA_FILE))
        if set(weights) != set(lora):
            raise ValueError(f"{str(folder / LLM_LORA_FILE)!r} does not hold this run's LLM LoRA parameters")
        with torch.no_grad():
            for name, parameter in lora.items():
                parameter.copy_(weights[name])
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    states = load_file(str(folder / "generator.safetensors"))
    generator.set_state(states["generator"])
    torch.set_rng_state(states["global"])
    return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))


def smartedit_training_loss(
    pipe: Any,
    batch: dict[str, Any],
    instructions: list[str],
    failure_text_table: torch.Tensor,
    null_text: torch.Tensor,
    generator: torch.Generator,
    conditioning_dropout_prob: float,
    reward_dropout_prob: float,
    train_llm: bool = False,
    noise_scheduler: Any = None,
) -> torch.Tensor:
    """The loss of one micro-batch (see the module docstring); `train_llm`: the LLM runs with gradients (LoRA).
    `noise_scheduler` adds the noise (default: a `DDPMScheduler` from the pipeline scheduler's config)."""
    if noise_scheduler is None:
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    device = null_text.device
    original, edited = batch["original_pixel_values"].to(device), batch["edited_pixel_values"].to(device)
    rows = original.shape[0]
    with torch.no_grad():
        vision_features = pipe.encode_vision((original + 1.0) / 2.0, device)
    with torch.set_grad_enabled(train_llm):  # teacher-forced, as SmartEdit trains (its inference generates)
        llm_states = pipe.encode_instructions(instructions, vision_features, device, llm_generate=False)
    with torch.no_grad():
        scaling = pipe.vae.config.scaling_factor
        edited_dist = pipe.vae.encode(edited).latent_dist
        latents = (
            edited_dist.mean + edited_dist.std * torch.randn(edited_dist.mean.shape, generator=generator)
        ) * scaling
        original_latents = pipe.vae.encode(original).latent_dist.mode()
    latent_size = tuple(latents.shape[-2:])
    conditions = pipe.bridge(llm_states, vision_features, latent_size)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (rows,), generator=generator)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    p = conditioning_dropout_prob
    uniform = torch.rand(rows, generator=generator)
    drop_prompt = (uniform < 2 * p).view(-1, 1, 1)
    text = torch.where(
        drop_prompt, null_text.expand_as(conditions.encoder_hidden_states), conditions.encoder_hidden_states
    )
    keep_image = 1.0 - ((uniform >= p) & (uniform < 3 * p)).float()
    model_input = torch.cat([noisy, original_latents * keep_image.view(-1, 1, 1, 1)], dim=1)
    null_reward_mask = torch.rand(rows, generator=generator) < reward_dropout_prob
    prediction = pipe.unet(
        model_input,
        timesteps,
        encoder_hidden_states=text,
        reward_scores=batch["reward_scores"].to(device),
        failure_text_embeds=failure_text_table[batch["failure_text_index"]],
        null_reward_mask=null_reward_mask,
        conv_in_residual=conditions.image_residual,
    ).sample
    return F.mse_loss(prediction.float(), noise.float())


def train_smartedit(args: argparse.Namespace) -> Path:
    """Run SmartEdit stage 2 with the trainer's flags; returns the saved pipeline folder (`--output_dir`)."""
    from reward_edit_pipeline.pipelines.pipeline_reward_edit import encode_failure_texts
    from reward_edit_pipeline.pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline

    if args.stage != 2:
        raise ValueError("--backbone smartedit trains stage 2 only (a converted SmartEdit folder is the stage-1 model)")
    if args.mixed_precision != "no" or args.cache_latents or args.use_ema:
        raise ValueError(
            "--backbone smartedit runs in float32 without latent caching or EMA: pass --mixed_precision no "
            "--no-use_ema and leave out --cache_latents"
        )
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe = RewardSmartEditPipeline.from_pretrained(args.pretrained_model_name_or_path)
    # The training noise follows the DDPM rule sqrt(ᾱ)·x + sqrt(1 - ᾱ)·ε (as the SD trainer), which is what the UNet
    # sees at inference after `scale_model_input`; an Euler scheduler's own `add_noise` gives x + σ·ε, unscaled.
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    device = torch.device("cpu")
    for name in ("vae", "text_encoder", "llm", "vision_encoder"):
        getattr(pipe, name).requires_grad_(False).eval()
    trained = [pipe.bridge, pipe.unet]
    for module in trained:
        module.requires_grad_(True).train()
    llm_lora_settings = None
    peft_llm = None
    if args.llm_lora_rank:
        llm_lora_settings = {
            "rank": args.llm_lora_rank,
            "alpha": args.llm_lora_alpha if args.llm_lora_alpha is not None else float(args.llm_lora_rank),
            "dropout": args.llm_lora_dropout,
            "target_modules": list(args.llm_lora_target_modules),
        }
        peft_llm = add_llm_lora(pipe.llm, llm_lora_settings, args.seed)
        pipe.bridge.vision_projection.requires_grad_(False)  # LLaVA's mm_projector: frozen, as in SmartEdit
    parameters = [p for module in trained for p in module.parameters() if p.requires_grad]
    parameters += list(_llm_lora_parameters(pipe.llm).values())
    optimizer = torch.optim.AdamW(
        parameters,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )

    skips = SkipCounter()
    examples = load_training_examples(args, skips)
    if not examples:
        raise ValueError(f"no usable training examples (skipped: {skips.as_dict()['by_reason']})")
    dataset = TripletDataset(examples, pipe.tokenizer, args.resolution, with_rewards=True)
    with torch.no_grad():
        failure_text_table = encode_failure_texts(pipe.text_encoder, pipe.tokenizer, dataset.failure_texts, device)
        null_text = pipe.null_text_condition(device)
    sampler = EpochShuffleSampler(len(dataset), args.seed)
    batches_per_epoch = math.ceil(len(dataset) / args.train_batch_size)
    updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch

    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + 1)
    torch.manual_seed(args.seed)  # dropout layers draw from the global generator (saved in checkpoints too)
    state: dict[str, Any] = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "losses": []}
    if llm_lora_settings is not None:
        state["llm_lora"] = llm_lora_settings
    if args.resume_from_checkpoint is not None:
        folder = (
            (_checkpoints(output_dir) or [None])[-1]
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if folder is None:
            logger.info("no checkpoint in %s: starting from scratch", output_dir)
        else:
            state = _load_checkpoint(folder, pipe, optimizer, generator, llm_lora_settings)
            logger.info("resumed from %s at step %d", folder, state["global_step"])

    while state["global_step"] < max_steps:
        sampler.set_epoch(state["epoch"])
        order = list(sampler)
        batches = [order[i : i + args.train_batch_size] for i in range(0, len(order), args.train_batch_size)]
        groups = [
            batches[i : i + args.gradient_accumulation_steps]
            for i in range(0, len(batches), args.gradient_accumulation_steps)
        ]
        start = state["batch_in_epoch"]
        for group_index in range(start, len(groups)):
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for indices in groups[group_index]:
                batch = collate_training_batch([dataset[i] for i in indices])
                if batch["batch_size"] == 0:
                    continue
                instructions = [examples[int(i)].instruction for i in batch["index"]]
                loss = smartedit_training_loss(
                    pipe, batch, instructions, failure_text_table, null_text, generator,
                    args.conditioning_dropout_prob, args.reward_dropout_prob, train_llm=peft_llm is not None,
                    noise_scheduler=noise_scheduler,
                )  # fmt: skip
                (loss / len(groups[group_index])).backward()
                total += loss.item() / len(groups[group_index])
            torch.nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
            state["global_step"] += 1
            state["batch_in_epoch"] = group_index + 1
            state["losses"].append(total)
            logger.info("step %d loss %.6f", state["global_step"], total)
            if state["global_step"] % args.checkpointing_steps == 0 or state["global_step"] == max_steps:
                _save_checkpoint(output_dir / f"checkpoint-{state['global_step']}", pipe, optimizer, state, generator)
                if args.checkpoints_total_limit is not None:
                    for old in _checkpoints(output_dir)[: -args.checkpoints_total_limit]:
                        shutil.rmtree(old)
            if state["global_step"] >= max_steps:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    for module in trained:
        module.eval()
    if peft_llm is not None:
        pipe.llm.eval()
        peft_llm.save_pretrained(str(output_dir / LLM_LORA_FOLDER), safe_serialization=True)
        pipe.register_modules(llm=peft_llm.merge_and_unload())  # W + (alpha / r) · B A: the saved LLM needs no PEFT
        logger.info("saved the LLM LoRA adapter (PEFT format) to %s", output_dir / LLM_LORA_FOLDER)
    pipe.save_pretrained(output_dir)
    logger.info("saved the trained SmartEdit pipeline to %s", output_dir)
    return output_dir


def add_llm_lora(llm: torch.nn.Module, settings: dict[str, Any], seed: int) -> Any:
    """Wrap `llm` (in place) with PEFT LoRA on `settings["target_modules"]` of every layer; only the LoRA weights
    train. A is drawn from a generator seeded with `seed` (the global random state is left as it was), B = 0, so the
    LLM's output is unchanged at the start. Returns the `PeftModel` (for saving the adapter and merging it)."""
    from peft import get_peft_model

    from .lora import make_lora_config

    config = make_lora_config(settings["rank"], settings["alpha"], settings["target_modules"], settings["dropout"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_llm = get_peft_model(llm, config)
    if settings["dropout"] > 0:
        llm.train()  # LoRA dropout acts in training mode (LLaMA's own attention dropout follows its config)
    return peft_llm
