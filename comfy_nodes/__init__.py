"""ComfyUI nodes for multi-reward instruction-based image editing: `RewardEditLoader`, `RewardCondition`,
`RewardEdit`, `RewardJudge` (category ``reward_edit``).

ComfyUI reads ``NODE_CLASS_MAPPINGS`` first and only calls ``comfy_entrypoint`` when a pack has no mappings, so the
V3 classes are offered *through* ``NODE_CLASS_MAPPINGS``: where the running ComfyUI provides the pinned
``comfy_api.v0_0_2`` (0.3.75 does, and accepts ``io.ComfyNode`` classes in the mappings) the mappings hold the V3
classes of `comfy_nodes.v3`, elsewhere (e.g. the ComfyUI of March 2024) the V1 classes of `comfy_nodes.v1`.
``comfy_entrypoint`` is exported too where V3 is available. Importing this package imports no torch or diffusers.
"""

from __future__ import annotations

import logging
from typing import Any

from .texts import DISPLAY_NAMES
from .v1 import V1_NODES

logger = logging.getLogger(__name__)


def _select_node_classes() -> tuple[tuple[type, ...], str, Any]:
    try:
        import comfy_api.v0_0_2  # noqa: F401  (ComfyUI with the pinned V3 node API)
    except ImportError:
        return V1_NODES, "v1", None
    try:
        from .v3 import V3_NODES, comfy_entrypoint
    except Exception as error:  # a comfy_api change must not cost users the nodes: V1 still loads everywhere
        logger.warning("reward_edit: V3 node API unusable (%s: %s); using the V1 nodes", type(error).__name__, error)
        return V1_NODES, "v1", None
    return V3_NODES, "v3", comfy_entrypoint


_NODE_CLASSES, NODE_API, _entrypoint = _select_node_classes()

NODE_CLASS_MAPPINGS: dict[str, type] = {cls.__name__: cls for cls in _NODE_CLASSES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = dict(DISPLAY_NAMES)

logger.info("reward_edit: registered %d nodes (%s API)", len(NODE_CLASS_MAPPINGS), NODE_API)

if _entrypoint is not None:
    comfy_entrypoint = _entrypoint

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_API"]
