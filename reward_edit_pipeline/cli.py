"""`reward-edit <verb>`: a thin command-line shell over the library.

Each verb lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported
only when their verb runs, so ``reward-edit --help`` stays fast and a verb's heavy dependencies load only for it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# verb -> (module, one-line help). Module paths are part of the CLI's contract with each area's owners.
VERBS: dict[str, tuple[str, str]] = {
    "edit": ("reward_edit_pipeline.commands.edit", "Edit an image with an instruction and reward conditions."),
    "convert-official": (
        "reward_edit_pipeline.commands.convert_official",
        "Convert an official Multi-Reward-Editing release folder into a RewardEditPipeline folder.",
    ),
    "annotate": ("reward_edit_pipeline.commands.annotate", "Grade editing triplets with an LVLM judge into a store."),
    "export": (
        "reward_edit_pipeline.commands.export",
        "Export an annotation store (official-json, jsonl, parquet, hf-dataset).",
    ),
    "import-official": (
        "reward_edit_pipeline.commands.import_official",
        "Import the official RewardEdit_20K.json into an annotation store.",
    ),
    "train": ("reward_edit_pipeline.train.cli", "Train stage 1 (InstructPix2Pix) or stage 2 (multi-reward)."),
    "evaluate": ("reward_edit_pipeline.commands.evaluate", "Run the Real-Edit benchmark and write a report."),
    "push-model": ("reward_edit_pipeline.hub.cli_push_model", "Upload a pipeline folder to the Hugging Face Hub."),
    "push-dataset": ("reward_edit_pipeline.hub.cli_push_dataset", "Upload a reward dataset to the Hugging Face Hub."),
    "pull-model": ("reward_edit_pipeline.hub.cli_pull_model", "Download a reward-edit model from the Hub."),
}


def _load_verb(verb: str):
    module_name, _ = VERBS[verb]
    return importlib.import_module(module_name)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """Top-level parser; only ``verb``'s module is imported to fill in its arguments."""
    parser = argparse.ArgumentParser(prog="reward-edit", description="Multi-reward instruction-based image editing.")
    subparsers = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name, (_, help_text) in VERBS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            _load_verb(name).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((arg for arg in argv if not arg.startswith("-")), None)
    if verb is not None and verb not in VERBS:
        build_parser().error(f"unknown verb {verb!r}; choose one of: {', '.join(VERBS)}")
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    return int(_load_verb(args.verb).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
