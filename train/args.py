"""Command-line arguments of the trainer (flat, diffusers `train_instruct_pix2pix.py` style).

Flag names follow diffusers' InstructPix2Pix example where they overlap; the defaults are the paper's stage-2 recipe
(resolution 256, random flip, batch 4 x accumulation 4, learning rate 5e-5 constant without warm-up, conditioning
dropout 0.05, EMA, max grad norm 1.0, fp16, gradient checkpointing, AdamW (0.9, 0.999, 1e-2, 1e-8)).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
LR_SCHEDULER_CHOICES = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
REPORT_TO_CHOICES = ("tensorboard", "wandb", "all", "none")
DEFAULT_REWARD_DROPOUT_PROB = 0.05
DEFAULT_MAX_TRAIN_STEPS = 10_000
#: the LLaMA attention projections `--llm_lora_target_modules` may name; SmartEdit's release adapts q_proj and v_proj
LLM_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_LLM_LORA_TARGET_MODULES = ("q_proj", "v_proj")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every trainer flag to `parser` (used by `reward-edit train` and `python -m reward_edit_pipeline.train`)."""
    bool_flag = argparse.BooleanOptionalAction

    group = parser.add_argument_group("model")
    group.add_argument(
        "--stage",
        type=int,
        default=None,
        choices=(1, 2),
        help=(
            "1: InstructPix2Pix from a text-to-image Stable Diffusion checkpoint (UNet conv_in widened 4 -> 8 channels, "
            "new channels zero-initialized). 2: multi-reward fine-tuning (RewardUNet2DConditionModel) from a stage-1 "
            "InstructPix2Pix checkpoint or a reward-edit pipeline folder. Required for --backbone sd15 (the default)."
        ),
    )
    group.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="Base pipeline folder or Hub id (stage 1: text-to-image SD; stage 2: InstructPix2Pix or reward-edit).",
    )
    group.add_argument("--revision", type=str, default=None, help="Hub revision of the base model.")

    group = parser.add_argument_group("data")
    group.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help=(
            "Training triplets: an InstructPix2Pix clip-filtered folder (<key>/<seed>_0.jpg, <seed>_1.jpg, prompt.json, "
            "seeds.json), a manifest file, or a folder saved with `datasets.Dataset.save_to_disk`."
        ),
    )
    group.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A `datasets` dataset (Hub id or local path) with the InstructPix2Pix columns, instead of --train_data_dir.",
    )
    group.add_argument(
        "--rewards",
        type=str,
        default=None,
        help=(
            "Stage 2 only (required there): reward records - an annotation store, an exported dataset, or the official "
            "RewardEdit_20K.json. Records are matched to triplets by key."
        ),
    )
    group.add_argument(
        "--max_train_samples", type=int, default=None, help="Use only the first N triplets (debugging, quick runs)."
    )
    group.add_argument("--resolution", type=int, default=256, help="Training resolution (square, multiple of 8).")
    group.add_argument(
        "--random_flip",
        action=bool_flag,
        default=True,
        help="Randomly flip original and edited image together horizontally (paper: on).",
    )
    group.add_argument(
        "--dataloader_num_workers", type=int, default=4, help="DataLoader worker processes (0 = main process)."
    )
    group.add_argument(
        "--cache_latents",
        action="store_true",
        help=(
            "Precompute VAE latent distributions and text embeddings once into safetensors shards and train from them "
            "(the VAE and text encoder then never run in the training loop)."
        ),
    )
    group.add_argument(
        "--latents_cache_dir",
        type=str,
        default=None,
        help="Where the --cache_latents shards live (default: <output_dir>/latents_cache). Reused when it matches.",
    )
    group.add_argument(
        "--log_sample_ids",
        action="store_true",
        help="Append the example indices each process trains on to <output_dir>/sample_ids_rank<r>.jsonl (audit).",
    )

    group = parser.add_argument_group("optimization")
    group.add_argument("--seed", type=int, default=42, help="Seed for data order, noise, flips and dropout.")
    group.add_argument("--train_batch_size", type=int, default=4, help="Batch size per device.")
    group.add_argument(
        "--num_train_epochs", type=int, default=None, help="Train this many epochs instead of --max_train_steps."
    )
    group.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help=f"Total optimization steps (default {DEFAULT_MAX_TRAIN_STEPS}, the paper's, unless --num_train_epochs).",
    )
    group.add_argument("--gradient_accumulation_steps", type=int, default=4, help="Micro-batches per optimizer step.")
    group.add_argument(
        "--gradient_checkpointing",
        action=bool_flag,
        default=True,
        help="Recompute UNet activations in the backward pass to save memory (paper: on).",
    )
    group.add_argument("--learning_rate", type=float, default=5e-5, help="Learning rate (after any warm-up).")
    group.add_argument(
        "--scale_lr",
        action="store_true",
        help="Multiply the learning rate by batch size x accumulation x number of processes.",
    )
    group.add_argument(
        "--lr_scheduler", type=str, default="constant", choices=LR_SCHEDULER_CHOICES, help="Schedule (paper: constant)."
    )
    group.add_argument("--lr_warmup_steps", type=int, default=0, help="Warm-up steps (paper: none).")
    group.add_argument(
        "--conditioning_dropout_prob",
        type=float,
        default=0.05,
        help=(
            "InstructPix2Pix conditioning dropout: with probability p the prompt is dropped, with p the image, with p "
            "both (enables classifier-free guidance on both)."
        ),
    )
    group.add_argument(
        "--reward_dropout_prob",
        type=float,
        default=None,
        help=(
            "Stage 2 (default 0.05): probability that a sample's reward scores and failure text are replaced by the "
            "UNet's null reward condition (enables reward guidance at inference). Drawn independently of "
            "--conditioning_dropout_prob."
        ),
    )
    group.add_argument("--use_ema", action=bool_flag, default=True, help="Keep an EMA of the UNet (paper: on).")
    group.add_argument("--ema_decay", type=float, default=0.9999, help="EMA decay.")
    group.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes 8-bit AdamW (optional dependency).")
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    group.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW weight decay.")
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    group.add_argument(
        "--mixed_precision",
        type=str,
        default="fp16",
        choices=MIXED_PRECISION_CHOICES,
        help="fp16 (the paper's, default) needs a GPU; on the CPU use `no` or bf16. The VAE and text encoder run in this dtype.",
    )
    group.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")

    group = parser.add_argument_group("outputs, checkpoints and logging")
    group.add_argument("--output_dir", type=str, default="reward-edit-model", help="Final pipeline folder and logs.")
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    group.add_argument(
        "--report_to", type=str, default="tensorboard", choices=REPORT_TO_CHOICES, help="Experiment tracker."
    )
    group.add_argument("--tracker_project_name", type=str, default="reward-edit-train", help="Tracker run name.")
    group.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable state every N steps.")
    group.add_argument(
        "--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints (oldest removed first)."
    )
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='Resume from a checkpoint folder, or "latest" for the newest <output_dir>/checkpoint-<step>.',
    )
    group.add_argument("--validation_steps", type=int, default=500, help="Write validation edits every N steps.")
    group.add_argument("--validation_image", type=str, default=None, help="Image to edit for validation.")
    group.add_argument("--validation_prompt", type=str, default=None, help="Instruction for the validation edit.")
    group.add_argument("--num_validation_images", type=int, default=1, help="Validation edits per validation.")
    group.add_argument(
        "--validation_inference_steps", type=int, default=20, help="Denoising steps per validation edit."
    )

    from .dit import add_dit_arguments  # --backbone and the DiT flags (FLUX.1 Kontext, Qwen-Image-Edit)

    add_dit_arguments(parser)

    group = parser.add_argument_group("SmartEdit (--backbone smartedit)")
    group.add_argument(
        "--llm_lora_rank",
        type=int,
        default=0,
        help=(
            "SmartEdit: LoRA rank on the LLM's attention projections, trained with the bridge and the UNet (SmartEdit's "
            "release: 8). 0 (default): the LLM stays frozen."
        ),
    )
    group.add_argument(
        "--llm_lora_alpha", type=float, default=None, help="SmartEdit: LLM LoRA alpha (default: the rank; release: 16)."
    )
    group.add_argument(
        "--llm_lora_dropout", type=float, default=0.0, help="SmartEdit: LLM LoRA dropout (default 0; release: 0.05)."
    )
    group.add_argument(
        "--llm_lora_target_modules",
        type=str,
        default=None,
        help=(
            f"SmartEdit: comma-separated LLaMA attention projections that get LoRA, from {','.join(LLM_LORA_MODULES)} "
            f"(default {','.join(DEFAULT_LLM_LORA_TARGET_MODULES)}, as SmartEdit's adapter_config.json)."
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reward_edit_pipeline.train",
        description="Train stage 1 (InstructPix2Pix) or stage 2 (multi-reward) of reward-edit with accelerate.",
    )
    add_arguments(parser)
    return parser


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


#: the DiT trainer's flags (train/dit.py), which `--backbone smartedit` does not use
SMARTEDIT_UNUSED_DIT_FLAGS: tuple[str, ...] = ("lora_rank", "lora_alpha", "reward_token_dim", "dit_guidance_scale")
#: the LLM LoRA flags that mean something only with `--llm_lora_rank` >= 1
LLM_LORA_SETTING_FLAGS: tuple[str, ...] = ("llm_lora_alpha", "llm_lora_dropout", "llm_lora_target_modules")


def _flags_set(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The flags among `names` whose value differs from the parser's default (`build_parser`), as `--name`."""
    parser = build_parser()
    return [f"--{name}" for name in names if getattr(args, name, parser.get_default(name)) != parser.get_default(name)]


def validate_llm_lora_args(args: argparse.Namespace) -> None:
    """The SmartEdit LLM LoRA flags: rank 0 (frozen LLM) takes no other LoRA flag; `llm_lora_target_modules` becomes
    a tuple of projection names."""
    from .lora import check_lora_alpha, check_lora_dropout, check_lora_rank

    check_lora_rank("--llm_lora_rank", args.llm_lora_rank, zero_means="the LLM stays frozen")
    if args.backbone == "smartedit":  # the DiT trainer's flags would be ignored here: refused instead
        dit_flags = _flags_set(args, SMARTEDIT_UNUSED_DIT_FLAGS)
        _require(
            not dit_flags,
            f"{', '.join(dit_flags)} apply to the DiT backbones only, not --backbone smartedit (its LLM LoRA flags "
            "are --llm_lora_rank, --llm_lora_alpha, --llm_lora_dropout, --llm_lora_target_modules)",
        )
    if args.llm_lora_rank == 0:
        given = _flags_set(args, LLM_LORA_SETTING_FLAGS)
        _require(
            not given,
            f"{', '.join(given)} given without --llm_lora_rank >= 1 (rank 0, the default, keeps the LLM frozen)",
        )
        return
    _require(
        args.backbone == "smartedit",
        f"--llm_lora_rank applies to --backbone smartedit only, got --backbone {args.backbone}",
    )
    check_lora_alpha("--llm_lora_alpha", args.llm_lora_alpha)
    check_lora_dropout("--llm_lora_dropout", args.llm_lora_dropout)
    names = args.llm_lora_target_modules
    if names is None:
        modules = DEFAULT_LLM_LORA_TARGET_MODULES
    elif isinstance(names, str):
        modules = tuple(name.strip() for name in names.split(","))
    else:  # already validated (a tuple)
        modules = tuple(names)
    unknown = [name for name in modules if name not in LLM_LORA_MODULES]
    _require(
        bool(modules) and not unknown and len(set(modules)) == len(modules),
        f"--llm_lora_target_modules must be distinct names from {','.join(LLM_LORA_MODULES)}, got {names!r}",
    )
    args.llm_lora_target_modules = modules


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check argument combinations and ranges; raise `ValueError` naming the flag and the accepted range."""
    _require(args.stage in (1, 2), f"--stage is required (1 or 2) for --backbone sd15, got {args.stage}")
    _require(
        (args.train_data_dir is None) != (args.dataset_name is None),
        "give exactly one of --train_data_dir or --dataset_name "
        f"(got train_data_dir={args.train_data_dir!r}, dataset_name={args.dataset_name!r})",
    )
    if args.stage == 2:
        _require(args.rewards is not None, "--rewards is required for --stage 2 (annotation store, export or JSON)")
    else:
        _require(args.rewards is None, "--rewards only applies to --stage 2; stage 1 trains without rewards")
    if args.train_data_dir is not None:
        _require(os.path.exists(args.train_data_dir), f"--train_data_dir {args.train_data_dir!r} does not exist")
    if args.rewards is not None:
        _require(os.path.exists(args.rewards), f"--rewards {args.rewards!r} does not exist")

    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "validation_steps"):
        value = getattr(args, name)
        _require(value >= 1, f"--{name} must be an integer >= 1, got {value}")
    for name in ("max_train_steps", "num_train_epochs", "max_train_samples", "checkpoints_total_limit"):
        value = getattr(args, name)
        _require(value is None or value >= 1, f"--{name} must be an integer >= 1, got {value}")
    _require(
        args.max_train_steps is None or args.num_train_epochs is None,
        "give --max_train_steps or --num_train_epochs, not both",
    )
    if args.max_train_steps is None and args.num_train_epochs is None:
        args.max_train_steps = DEFAULT_MAX_TRAIN_STEPS
    _require(
        args.resolution >= 8 and args.resolution % 8 == 0,
        f"--resolution must be a positive multiple of 8 (the VAE downsamples by 8), got {args.resolution}",
    )
    _require(
        args.dataloader_num_workers >= 0, f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}"
    )
    _require(args.lr_warmup_steps >= 0, f"--lr_warmup_steps must be >= 0, got {args.lr_warmup_steps}")
    _require(args.num_validation_images >= 1, f"--num_validation_images must be >= 1, got {args.num_validation_images}")
    _require(
        args.validation_inference_steps >= 1,
        f"--validation_inference_steps must be >= 1, got {args.validation_inference_steps}",
    )

    _require(
        math.isfinite(args.learning_rate) and args.learning_rate > 0,
        f"--learning_rate must be a finite number > 0, got {args.learning_rate}",
    )
    # Conditioning dropout draws one uniform number u per sample: u < p drops the prompt, p <= u < 2p both, 2p <= u <
    # 3p the image (InstructPix2Pix), so 3p must fit in [0, 1].
    _require(
        0.0 <= args.conditioning_dropout_prob <= 1.0 / 3.0,
        f"--conditioning_dropout_prob must be in [0, 1/3] (prompt, both and image each take p), "
        f"got {args.conditioning_dropout_prob}",
    )
    if args.stage == 1:
        _require(args.reward_dropout_prob is None, "--reward_dropout_prob only applies to --stage 2")
        args.reward_dropout_prob = 0.0
    elif args.reward_dropout_prob is None:
        args.reward_dropout_prob = DEFAULT_REWARD_DROPOUT_PROB
    _require(
        0.0 <= args.reward_dropout_prob <= 1.0,
        f"--reward_dropout_prob must be in [0, 1], got {args.reward_dropout_prob}",
    )
    _require(0.0 <= args.ema_decay <= 1.0, f"--ema_decay must be in [0, 1], got {args.ema_decay}")
    _require(0.0 <= args.adam_beta1 < 1.0, f"--adam_beta1 must be in [0, 1), got {args.adam_beta1}")
    _require(0.0 <= args.adam_beta2 < 1.0, f"--adam_beta2 must be in [0, 1), got {args.adam_beta2}")
    _require(args.adam_weight_decay >= 0, f"--adam_weight_decay must be >= 0, got {args.adam_weight_decay}")
    _require(args.adam_epsilon > 0, f"--adam_epsilon must be > 0, got {args.adam_epsilon}")
    _require(args.max_grad_norm > 0, f"--max_grad_norm must be > 0, got {args.max_grad_norm}")
    _require(
        (args.validation_image is None) == (args.validation_prompt is None),
        "give both --validation_image and --validation_prompt, or neither",
    )
    if args.validation_image is not None:
        _require(os.path.isfile(args.validation_image), f"--validation_image {args.validation_image!r} is not a file")
    if args.resume_from_checkpoint not in (None, "latest"):
        _require(
            os.path.isdir(args.resume_from_checkpoint),
            f'--resume_from_checkpoint must be "latest" or an existing checkpoint folder, '
            f"got {args.resume_from_checkpoint!r}",
        )
    validate_llm_lora_args(args)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the trainer's flags (argparse-style exit with a message naming the flag on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.backbone not in ("sd15", "smartedit"):
            from .dit import validate_dit_args

            validate_dit_args(args)
        return validate_args(args)
    except ValueError as error:
        parser.error(str(error))
