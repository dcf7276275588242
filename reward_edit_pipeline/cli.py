"""`reward-edit <verb>`: a thin command-line shell over the library.

Every verb is declared once, in `VERBS`: its module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and is
imported only when that verb runs, so ``reward-edit --help`` answers without importing torch, and a verb's heavy
dependencies load only for it.

Options every verb accepts (before or after the verb): ``-v``/``--verbose`` (INFO; twice: DEBUG), ``-q``/``--quiet``
(errors only); ``reward-edit --version`` prints the installed version.

Exit codes (`ExitCode`, documented in docs/cli.md): 0 success; 1 the work ran and failed (the Hub unreachable,
items left ungraded, a failed upload); 2 bad usage or bad input, reported before any work where possible (argparse
uses 2 as well); 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .extras import MissingExtraError


class ExitCode(enum.IntEnum):
    """The exit codes of every verb."""

    OK = 0
    FAILURE = 1  # the work ran and failed (network, upload, items left undone)
    USAGE = 2  # bad arguments or bad input: nothing (or nothing irreversible) was done
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell convention)


# verb -> (module, one-line help): the one place the CLI's verbs are declared.
VERBS: dict[str, tuple[str, str]] = {
    "edit": ("reward_edit_pipeline.commands.edit", "Edit an image with an instruction and reward conditions."),
    "convert-official": (
        "reward_edit_pipeline.commands.convert_official",
        "Convert an official Multi-Reward-Editing release folder into a RewardEditPipeline folder.",
    ),
    "convert-smartedit": (
        "reward_edit_pipeline.commands.convert_smartedit",
        "Convert the SmartEdit release (Hub repo id or local copy) into a RewardSmartEditPipeline folder.",
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

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# the verbosity of the libraries that keep their own logging configuration, by their environment variable
_LIBRARY_VERBOSITY_VARIABLES = ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY")


class _VersionAction(argparse.Action):
    """``--version``: print ``reward-edit <version>`` and exit (the version is looked up only when asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from reward_edit_pipeline import __version__

        print(f"reward-edit {__version__}")
        parser.exit()


def _add_verbosity_options(parser: argparse.ArgumentParser, *, in_verb: bool) -> None:
    # in a verb's parser the defaults are suppressed, so `reward-edit -v edit ...` is not reset by the verb's parser
    default = argparse.SUPPRESS if in_verb else 0
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=default, help="more log output: -v info, -vv debug")
    group.add_argument("-q", "--quiet", action="count", default=default, help="log errors only")


def _load_verb(verb: str):
    module_name, _ = VERBS[verb]
    return importlib.import_module(module_name)


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """Top-level parser; only ``verb``'s module is imported to fill in its arguments."""
    parser = argparse.ArgumentParser(
        prog="reward-edit",
        description="Multi-reward instruction-based image editing.",
        epilog="Exit codes: 0 success, 1 the work failed, 2 bad usage or input, 130 interrupted. "
        "Run `reward-edit <verb> --help` for a verb's options.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    _add_verbosity_options(parser, in_verb=False)
    subparsers = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name, (_, help_text) in VERBS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        _add_verbosity_options(sub, in_verb=True)
        if name == verb:
            _load_verb(name).add_arguments(sub)
    return parser


def log_level(verbose: int, quiet: int) -> int:
    """The logging level of ``-v``/``-q`` counts: WARNING by default."""
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure_logging(level: int) -> None:
    """Send log records of `level` and above to stderr.

    In a fresh process the root logger gets a handler; when the caller already configured logging (an embedding
    program, pytest) only an explicit ``-v``/``-q`` changes its level.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)
    elif level != logging.WARNING:
        root.setLevel(level)
    if level != logging.WARNING:
        name = logging.getLevelName(level).lower()
        for variable in _LIBRARY_VERBOSITY_VARIABLES:  # read when diffusers / transformers are first imported
            os.environ.setdefault(variable, name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((arg for arg in argv if not arg.startswith("-")), None)
    if verb is not None and verb not in VERBS:
        build_parser().error(f"unknown verb {verb!r}; choose one of: {', '.join(VERBS)}")
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return ExitCode.USAGE
    configure_logging(log_level(args.verbose, args.quiet))
    try:
        return int(_load_verb(args.verb).run(args) or ExitCode.OK)
    except MissingExtraError as error:  # an optional dependency of this verb is not installed
        print(f"reward-edit {args.verb}: error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print(f"reward-edit {args.verb}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
