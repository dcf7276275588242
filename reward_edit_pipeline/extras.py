"""Optional dependencies: the package's extras, and one clear error when a feature needs one that is not installed.

| extra | packages | needed by |
| --- | --- | --- |
| ``judge`` | openai | the LVLM judge (`OpenAIJudge`, ``reward-edit annotate``, the ComfyUI judge node) |
| ``data`` | datasets, pyarrow | parquet / hf-dataset export, ``push-dataset``, training from a dataset |
| ``train`` | tensorboard, datasets, pyarrow | ``reward-edit train`` with its default tracker and dataset readers |
| ``report`` | matplotlib, scipy | benchmark plots and statistics |
| ``comfyui-test`` | ComfyUI's own requirements | the end-to-end tests in unmodified ComfyUI builds |
| ``test`` | all of the above, pytest, ruff | the test suite |

The model, the pipeline, ``reward-edit edit``/``convert-official`` and the Hub verbs need none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from types import ModuleType

DISTRIBUTION = "reward-edit-pipeline"


class MissingExtraError(ImportError):
    """A feature needs a package of an extra that is not installed; the message names the extra to install."""


def missing_extra_message(modules: Iterable[str], extra: str, feature: str) -> str:
    """The one wording of "`feature` needs `modules`; install the `extra` extra"."""
    names = ", ".join(f"`{module.split('.')[0]}`" for module in modules)
    return f'{feature} needs {names}, which is not installed; install the `{extra}` extra: pip install "{DISTRIBUTION}[{extra}]"'


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The `modules` that are not installed (found without importing them, so a check before any work is cheap)."""
    return [module for module in modules if importlib.util.find_spec(module.split(".")[0]) is None]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or raise `MissingExtraError` saying that `feature` needs ``pip install
    "reward-edit-pipeline[<extra>]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(missing_extra_message([module], extra, feature), name=module) from error
