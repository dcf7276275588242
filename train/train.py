"""Stage 1 (InstructPix2Pix) and stage 2 (multi-reward) training with accelerate.

    reward-edit train --stage 2 --pretrained_model_name_or_path <ip2p> --train_data_dir <triplets> --rewards <json>
    accelerate launch -m reward_edit_pipeline.train --stage 2 ...          # the same program, on N GPUs / nodes

One `main()`: parse flags → load and (stage 1) widen or (stage 2) wrap the UNet → data (optionally cached latents) →
accelerate prepare → resume → loop (checkpoints, validation, logging) → save the pipeline folder and a run summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..devices import resolve_mixed_precision
from ..loading import detect_layout
from .args import parse_args
from .cache import (
    CachedLatentDataset,
    build_latent_cache,
    cache_fingerprint,
    count_cache_skips,
    encode_failure_text_table,
    encode_prompt_ids,
)
from .data import EpochShuffleSampler, SkipCounter, TripletDataset, collate_training_batch, tokenize
from .sources import load_training_examples
from .step import LossContext, training_loss

logger = get_logger(__name__, log_level="INFO")

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state_rank{rank}.json"
GENERATOR_FILE = "generator_rank{rank}.safetensors"
EMA_FOLDER = "unet_ema"
SUMMARY_FILE = "train_summary.json"


# ----------------------------------------------------------------------------------------------- model surgery
def widen_conv_in(unet: nn.Module, in_channels: int = 8) -> None:
    """Stage 1: grow `unet.conv_in` to `in_channels` inputs; old channels keep their weights, new ones start at zero
    (so the widened UNet initially ignores the conditioning image latents)."""
    old = unet.conv_in
    if in_channels <= old.in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} input channels; cannot widen to {in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new.to(device=old.weight.device, dtype=old.weight.dtype)
    unet.register_to_config(in_channels=in_channels)


def load_unet(args: argparse.Namespace, failure_text_embed_dim: int) -> tuple[nn.Module, str]:
    """Load the base UNet and turn it into this stage's model; returns `(unet, how)` where `how` says what was done."""
    from diffusers import UNet2DConditionModel

    from reward_edit_pipeline import RewardUNet2DConditionModel

    name, revision = args.pretrained_model_name_or_path, args.revision
    config = UNet2DConditionModel.load_config(name, subfolder="unet", revision=revision)
    class_name = config.get("_class_name")
    if args.stage == 1:
        if class_name == RewardUNet2DConditionModel.__name__:
            raise ValueError(f"--stage 1 needs a text-to-image (or InstructPix2Pix) base; {name!r} is a reward UNet")
        unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", revision=revision, use_safetensors=True)
        if unet.config.in_channels == 4:
            widen_conv_in(unet, 8)
            return unet, "stage 1: widened conv_in 4 -> 8 channels (new channels zero-initialized)"
        if unet.config.in_channels == 8:
            return unet, "stage 1: base UNet already has 8 input channels (InstructPix2Pix); continuing its training"
        raise ValueError(f"--stage 1 base UNet must have 4 (or 8) input channels, got {unet.config.in_channels}")

    if class_name == RewardUNet2DConditionModel.__name__:
        unet = RewardUNet2DConditionModel.from_pretrained(
            name, subfolder="unet", revision=revision, use_safetensors=True
        )
        return unet, "stage 2: base is a reward-edit pipeline; continuing its training"
    if os.path.isdir(name) and detect_layout(name) == "official":  # the one release-layout rule (loading.py)
        unet = RewardUNet2DConditionModel.from_official_unet(os.path.join(name, "unet"))
        return unet, "stage 2: base is an official Multi-Reward-Editing stage-2 release; converted its reward modules"
    base = UNet2DConditionModel.from_pretrained(name, subfolder="unet", revision=revision, use_safetensors=True)
    if base.config.in_channels != 8:
        raise ValueError(
            f"--stage 2 needs an InstructPix2Pix base (UNet with 8 input channels); {name!r} has "
            f"{base.config.in_channels}. Train --stage 1 first."
        )
    unet = RewardUNet2DConditionModel.from_unet(base, reward_init="zero", failure_text_embed_dim=failure_text_embed_dim)
    return unet, (
        "stage 2: base is a plain InstructPix2Pix UNet; added zero-initialized reward modules "
        "(RewardUNet2DConditionModel.from_unet(..., reward_init='zero'))"
    )


