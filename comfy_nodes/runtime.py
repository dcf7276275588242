"""The bridge to a running ComfyUI: models folder, devices, model management, progress bar and cancellation.

Every ComfyUI import happens inside a function, so this module imports anywhere; the functions need ComfyUI's
``folder_paths`` and ``comfy`` modules (present when ComfyUI runs the nodes). The node logic itself is in
`comfy_nodes.core`.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

from .core import (
    DEVICE_CHOICES,
    HUB_ID_CHOICE,
    JudgeOutputs,
    PipelineCache,
    RewardCondition,
    edit_images,
    folder_fingerprint,
    judge_images,
    list_pipeline_folders,
    resolve_dtype,
    resolve_model_source,
)

logger = logging.getLogger(__name__)

#: loaded pipelines kept between runs (the least recently used one is dropped when another model is loaded)
PIPELINE_CACHE = PipelineCache(capacity=1)


@dataclass
class RewardEditPipe:
    """The value of a ``REWARD_EDIT_PIPE`` socket.

    Attributes:
        pipeline: the `RewardEditPipeline`.
        source: the folder or Hub id it was loaded from.
        device: the loader's device choice (``"auto"`` or ``"cpu"``).
        patcher: ComfyUI ``ModelPatcher`` wrapping the pipeline's modules when ComfyUI manages them (``auto``).
    """

    pipeline: Any
    source: str
    device: str
    patcher: Any = None

    def __repr__(self) -> str:  # shown by ComfyUI's debug views; keep it short
        return f"RewardEditPipe(source={self.source!r}, device={self.device!r})"


def diffusers_roots() -> list[str]:
    """ComfyUI's ``models/diffusers`` folder(s), including those from ``extra_model_paths.yaml``."""
    import folder_paths

    return list(folder_paths.get_folder_paths("diffusers"))


def loader_model_options() -> list[str]:
    """The `model` combo of `RewardEditLoader`: local pipeline folders, then the Hub choice."""
    return list_pipeline_folders(diffusers_roots()) + [HUB_ID_CHOICE]


def _release(pipe: RewardEditPipe) -> None:
    """A pipeline left the cache: take it off ComfyUI's device and free cached memory.

    The pipe itself stays usable (another loader node of the same graph may still hand it to an edit, which then
    loads it again); its memory goes when ComfyUI drops the node output holding it.
    """
    import comfy.model_management as model_management

    if pipe.patcher is not None:
        loaded = model_management.current_loaded_models
        for index in range(len(loaded) - 1, -1, -1):
            if loaded[index].model is pipe.patcher:
                loaded.pop(index).model_unload()
    model_management.soft_empty_cache()


def load_pipe(model: str, hub_id: str, device: str, dtype: str) -> RewardEditPipe:
    """`RewardEditLoader`: resolve the model inside models/diffusers (or the Hub id), load it once, cache it."""
    import comfy.model_management as model_management
    import torch

    if device not in DEVICE_CHOICES:
        raise ValueError(f"`device` must be one of {DEVICE_CHOICES}, got {device!r}")
    source, is_local = resolve_model_source(model, hub_id, diffusers_roots())
    target_device = model_management.get_torch_device() if device == "auto" else torch.device("cpu")
    fp16_supported = target_device.type != "cpu" and bool(model_management.should_use_fp16(target_device))
    torch_dtype = resolve_dtype(dtype, target_device, fp16_supported)  # "auto" follows ComfyUI (--force-fp32, GPU)
    key = (source, device, str(torch_dtype), folder_fingerprint(source) if is_local else None)

    def load() -> RewardEditPipe:
        from reward_edit_pipeline import load_pipeline

        logger.info("Reward Edit: loading %s (%s, %s)", source, device, torch_dtype)
        # loaded on the CPU, run on target_device (ComfyUI moves it later)
        pipeline = load_pipeline(source, device="cpu", torch_dtype=torch_dtype, execution_device=target_device)
        pipeline.set_progress_bar_config(disable=True)  # ComfyUI's progress bar reports instead
        patcher = None
        if device == "auto":
            import comfy.model_patcher

            modules = torch.nn.ModuleDict(
                {name: part for name, part in pipeline.components.items() if isinstance(part, torch.nn.Module)}
            )
            patcher = comfy.model_patcher.ModelPatcher(
                modules, load_device=target_device, offload_device=model_management.unet_offload_device()
            )
        else:
            pipeline.to("cpu")
        return RewardEditPipe(pipeline=pipeline, source=source, device=device, patcher=patcher)

    return PIPELINE_CACHE.get_or_load(key, load, on_evict=_release)


