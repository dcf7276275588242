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

from .nodes_dit import DIT_DISPLAY_NAMES, V1_DIT_NODES, v3_dit_nodes
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


def _dit_node_classes() -> tuple[type, ...]:
    """The DiT reward nodes (`comfy_nodes.nodes_dit`) in the API the rest of the pack uses."""
    if NODE_API == "v3":
        try:
            return v3_dit_nodes()
        except Exception as error:  # same rule as above: V1 still loads everywhere
            logger.warning("reward_edit: V3 DiT nodes unusable (%s: %s); using V1", type(error).__name__, error)
    return V1_DIT_NODES


NODE_CLASS_MAPPINGS.update({cls.__name__: cls for cls in _dit_node_classes()})
NODE_DISPLAY_NAME_MAPPINGS.update(DIT_DISPLAY_NAMES)

logger.info("reward_edit: registered %d nodes (%s API)", len(NODE_CLASS_MAPPINGS), NODE_API)

if _entrypoint is not None:
    comfy_entrypoint = _entrypoint

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_API"]