def load_base_scheduler(args: argparse.Namespace) -> Any:
    """The base pipeline's own scheduler (saved with the output pipeline, as diffusers' training scripts do)."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(
        args.pretrained_model_name_or_path, subfolder="scheduler", revision=args.revision
    )
    scheduler_class = getattr(diffusers, config.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
    return scheduler_class.from_config(config)


# ----------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in `output_dir` as `(step, path)`, oldest first (`.tmp` folders are incomplete)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        suffix = name[len(CHECKPOINT_PREFIX) :]
        if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit():
            found.append((int(suffix), os.path.join(output_dir, name)))
    return sorted(found)


def prune_checkpoints(output_dir: str, total_limit: int | None) -> list[str]:
    """Remove the oldest checkpoints so that one more fits under `total_limit`; returns the removed paths."""
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    excess = len(checkpoints) + 1 - total_limit
    removed = [path for _, path in checkpoints[: max(0, excess)]]
    for path in removed:
        shutil.rmtree(path)
    return removed


def resolve_resume_path(args: argparse.Namespace) -> str | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint
    checkpoints = list_checkpoints(args.output_dir)
    return checkpoints[-1][1] if checkpoints else None


class TrainingProgress:
    """Counters and the per-process random generator that a checkpoint must restore for an exact resume."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.global_step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.samples_seen = 0
        self.losses: list[float] = []
        self.skips = SkipCounter()

    def save(self, folder: str, rank: int) -> None:
        state = {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "samples_seen": self.samples_seen,
            "losses": self.losses,
            "skips": self.skips.as_dict(),
        }
        save_file({"state": self.generator.get_state()}, os.path.join(folder, GENERATOR_FILE.format(rank=rank)))
        with open(os.path.join(folder, STATE_FILE.format(rank=rank)), "w", encoding="utf-8") as handle:
            json.dump(state, handle)

    def load(self, folder: str, rank: int) -> None:
        state_path = os.path.join(folder, STATE_FILE.format(rank=rank))
        if not os.path.isfile(state_path):
            raise FileNotFoundError(
                f"{state_path} is missing: the checkpoint was written by a run with fewer processes, or is not a "
                "reward-edit checkpoint"
            )
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
        self.generator.set_state(load_file(os.path.join(folder, GENERATOR_FILE.format(rank=rank)))["state"])
        self.global_step = state["global_step"]
        self.epoch = state["epoch"]
        self.batches_in_epoch = state["batches_in_epoch"]
        self.samples_seen = state["samples_seen"]
        self.losses = list(state["losses"])
        self.skips = SkipCounter.from_dict(state["skips"])


def unet_fingerprint(unet: nn.Module) -> str:
    """sha256 of every parameter and buffer (sorted by name), to compare weights across processes or runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- pipelines
def build_pipeline(
    args: argparse.Namespace, unet: nn.Module, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any
):
    """Stage 1 → stock `StableDiffusionInstructPix2PixPipeline`; stage 2 → `RewardEditPipeline`."""
    components = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
    }
    if args.stage == 1:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        return StableDiffusionInstructPix2PixPipeline(**components, requires_safety_checker=False)
    from reward_edit_pipeline import RewardEditPipeline

    return RewardEditPipeline(**components)


def log_validation(
    args: argparse.Namespace,
    accelerator: Accelerator,
    pipeline: Any,
    global_step: int,
) -> list[str]:
    """Edit `--validation_image` with `--validation_prompt` (rewards (5, 5, 5) in stage 2); write PNGs, log images."""
    import numpy as np

    from ..images import load_rgb_image

    image = load_rgb_image(args.validation_image)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    kwargs: dict[str, Any] = {}
    if args.stage == 2:
        kwargs = {"reward_scores": (5, 5, 5), "failure_text": None}
    folder = os.path.join(args.output_dir, "validation")
    os.makedirs(folder, exist_ok=True)
    paths, arrays = [], []
    pipeline.set_progress_bar_config(disable=True)
    for number in range(args.num_validation_images):
        edited = pipeline(
            args.validation_prompt,
            image=image,
            num_inference_steps=args.validation_inference_steps,
            image_guidance_scale=1.5,
            guidance_scale=7.5,
            generator=generator,
            **kwargs,
        ).images[0]
        path = os.path.join(folder, f"step-{global_step:07d}-{number}.png")
        edited.save(path)
        paths.append(path)
        arrays.append(np.asarray(edited))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(arrays), global_step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation": [wandb.Image(a, caption=args.validation_prompt) for a in arrays]}, step=global_step
            )
    return paths


# ----------------------------------------------------------------------------------------------- training
def _tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: (value if isinstance(value, (int, float, str, bool)) else str(value)) for key, value in vars(args).items()
    }


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:  # the process's own high-water mark (ru_maxrss is inherited from the parent across fork + exec on Linux)
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def train(args: argparse.Namespace, step_callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run one training job described by validated `args`; returns the run summary (also written to the output)."""
    try:
        return _train(args, step_callback)
    finally:
        # Accelerate keeps process-wide singletons; clear them so a later run in the same process starts clean.
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()