def _gather_on(modules: Any, device: Any) -> None:
    """Make sure every module ended up on ``device``: a partial offload by ComfyUI (it may shift part of a loaded
    model to free memory) must not leave the pipeline split across devices."""
    import torch

    device = torch.device(device)
    for name, module in modules.items():
        tensors = list(module.parameters()) + list(module.buffers())
        if any(t.device.type != device.type or (device.index is not None and t.device != device) for t in tensors):
            logger.debug("Reward Edit: moving %s to %s", name, device)
            module.to(device)


def _accepts(function: Any, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _progress_hook():
    """A step hook that drives ComfyUI's progress bar and raises when the user cancels the run."""
    import comfy.model_management as model_management
    import comfy.utils

    state: dict[str, Any] = {}

    def on_step(done: int, total: int) -> None:
        model_management.throw_exception_if_processing_interrupted()
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(total)
        state["bar"].update_absolute(done, total)

    return on_step


def edit(
    pipe: RewardEditPipe,
    image: Any,
    instruction: str,
    reward: RewardCondition,
    steps: int,
    guidance_scale: float,
    image_guidance_scale: float,
    seed: int,
    reward_guidance_scale: float,
) -> Any:
    """`RewardEdit`: make room and move the pipeline onto its device, then edit with progress and cancellation."""
    import comfy.model_management as model_management

    if not isinstance(pipe, RewardEditPipe):
        raise TypeError(
            f"`pipe` must come from a Reward Edit Loader node (REWARD_EDIT_PIPE), got {type(pipe).__name__}"
        )
    if pipe.patcher is not None:
        # The diffusers modules have no ComfyUI low-VRAM casting, so they must be loaded whole: builds that can
        # decide it (``force_full_load``) are told so; older ones load whole when the model fits in memory.
        options = {"force_full_load": True} if _accepts(model_management.load_models_gpu, "force_full_load") else {}
        model_management.load_models_gpu([pipe.patcher], **options)
        _gather_on(pipe.patcher.model, pipe.patcher.load_device)
    model_management.throw_exception_if_processing_interrupted()
    return edit_images(
        pipe.pipeline,
        image,
        instruction,
        reward,
        steps=steps,
        guidance_scale=guidance_scale,
        image_guidance_scale=image_guidance_scale,
        seed=seed,
        reward_guidance_scale=reward_guidance_scale,
        on_step=_progress_hook(),
    )


def make_judge(model: str, base_url: str) -> Any:
    """The project's OpenAI-compatible judge; its API key comes from ``OPENAI_API_KEY`` in the environment."""
    from reward_edit_pipeline.judge.openai_judge import OpenAIJudge

    if not isinstance(model, str) or not model.strip():
        raise ValueError("`model` must name the judge model, e.g. 'gpt-4o'")
    base_url = (base_url or "").strip()
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ValueError(f"`base_url` must start with http:// or https://, got {base_url!r} (empty = OpenAI)")
    return OpenAIJudge(model=model.strip(), base_url=base_url or None)


def judge(original: Any, edited: Any, instruction: str, model: str, base_url: str) -> JudgeOutputs:
    """`RewardJudge`: grade (original, edited) pairs with the project's judge."""
    grader = make_judge(model, base_url)
    try:
        return judge_images(grader, original, edited, instruction)
    finally:
        grader.close()
