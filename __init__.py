"""ComfyUI entry point of the reward-edit-pipeline node pack (this file is only read when ComfyUI imports the clone
from ``custom_nodes/``; the Python package itself is ``reward_edit_pipeline``).

The library must be importable as ``reward_edit_pipeline`` (saved pipelines record that module path in
``model_index.json``). When it is not installed (a plain clone, ComfyUI-Manager installing ``requirements.txt``), a
finder maps ``reward_edit_pipeline`` and its sub-packages (``comfy_nodes/`` → ``reward_edit_pipeline.comfy_nodes``,
``train/``, ``hub/``) to the folders of this clone. The clone's root is never put on ``sys.path``, so its folders never
become top-level modules (ComfyUI owns ``nodes``).
"""

import importlib.abc
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_FOLDERS = {
    "reward_edit_pipeline": "reward_edit_pipeline",
    "reward_edit_pipeline.comfy_nodes": "comfy_nodes",
    "reward_edit_pipeline.train": "train",
    "reward_edit_pipeline.hub": "hub",
}

if __name__ in _PACKAGE_FOLDERS:
    raise ImportError(
        f"this node pack's folder is named {__name__!r}, the name of its own Python package; rename "
        f"{_ROOT} (e.g. to 'reward-edit-pipeline') and restart ComfyUI"
    )


class _CloneFinder(importlib.abc.MetaPathFinder):
    """Finds ``reward_edit_pipeline`` (and the sub-packages kept in other folders) inside this clone."""

    def find_spec(self, fullname, path=None, target=None):
        folder = _PACKAGE_FOLDERS.get(fullname)
        if folder is None:
            return None
        location = os.path.join(_ROOT, folder)
        init_file = os.path.join(location, "__init__.py")
        if not os.path.isfile(init_file):
            return None
        return importlib.util.spec_from_file_location(fullname, init_file, submodule_search_locations=[location])


def _library_is_installed() -> bool:
    if "reward_edit_pipeline" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("reward_edit_pipeline") is not None
    except (ImportError, ValueError):
        return False


if not _library_is_installed() and not any(isinstance(f, _CloneFinder) for f in sys.meta_path):
    sys.meta_path.append(_CloneFinder())

from reward_edit_pipeline.comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