def _train(args: argparse.Namespace, step_callback: Callable[[int], None] | None) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextModel, CLIPTokenizer

    started = time.perf_counter()
    os.makedirs(args.output_dir, exist_ok=True)
    project_config = ProjectConfiguration(
        project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
    )
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=project_config,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    if args.use_ema and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "--use_ema is not supported with FSDP (the EMA copy needs the full parameters on every process); "
            "pass --no-use_ema, or use the DDP or DeepSpeed ZeRO-2 config"
        )
    weight_dtype = resolve_mixed_precision(args.mixed_precision, accelerator.device)  # fp16 on CPU: clear error
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    device, rank = accelerator.device, accelerator.process_index

    # ---- models
    tokenizer = CLIPTokenizer.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="tokenizer", revision=args.revision
    )
    # weights from safetensors only (the loaders' pickle rule, `reward_edit_pipeline.downloads.apply_pickle_rule`)
    text_encoder = CLIPTextModel.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="text_encoder", revision=args.revision, use_safetensors=True
    )
    vae = AutoencoderKL.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="vae", revision=args.revision, use_safetensors=True
    )
    noise_scheduler = DDPMScheduler.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="scheduler", revision=args.revision
    )
    unet, how = load_unet(args, failure_text_embed_dim=text_encoder.config.hidden_size)
    logger.info(how)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    vae.to(device, dtype=weight_dtype)
    text_encoder.to(device, dtype=weight_dtype)
    ema_unet = None
    if args.use_ema:
        ema_unet = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=type(unet), model_config=unet.config)
        ema_unet.to(device)

    # ---- optimizer
    learning_rate = args.learning_rate
    if args.scale_lr:
        learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from error
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizer = optimizer_class(
        unet.parameters(),
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )

    # ---- data
    skips = SkipCounter()
    examples = load_training_examples(args, skips)
    if not examples:
        raise ValueError(f"no usable training examples (skipped: {skips.as_dict()['by_reason']})")
    with_rewards = args.stage == 2
    triplets = TripletDataset(examples, tokenizer, args.resolution, with_rewards)
    failure_text_table = None
    if with_rewards:
        failure_text_table = encode_failure_text_table(text_encoder, tokenizer, triplets.failure_texts)
        logger.info("encoded %d distinct failure texts once (frozen text encoder)", len(triplets.failure_texts))
    cached = args.cache_latents
    if cached:
        cache_dir = args.latents_cache_dir or os.path.join(args.output_dir, "latents_cache")
        fingerprint = cache_fingerprint(
            examples,
            {
                "model": os.path.abspath(args.pretrained_model_name_or_path)
                if os.path.isdir(args.pretrained_model_name_or_path)
                else args.pretrained_model_name_or_path,
                "revision": args.revision,
                "resolution": args.resolution,
                "random_flip": args.random_flip,
                "dtype": str(weight_dtype),
            },
        )
        cache_index = build_latent_cache(
            accelerator,
            cache_dir,
            fingerprint,
            triplets,
            vae,
            text_encoder,
            with_flips=args.random_flip,
            batch_size=args.train_batch_size,
            num_workers=args.dataloader_num_workers,
            failure_text_table=failure_text_table,
        )
        count_cache_skips(cache_index, skips)
        train_dataset = CachedLatentDataset(cache_dir, cache_index)
        if len(train_dataset) == 0:
            raise ValueError(f"every example was skipped while caching: {skips.as_dict()['by_reason']}")
    else:
        train_dataset = triplets
    sampler = EpochShuffleSampler(len(train_dataset), args.seed)
    train_dataloader = DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        num_workers=args.dataloader_num_workers,
        collate_fn=collate_training_batch,
        persistent_workers=False,
    )

    # ---- schedule (counted per process, as accelerate shards the batches)
    batches_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes)
    updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler
    )

    # ---- per-process randomness (flips, VAE samples, noise, timesteps, dropout): seeded, saved in checkpoints
    generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + 7919 * rank + 1)
    progress = TrainingProgress(generator)
    progress.skips = skips

    def save_state_hook(models: list[nn.Module], weights: list[Any], output_dir: str) -> None:
        if ema_unet is not None and accelerator.is_main_process:
            ema_unet.save_pretrained(os.path.join(output_dir, EMA_FOLDER))
        progress.save(output_dir, rank)

    def load_state_hook(models: list[nn.Module], input_dir: str) -> None:
        if ema_unet is not None:
            loaded = EMAModel.from_pretrained(
                os.path.join(input_dir, EMA_FOLDER), model_cls=type(accelerator.unwrap_model(unet))
            )
            ema_unet.load_state_dict(loaded.state_dict())
            ema_unet.to(device)
            del loaded
        progress.load(input_dir, rank)

    accelerator.register_save_state_pre_hook(save_state_hook)
    accelerator.register_load_state_pre_hook(load_state_hook)

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=_tracker_config(args))

    resume_path = resolve_resume_path(args)
    if args.resume_from_checkpoint is not None and resume_path is None:
        logger.info("--resume_from_checkpoint latest: no checkpoint in %s yet, starting a new run", args.output_dir)
    if resume_path is not None:
        logger.info("resuming from %s", resume_path)
        accelerator.load_state(resume_path)
        if progress.global_step >= max_train_steps:
            logger.info("checkpoint is at step %d >= --max_train_steps %d", progress.global_step, max_train_steps)

    # ---- fixed inputs
    with torch.no_grad():
        null_prompt_embeds = encode_prompt_ids(text_encoder, tokenize(tokenizer, [""])).to(weight_dtype)
    latent_channels = vae.config.latent_channels
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if args.resolution % vae_scale_factor:
        raise ValueError(f"--resolution must be a multiple of the VAE's downsampling factor {vae_scale_factor}")
    latent_size = args.resolution // vae_scale_factor
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** training stage %d *****", args.stage)
    logger.info("  examples = %d (skipped so far: %d), epochs = %d", len(train_dataset), skips.total, num_epochs)
    logger.info(
        "  batch per device = %d, total batch = %d, optimization steps = %d",
        args.train_batch_size,
        total_batch,
        max_train_steps,
    )

    loss_context = LossContext(
        vae=vae,
        text_encoder=text_encoder,
        noise_scheduler=noise_scheduler,
        null_prompt_embeds=null_prompt_embeds,
        generator=generator,
        device=device,
        latent_channels=latent_channels,
        latent_size=latent_size,
        cached=cached,
        with_rewards=with_rewards,
        random_flip=args.random_flip,
        conditioning_dropout_prob=args.conditioning_dropout_prob,
        reward_dropout_prob=args.reward_dropout_prob,
        failure_text_embed_dim=text_encoder.config.hidden_size,
        failure_text_table=failure_text_table,
    )

    # ---- loop
    progress_bar = tqdm(
        total=max_train_steps,
        initial=progress.global_step,
        desc="steps",
        disable=not accelerator.is_local_main_process,
    )
    sample_id_log = None
    if args.log_sample_ids:
        sample_id_log = open(os.path.join(args.output_dir, f"sample_ids_rank{rank}.jsonl"), "a", encoding="utf-8")
    step_times: list[float] = []
    step_loss_sum, step_micro_batches = 0.0, 0
    step_started = time.perf_counter()
    first_epoch, resume_batches = progress.epoch, progress.batches_in_epoch
    done = progress.global_step >= max_train_steps
    try:
        for epoch in range(first_epoch, num_epochs):
            if done:
                break
            progress.epoch = epoch
            # The data order of an epoch depends only on (seed, epoch); accelerate's loaders re-apply their own
            # iteration counter as the epoch when iterated, so set it on the loader actually iterated.
            train_dataloader.set_epoch(epoch)
            loader = train_dataloader
            if epoch == first_epoch and resume_batches > 0:
                loader = accelerator.skip_first_batches(train_dataloader, resume_batches)
                loader.set_epoch(epoch)
                progress.batches_in_epoch = resume_batches
            else:
                progress.batches_in_epoch = 0
            for batch in loader:
                progress.batches_in_epoch += 1
                for skipped in batch["skipped"]:
                    progress.skips.add(skipped.reason, skipped.key, skipped.detail)
                if sample_id_log is not None and batch["batch_size"]:
                    sample_id_log.write(
                        json.dumps({"step": progress.global_step, "indices": batch["index"].tolist()}) + "\n"
                    )
                with accelerator.accumulate(unet):
                    loss, size = training_loss(unet, batch, loss_context)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                progress.samples_seen += size
                if size:
                    step_loss_sum += loss.detach().item()
                    step_micro_batches += 1
                if not accelerator.sync_gradients:
                    continue

                # ---- one optimization step done
                if ema_unet is not None:
                    ema_unet.step(unet.parameters())
                progress.global_step += 1
                now = time.perf_counter()
                step_times.append(now - step_started)
                step_started = now
                progress_bar.update(1)
                logged = {"lr": lr_scheduler.get_last_lr()[0], "step_time_s": step_times[-1]}
                if step_micro_batches:
                    step_loss = step_loss_sum / step_micro_batches
                    progress.losses.append(step_loss)
                    logged["train_loss"] = step_loss
                    progress_bar.set_postfix(
                        loss=f"{step_loss:.4f}", step_s=f"{step_times[-1]:.2f}", skipped=progress.skips.total
                    )
                else:  # no loss to report: a 0.0 would read as a perfect step
                    logger.warning(
                        "step %d: every sample of its batch was skipped (%s so far); no loss for this step",
                        progress.global_step,
                        progress.skips.as_dict()["by_reason"],
                        main_process_only=False,
                    )
                step_loss_sum, step_micro_batches = 0.0, 0
                accelerator.log(logged, step=progress.global_step)

                if progress.global_step % args.checkpointing_steps == 0:
                    save_checkpoint(args, accelerator, progress.global_step)
                if (
                    args.validation_image is not None
                    and progress.global_step % args.validation_steps == 0
                    and accelerator.is_main_process
                ):
                    run_validation(
                        args,
                        accelerator,
                        unet,
                        ema_unet,
                        vae,
                        text_encoder,
                        tokenizer,
                        noise_scheduler,
                        progress.global_step,
                    )
                step_started = time.perf_counter()  # checkpoint and validation time is not step time
                if step_callback is not None:
                    step_callback(progress.global_step)
                if progress.global_step >= max_train_steps:
                    done = True
                    break
    finally:
        progress_bar.close()
        if sample_id_log is not None:
            sample_id_log.close()

    # ---- final pipeline, summary
    accelerator.wait_for_everyone()
    sharded = accelerator.distributed_type == DistributedType.FSDP
    # Parameters are replicated under DDP and ZeRO-2 (their fingerprints must agree); FSDP shards them.
    fingerprints = gather_object([None if sharded else unet_fingerprint(accelerator.unwrap_model(unet))])
    full_state_dict = accelerator.get_state_dict(unet)  # collective: gathers FSDP shards onto the main process
    per_rank = gather_object(
        [
            {
                "rank": rank,
                "samples_seen": progress.samples_seen,
                "last_losses": progress.losses[-10:],
                "skipped": progress.skips.as_dict(),
            }
        ]
    )
    summary: dict[str, Any] = {
        "stage": args.stage,
        "base_model": args.pretrained_model_name_or_path,
        "base_model_handling": how,
        "output_dir": os.path.abspath(args.output_dir),
        "optimization_steps": progress.global_step,
        "max_train_steps": max_train_steps,
        "epochs": progress.epoch + 1,
        "processes": accelerator.num_processes,
        "total_batch_size": total_batch,
        "examples": len(train_dataset),
        "samples_seen": sum(entry["samples_seen"] for entry in per_rank),
        "skipped_total": sum(entry["skipped"]["total"] for entry in per_rank),
        "per_process": per_rank,
        "final_loss": progress.losses[-1] if progress.losses else None,
        "first_losses": progress.losses[:10],
        "last_losses": progress.losses[-10:],
        "mean_step_time_s": (sum(step_times) / len(step_times)) if step_times else None,
        "wall_time_s": time.perf_counter() - started,
        "peak_memory_bytes": _peak_memory_bytes(device),
        "unet_fingerprints": fingerprints,
        "cached_latents": cached,
        "ema": args.use_ema,
        "resumed_from": resume_path,
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(unet)
        trained_unet = type(unwrapped).from_config(unwrapped.config)
        trained_unet.load_state_dict(full_state_dict)
        if ema_unet is not None:
            ema_unet.copy_to(trained_unet.parameters())
        # The frozen VAE and text encoder are saved from the base model's own files, so their weights stay bit-exact
        # (the copies used for training may have been cast to fp16/bf16).
        base, revision = args.pretrained_model_name_or_path, args.revision
        pipeline = build_pipeline(
            args,
            trained_unet,
            AutoencoderKL.from_pretrained(base, subfolder="vae", revision=revision, use_safetensors=True),
            CLIPTextModel.from_pretrained(base, subfolder="text_encoder", revision=revision, use_safetensors=True),
            tokenizer,
            load_base_scheduler(args),
        )
        pipeline.save_pretrained(args.output_dir, safe_serialization=True)
        with open(os.path.join(args.output_dir, SUMMARY_FILE), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        logger.info(
            "done: %d steps, %d samples, %d skipped %s, final loss %s, saved pipeline to %s",
            summary["optimization_steps"],
            summary["samples_seen"],
            summary["skipped_total"],
            progress.skips.as_dict()["by_reason"],
            summary["final_loss"],
            args.output_dir,
        )
    accelerator.end_training()
    return summary


def save_checkpoint(args: argparse.Namespace, accelerator: Accelerator, step: int) -> str:
    """`accelerator.save_state` into `<output_dir>/checkpoint-<step>`, written as `.tmp` and renamed when complete;
    the oldest checkpoints beyond `--checkpoints_total_limit` are removed first."""
    final_path = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{step}")
    temporary_path = final_path + ".tmp"
    if accelerator.is_main_process:
        for path in prune_checkpoints(args.output_dir, args.checkpoints_total_limit):
            logger.info("removed old checkpoint %s (--checkpoints_total_limit %d)", path, args.checkpoints_total_limit)
        if os.path.isdir(temporary_path):
            shutil.rmtree(temporary_path)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary_path)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.isdir(final_path):
            shutil.rmtree(final_path)
        os.replace(temporary_path, final_path)
        logger.info("saved checkpoint %s", final_path)
    accelerator.wait_for_everyone()
    return final_path


def run_validation(
    args, accelerator, unet, ema_unet, vae, text_encoder, tokenizer, noise_scheduler, global_step
) -> None:
    """Validation edits with the EMA weights when EMA is on (the training weights are restored afterwards)."""
    from diffusers import EulerAncestralDiscreteScheduler

    trained_unet = accelerator.unwrap_model(unet)
    if ema_unet is not None:
        ema_unet.store(trained_unet.parameters())
        ema_unet.copy_to(trained_unet.parameters())
    trained_unet.eval()
    try:
        scheduler = EulerAncestralDiscreteScheduler.from_config(noise_scheduler.config)
        pipeline = build_pipeline(args, trained_unet, vae, text_encoder, tokenizer, scheduler)
        with torch.no_grad(), accelerator.autocast():
            paths = log_validation(args, accelerator, pipeline, global_step)
        logger.info("validation edits: %s", ", ".join(paths))
    finally:
        trained_unet.train()
        if ema_unet is not None:
            ema_unet.restore(trained_unet.parameters())


def configure_logging() -> None:
    """INFO-level log lines with time and logger name (what the training scripts of diffusers print)."""
    import logging

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.backbone == "smartedit":  # SmartEdit stage 2 (train/smartedit.py)
        from .smartedit import train_smartedit

        train_smartedit(args)
        return 0
    if args.backbone != "sd15":  # DiT editors: LoRA + reward modules (train/dit.py)
        from .dit import train_dit

        train_dit(args)
        return 0
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
