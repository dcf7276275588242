"""ComfyUI nodes for multi-reward instruction-based image editing: `RewardEditLoader`, `RewardCondition`,
`RewardEdit`, `RewardJudge` (category ``reward_edit``).

ComfyUI reads ``NODE_CLASS_MAPPINGS`` first and only calls ``comfy_entrypoint`` when a pack has no mappings, so the
V3 classes are offered *through* ``NODE_CLASS_MAPPINGS``: where the running ComfyUI provides ``comfy_api.latest``
(builds with the V3 API also accept ``io.ComfyNode`` classes in the mappings; checked with 0.3.75) the mappings hold
the V3 classes, elsewhere (e.g. the ComfyUI of 2024) the V1 classes. Both are generated from `comfy_nodes.specs`, so ids, input names
and widget order are the same everywhere. ``comfy_entrypoint`` is exported too where V3 is available.
"""

from __future__ import annotations

import logging
from typing import Any

from .specs import NODE_SPECS
from .v1 import V1_NODES

logger = logging.getLogger(__name__)


def _select_node_classes() -> tuple[tuple[type, ...], str, Any]:
    try:
        import comfy_api.latest  # noqa: F401  (ComfyUI with the V3 node API)
    except ImportError:
        return V1_NODES, "v1", None
    try:
        from .v3 import V3_NODES, comfy_entrypoint
    except Exception as error:  # a future comfy_api change must not cost users the nodes: V1 still loads everywhere
        logger.warning("reward_edit: V3 node API unusable (%s: %s); using the V1 nodes", type(error).__name__, error)
        return V1_NODES, "v1", None
    return V3_NODES, "v3", comfy_entrypoint


_NODE_CLASSES, NODE_API, _entrypoint = _select_node_classes()

NODE_CLASS_MAPPINGS: dict[str, type] = {spec.node_id: cls for spec, cls in zip(NODE_SPECS, _NODE_CLASSES, strict=True)}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {spec.node_id: spec.display_name for spec in NODE_SPECS}

logger.info("reward_edit: registered %d nodes (%s API)", len(NODE_CLASS_MAPPINGS), NODE_API)

if _entrypoint is not None:
    comfy_entrypoint = _entrypoint

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "NODE_API"]
