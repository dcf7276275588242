"""`reward-edit train`: the same program as `accelerate launch -m reward_edit_pipeline.train`."""

from __future__ import annotations

import argparse

from .args import add_arguments as _add_arguments
from .args import validate_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device, resolve_mixed_precision
    from .train import configure_logging, train

    dit = getattr(args, "backbone", "sd15") not in (
        "sd15",
        "smartedit",
    )  # DiT editors: LoRA + reward modules (train/dit.py)
    try:
        if dit:
            from .dit import validate_dit_args

            validate_dit_args(args)
        validate_args(args)
        resolve_mixed_precision(args.mixed_precision, resolve_device("auto"))  # fp16 on a CPU-only machine: refuse
    except ValueError as error:
        import sys

        print(f"reward-edit train: error: {error}", file=sys.stderr)
        return 2
    configure_logging()
    if args.backbone == "smartedit":  # SmartEdit stage 2 (train/smartedit.py, docs/smartedit.md)
        from .smartedit import train_smartedit

        try:
            train_smartedit(args)
        except ValueError as error:
            import sys

            print(f"reward-edit train: error: {error}", file=sys.stderr)
            return 2
        return 0
    if dit:
        from .dit import train_dit

        train_dit(args)
        return 0
    train(args)
    return 0
