"""Reward-conditioned SmartEdit: tiny CPU pipeline, float64 parity with an equation-level reference, saving/loading
and the converter from the released layout."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reward_edit_pipeline.models.smartedit_bridge import SmartEditBridge
from reward_edit_pipeline.pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline
from reward_edit_pipeline.testing_smartedit import (
    LLM_WIDTH,
    NUM_IMAGE_TOKENS,
    VISION_WIDTH,
    get_dummy_bridge,
    get_dummy_bridge_config,
    get_dummy_smartedit_components,
    get_dummy_smartedit_pipeline,
    write_dummy_released_layout,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models run faster on one thread


@pytest.fixture(scope="module")
def pipe() -> RewardSmartEditPipeline:
    return get_dummy_smartedit_pipeline()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)


def _edit(pipe: RewardSmartEditPipeline, image: np.ndarray, **kwargs) -> np.ndarray:
    kwargs.setdefault("num_inference_steps", 1)
    return pipe(
        "make the sky red", image, output_type="np", generator=torch.Generator().manual_seed(0), **kwargs
    ).images


# ---------------------------------------------------------------------------------------------------- pipeline
def test_edit_with_rewards(pipe, image):
    best = _edit(pipe, image)
    assert best.shape == (1, 32, 32, 3) and np.isfinite(best).all()
    np.testing.assert_array_equal(best, _edit(pipe, image))  # seeded: reproducible
    low = _edit(pipe, image, reward_scores=(1, 2, 3), failure_text=("the sky is unchanged", None, None))
    assert np.abs(best - low).max() > 1e-4  # the reward condition reaches the output
    null = _edit(pipe, image, reward_scores=None)
    assert np.abs(best - null).max() > 1e-4
    guided = _edit(pipe, image, reward_guidance_scale=2.0)
    assert guided.shape == best.shape and np.abs(best - guided).max() > 1e-4


def test_model_cpu_offload_onloads_every_part_before_it_is_used(image):
    """`enable_model_cpu_offload` moves a component to the GPU when its `forward` is called; the pipeline calls parts
    of the LLM and the bridge directly, so it must onload them first. On the CPU nothing moves, so the test records,
    per component, when its offload hook ran and when its parts were first used; the edit equals the plain one."""
    reference = _edit(get_dummy_smartedit_pipeline(), image)
    offloaded = get_dummy_smartedit_pipeline()
    offloaded.enable_model_cpu_offload(device="cuda" if torch.cuda.is_available() else "cpu")
    events: list[str] = []
    for name in ("vision_encoder", "llm", "bridge", "unet"):
        module = getattr(offloaded, name)
        hook, original = module._hf_hook, module._hf_hook.pre_forward

        def pre_forward(module, *args, _name=name, _original=original, **kwargs):
            events.append(f"{_name}:onload")
            return _original(module, *args, **kwargs)

        hook.pre_forward = pre_forward
        for part in module.children():
            part.register_forward_pre_hook(lambda *_, _name=name: events.append(f"{_name}:use"))
    np.testing.assert_allclose(_edit(offloaded, image), reference, atol=1e-5)
    for name in ("vision_encoder", "llm", "bridge", "unet"):
        assert f"{name}:use" in events, name
        assert events.index(f"{name}:onload") < events.index(f"{name}:use"), (name, events[:12])


def test_instruction_and_bim_reach_the_output(pipe, image):
    """The MLLM path matters: another instruction, or no BIM residual, gives another edit."""
    best = _edit(pipe, image)
    other = pipe(
        "turn it into a drawing",
        image,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert np.abs(best - other).max() > 1e-4
    saved = (
        pipe.bridge.image_residual_proj.weight.detach().clone(),
        pipe.bridge.image_residual_proj.bias.detach().clone(),
    )
    try:
        torch.nn.init.zeros_(pipe.bridge.image_residual_proj.weight)
        torch.nn.init.zeros_(pipe.bridge.image_residual_proj.bias)
        without_residual = _edit(pipe, image)
    finally:
        pipe.bridge.image_residual_proj.weight.data.copy_(saved[0])
        pipe.bridge.image_residual_proj.bias.data.copy_(saved[1])
    assert np.abs(best - without_residual).max() > 1e-4


def test_batch_and_images_per_prompt(pipe, image):
    out = pipe(
        ["make the sky red", "add snow"],
        image,
        num_inference_steps=1,
        num_images_per_prompt=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (4, 32, 32, 3)


def test_bad_inputs_are_named(pipe, image):
    with pytest.raises(ValueError, match="reward_scores"):
        _edit(pipe, image, reward_scores=(6, 5, 5))
    with pytest.raises(ValueError, match="num_inference_steps"):
        _edit(pipe, image, num_inference_steps=0)
    with pytest.raises(ValueError, match="prompt"):
        pipe("  ", image)


def test_tokenizer_without_image_tokens_is_refused(image):
    components = get_dummy_smartedit_components()
    components["bridge"] = get_dummy_bridge(num_image_tokens=NUM_IMAGE_TOKENS + 2)
    pipe = RewardSmartEditPipeline(**components)
    with pytest.raises(ValueError, match="image tokens"):
        _edit(pipe, image)


def test_fresh_bridge_is_plain_qformer():
    """Zero-initialised BIM heads: text condition = Q-Former output, image residual = 0 (SmartEdit's init)."""
    torch.manual_seed(0)
    bridge = SmartEditBridge(**get_dummy_bridge_config()).eval()
    states, features = torch.randn(2, NUM_IMAGE_TOKENS, LLM_WIDTH), torch.randn(2, 16, VISION_WIDTH)
    with torch.no_grad():
        output = bridge(states, features, (4, 4))
        torch.testing.assert_close(output.encoder_hidden_states, bridge.query(states), rtol=0, atol=0)
    assert output.image_residual.shape == (2, 32, 4, 4) and not output.image_residual.any()
    with pytest.raises(ValueError, match="vision_features"):
        bridge(states, torch.randn(2, 15, VISION_WIDTH), (4, 4))
    with pytest.raises(ValueError, match="bim_embed_dim"):
        SmartEditBridge(**get_dummy_bridge_config(bim_embed_dim=2 * VISION_WIDTH))


# ---------------------------------------------------------------------------------------------------- parity
# An independent float64 re-implementation from the equations (BLIP-2/BERT Q-Former, SAM's two-way transformer and
# random-Fourier position encoding, SmartEdit's BIM and conv_in residual), reading only raw weights.
def _linear(weights, name, x):
    return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


def _layer_norm(weights, name, x, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weights[f"{name}.weight"] + weights[f"{name}.bias"]


def _attention(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (probs @ v).permute(0, 2, 1, 3).reshape(b, n, c)


def _reference_qformer(w, cfg, queries, states):
    eps, heads = cfg["qformer_layer_norm_eps"], cfg["qformer_num_heads"]
    h = _layer_norm(w, "qformer.layernorm", queries, eps)
    for index in range(cfg["qformer_num_layers"]):
        p = f"qformer.encoder.layer.{index}"
        attn = _attention(*(_linear(w, f"{p}.attention.attention.{n}", h) for n in ("query", "key", "value")), heads)
        h = _layer_norm(w, f"{p}.attention.output.LayerNorm", h + _linear(w, f"{p}.attention.output.dense", attn), eps)
        if index % cfg["qformer_cross_attention_frequency"] == 0:
            c = f"{p}.crossattention"
            attn = _attention(
                _linear(w, f"{c}.attention.query", h),
                _linear(w, f"{c}.attention.key", states),
                _linear(w, f"{c}.attention.value", states),
                heads,
            )
            h = _layer_norm(w, f"{c}.output.LayerNorm", h + _linear(w, f"{c}.output.dense", attn), eps)
        hidden = _linear(w, f"{p}.intermediate_query.dense", h)
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
        h = _layer_norm(w, f"{p}.output_query.LayerNorm", h + _linear(w, f"{p}.output_query.dense", hidden), eps)
    return h


def _sam_attention(w, name, q, k, v, heads):
    return _linear(
        w,
        f"{name}.out_proj",
        _attention(
            _linear(w, f"{name}.q_proj", q), _linear(w, f"{name}.k_proj", k), _linear(w, f"{name}.v_proj", v), heads
        ),
    )


def _reference_two_way(w, cfg, image, image_pe, tokens):
    heads, ln = cfg["bim_num_heads"], 1e-5
    point_pe, queries, keys = tokens, tokens, image
    for index in range(cfg["bim_depth"]):
        p = f"two_way_transformer.layers.{index}"
        if index == 0:
            queries = _sam_attention(w, f"{p}.self_attn", queries, queries, queries, heads)
        else:
            q = queries + point_pe
            queries = queries + _sam_attention(w, f"{p}.self_attn", q, q, queries, heads)
        queries = _layer_norm(w, f"{p}.norm1", queries, ln)
        queries = queries + _sam_attention(
            w, f"{p}.cross_attn_token_to_image", queries + point_pe, keys + image_pe, keys, heads
        )
        queries = _layer_norm(w, f"{p}.norm2", queries, ln)
        hidden = torch.relu(_linear(w, f"{p}.mlp.lin1", queries))
        queries = _layer_norm(w, f"{p}.norm3", queries + _linear(w, f"{p}.mlp.lin2", hidden), ln)
        keys = keys + _sam_attention(
            w, f"{p}.cross_attn_image_to_token", keys + image_pe, queries + point_pe, queries, heads
        )
        keys = _layer_norm(w, f"{p}.norm4", keys, ln)
    queries = queries + _sam_attention(
        w, "two_way_transformer.final_attn_token_to_image", queries + point_pe, keys + image_pe, keys, heads
    )
    return _layer_norm(w, "two_way_transformer.norm_final_attn", queries, ln), keys


def _reference_position_encoding(matrix, size):
    pe = torch.zeros(matrix.shape[1] * 2, size, size, dtype=matrix.dtype)
    for row in range(size):
        for col in range(size):
            coords = torch.tensor([(col + 0.5) / size, (row + 0.5) / size], dtype=matrix.dtype) * 2 - 1
            angles = 2 * math.pi * (coords @ matrix)
            pe[:, row, col] = torch.cat([torch.sin(angles), torch.cos(angles)])
    return pe


def _reference_bilinear(x, out_h, out_w):
    """Bilinear resize with half-pixel centres (align_corners=False), written out per output row/column."""

    def axis(out_size, in_size):
        src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * in_size / out_size - 0.5).clamp(min=0)
        low = src.floor().long().clamp(max=in_size - 1)
        high = (low + 1).clamp(max=in_size - 1)
        return low, high, src - low

    y0, y1, fy = axis(out_h, x.shape[-2])
    x0, x1, fx = axis(out_w, x.shape[-1])
    top = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return top[..., x0] * (1 - fx) + top[..., x1] * fx


def _reference_bridge(bridge, states, features, latent_size):
    cfg = dict(bridge.config)
    w = {name: value.detach() for name, value in bridge.state_dict().items()}
    batch, patches, channels = features.shape
    grid = int(math.isqrt(patches))
    q = _reference_qformer(w, cfg, w["query_tokens"].expand(batch, -1, -1), states)
    tokens, keys = _reference_two_way(
        w,
        cfg,
        features,
        _reference_position_encoding(w["position_encoding.gaussian_matrix"], grid).flatten(1).T[None],
        _linear(w, "query_proj", q),
    )
    text = q + cfg["text_residual_scale"] * _linear(w, "text_residual_proj", tokens)
    image = keys.transpose(1, 2).reshape(batch, channels, grid, grid)
    image = _reference_bilinear(image, *latent_size)
    residual = torch.einsum("oc,bchw->bohw", w["image_residual_proj.weight"][:, :, 0, 0], image)
    return text, residual + w["image_residual_proj.bias"][None, :, None, None]


class _ConvWithResidual(torch.nn.Module):
    """SmartEdit's UNet: `conv_in(x) + residual` (the reference replaces the module instead of hooking it)."""

    def __init__(self, conv: torch.nn.Conv2d, residual: torch.Tensor) -> None:
        super().__init__()
        self.conv, self.residual = conv, residual

    def forward(self, x):
        return self.conv(x) + self.residual


def test_forward_parity_float64():
    components = get_dummy_smartedit_components()
    bridge, unet = components["bridge"].double(), components["unet"].double()
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(2, NUM_IMAGE_TOKENS, LLM_WIDTH, generator=generator, dtype=torch.float64)
    features = torch.randn(2, 16, VISION_WIDTH, generator=generator, dtype=torch.float64)
    sample = torch.randn(2, 8, 8, 8, generator=generator, dtype=torch.float64)
    scores = torch.tensor([[5.0, 5.0, 5.0], [1.0, 3.5, 2.0]], dtype=torch.float64)
    failure = torch.randn(2, 32, generator=generator, dtype=torch.float64)

    with torch.no_grad():
        ours = bridge(states, features, (8, 8))
        ours_eps = unet(
            sample,
            500,
            encoder_hidden_states=ours.encoder_hidden_states,
            reward_scores=scores,
            failure_text_embeds=failure,
            conv_in_residual=ours.image_residual,
        ).sample
        ref_text, ref_residual = _reference_bridge(bridge, states, features, (8, 8))
        reference_unet = copy.deepcopy(unet)
        reference_unet.conv_in = _ConvWithResidual(unet.conv_in, ref_residual)
        ref_eps = reference_unet(
            sample, 500, encoder_hidden_states=ref_text, reward_scores=scores, failure_text_embeds=failure
        ).sample

    assert (
        ours.image_residual.abs().max() > 1e-3
        and (ours.encoder_hidden_states - bridge.query(states)).abs().max() > 1e-3
    )
    assert (ours.encoder_hidden_states - ref_text).abs().max() <= 1e-10
    assert (ours.image_residual - ref_residual).abs().max() <= 1e-10
    assert (ours_eps - ref_eps).abs().max() <= 1e-10
    # and the residual changes the UNet's output (the check above is not vacuous)
    with torch.no_grad():
        plain = unet(sample, 500, encoder_hidden_states=ref_text, reward_scores=scores, failure_text_embeds=failure)
    assert (plain.sample - ref_eps).abs().max() > 1e-6


def test_conv_in_residual_of_the_wrong_shape_is_refused_by_name():
    unet = get_dummy_smartedit_components()["unet"]
    sample = torch.randn(1, unet.config.in_channels, 8, 8)
    text = torch.randn(1, 4, unet.config.cross_attention_dim)
    failure = torch.zeros(1, unet.config.failure_text_embed_dim)
    right = torch.ones(1, unet.config.block_out_channels[0], 8, 8)
    with torch.no_grad():
        plain = unet(sample, 1, text, reward_scores=[5.0, 5.0, 5.0], failure_text_embeds=failure).sample
        shifted = unet(
            sample, 1, text, reward_scores=[5.0, 5.0, 5.0], failure_text_embeds=failure, conv_in_residual=right
        ).sample
        assert not torch.allclose(plain, shifted)
        with pytest.raises(ValueError, match="conv_in_residual"):
            unet(
                sample,
                1,
                text,
                reward_scores=[5.0, 5.0, 5.0],
                failure_text_embeds=failure,
                conv_in_residual=right[..., :4, :4],
            )


def test_reference_bilinear_matches_definition_on_a_known_case():
    x = torch.arange(4, dtype=torch.float64).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    out = _reference_bilinear(x, 4, 4)
    # half-pixel centres: output row 1 sits at source row 0.25 → 0.75·row0 + 0.25·row1
    assert out[0, 0, 1, 0].item() == pytest.approx(0.5) and out[0, 0, 0, 0].item() == 0.0
    torch.testing.assert_close(out, F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False))


# ---------------------------------------------------------------------------------------------------- converter, saving
def test_convert_released_layout_round_trip(tmp_path, image):
    from reward_edit_pipeline.convert_smartedit import convert_smartedit
    from reward_edit_pipeline.testing import get_dummy_unet_config
    from reward_edit_pipeline.testing_smartedit import get_dummy_llm

    original = get_dummy_smartedit_pipeline(reward_init="zero")  # the release has no reward modules
    expected_llm = write_dummy_released_layout(original, tmp_path / "release", 15000, torch.Generator().manual_seed(3))
    fresh = get_dummy_smartedit_components(seed=7)
    base = {
        name: fresh[name]
        for name in ("vae", "text_encoder", "tokenizer", "scheduler", "llm_tokenizer", "vision_processor")
    }
    base.update(
        vae=original.vae,
        text_encoder=original.text_encoder,
        vision_encoder=original.vision_encoder,
        llm=get_dummy_llm(len(fresh["llm_tokenizer"]), seed=9),
        unet_config=get_dummy_unet_config(8),
    )
    with pytest.raises(ValueError, match="allow_pickle"):
        convert_smartedit(tmp_path / "release", 15000, base)
    heads = {"num_image_tokens": NUM_IMAGE_TOKENS, "qformer_num_heads": 4, "bim_num_heads": 2}
    # by default the converter writes SmartEdit's conversation, whose added tokens the tiny tokenizer lacks
    with pytest.raises(ValueError, match=r"lacks SmartEdit's added tokens \['<img>', '<im_start>', '<im_end>'\]"):
        convert_smartedit(tmp_path / "release", 15000, base, allow_pickle=True, bridge_overrides=heads)
    # the tiny random LLM cannot follow that conversation: keep the tiny pipeline's teacher-forced template
    llm_settings = {
        key: original.bridge.config[key]
        for key in ("llm_prompt_template", "llm_answer_template", "llm_generate", "llm_max_new_tokens")
    }
    converted = convert_smartedit(
        tmp_path / "release",
        15000,
        base,
        output_dir=tmp_path / "converted",
        allow_pickle=True,
        bridge_overrides={**heads, **llm_settings},
    )
    reward_prefixes = ("reward_", "failure_text_", "latent_reward_attention")
    for ours, theirs in ((converted.bridge, original.bridge), (converted.unet, original.unet)):
        mine, other = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == other.keys()
        # the converted UNet's reward modules are new (zero-initialised output layers, random inner ones)
        assert all(torch.equal(mine[key], other[key]) for key in mine if not key.startswith(reward_prefixes))

    def public(config):
        return {key: value for key, value in config.items() if not key.startswith("_")}

    assert public(converted.bridge.config) == public(original.bridge.config)
    converted_llm = converted.llm.state_dict()
    assert converted_llm.keys() == expected_llm.keys()
    for key, value in expected_llm.items():
        torch.testing.assert_close(converted_llm[key], value, rtol=0, atol=1e-6)
    assert (
        converted_llm["model.layers.0.self_attn.q_proj.weight"]
        - original.llm.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    ).abs().max() > 1e-3  # LoRA merged
    original.llm.load_state_dict(expected_llm)
    converted_edit = _edit(converted, image)
    # (the LoRA merge is computed in float64 by the converter, in float32 here: a few 1e-6 apart)
    np.testing.assert_allclose(converted_edit, _edit(original, image), atol=1e-4)

    # the saved folder loads through this package and through diffusers' remote-code path
    loaded = RewardSmartEditPipeline.from_pretrained(tmp_path / "converted")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_edit(loaded, image), converted_edit, atol=1e-6)
    from diffusers import DiffusionPipeline

    remote = DiffusionPipeline.from_pretrained(tmp_path / "converted", trust_remote_code=True)
    remote.set_progress_bar_config(disable=True)
    assert type(remote).__name__ == "RewardSmartEditPipeline"
    assert type(remote.bridge).__name__ == "SmartEditBridge"
    np.testing.assert_allclose(_edit(remote, image), converted_edit, atol=1e-6)


def test_save_and_load_with_rewards(tmp_path, pipe, image):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_reward_smartedit", "RewardSmartEditPipeline"]
    assert index["bridge"] == ["reward_edit_pipeline", "SmartEditBridge"]
    assert not list((tmp_path / "saved").rglob("*.bin"))
    loaded = RewardSmartEditPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"reward_scores": (4, 2, 5), "failure_text": "blurry"}
    np.testing.assert_allclose(_edit(loaded, image, **kwargs), _edit(pipe, image, **kwargs), atol=1e-6)


def test_folder_with_pickled_weights_is_refused_on_every_loader(tmp_path, pipe):
    """A saved folder whose LLM weights are a pickle (no safetensors) is not read by `from_pretrained`, nor by
    `load_pipeline` (the CLI and the ComfyUI loader), which name the file."""
    from safetensors.torch import load_file

    from reward_edit_pipeline.loading import load_pipeline

    folder = tmp_path / "pickled"
    pipe.save_pretrained(folder)
    (weights,) = (folder / "llm").glob("*.safetensors")
    torch.save(load_file(weights), folder / "llm" / "pytorch_model.bin")
    weights.unlink()
    for load in (RewardSmartEditPipeline.from_pretrained, lambda path: load_pipeline(path, device="cpu")):
        with pytest.raises(FileNotFoundError, match=r"only as pickle files \(llm/pytorch_model.bin\)"):
            load(folder)
    with pytest.raises(ValueError, match="use_safetensors=False"):
        RewardSmartEditPipeline.from_pretrained(folder, use_safetensors=False)


# ---------------------------------------------------------------------------------------------------- CLI, ComfyUI
@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("smartedit") / "tiny-smartedit"
    pipe.save_pretrained(folder)
    return folder


def test_cli_edit_with_rewards(saved_folder, image, tmp_path):
    import PIL.Image

    from reward_edit_pipeline.cli import main
    from reward_edit_pipeline.loading import detect_layout

    assert detect_layout(saved_folder) == "smartedit"
    photo = tmp_path / "photo.png"
    PIL.Image.fromarray(image).save(photo)
    outputs = []
    for scores in ("5,5,5", "1,2,3"):
        output = tmp_path / f"edited-{scores}.png"
        code = main(
            [
                "edit",
                str(photo),
                "make the sky red",
                "-o",
                str(output),
                "--model",
                str(saved_folder),
                "--steps",
                "1",
                "--scores",
                scores,
                "--device",
                "cpu",
            ]
        )
        assert code == 0
        outputs.append(np.asarray(PIL.Image.open(output)))
    assert outputs[0].shape == (32, 32, 3) and np.abs(outputs[0].astype(int) - outputs[1].astype(int)).max() > 0


def test_cli_edit_when_the_llm_cannot_emit_the_image_tokens(tmp_path, image, capsys):
    """A folder that generates by default (as a converted release) whose LLM does not emit the image tokens: the CLI
    exits 2 naming what to do without Python (the folder's bridge/config.json), and doing it makes the edit run."""
    import PIL.Image

    from reward_edit_pipeline.cli import main

    components = get_dummy_smartedit_components()
    components["bridge"] = get_dummy_bridge(llm_generate=True, llm_max_new_tokens=1)  # 1 < the 4 image tokens
    folder = tmp_path / "generating"
    RewardSmartEditPipeline(**components).save_pretrained(folder)
    photo = tmp_path / "photo.png"
    PIL.Image.fromarray(image).save(photo)
    argv = ["edit", str(photo), "make the sky red", "-o", str(tmp_path / "out.png"), "--model", str(folder)]
    argv += ["--steps", "1", "--device", "cpu"]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert "emitted 0 of the 4 image tokens" in message and '"llm_generate": false' in message
    assert "bridge/config.json" in message and not (tmp_path / "out.png").exists()
    config_path = folder / "bridge" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "llm_generate": False}))
    assert main(argv) == 0 and (tmp_path / "out.png").is_file()


def test_comfyui_edit_node_on_a_smartedit_folder(saved_folder, image):
    """The ComfyUI loader goes through `load_pipeline` (which dispatches on the folder's layout); the edit node's
    `edit_images` runs the SmartEdit pipeline unchanged."""
    from reward_edit_pipeline.comfy_nodes.core import edit_images, make_reward_condition

    from reward_edit_pipeline.loading import load_pipeline

    loaded = load_pipeline(saved_folder, device="cpu", torch_dtype="float32")
    assert isinstance(loaded, RewardSmartEditPipeline)
    loaded.set_progress_bar_config(disable=True)
    comfy = torch.from_numpy(image).float()[None] / 255.0
    steps_seen = []
    best = edit_images(
        loaded,
        comfy,
        "make the sky red",
        make_reward_condition(5, 5, 5, ""),
        steps=1,
        seed=0,
        on_step=lambda done, total: steps_seen.append(done),
    )
    low = edit_images(loaded, comfy, "make the sky red", make_reward_condition(1, 2, 3, "blurry"), steps=1, seed=0)
    assert best.shape == (1, 32, 32, 3) and steps_seen and (best - low).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------- training
def _train_argv(saved_folder, data, rewards, output, *extra, steps: int = 3):
    return [
        "train", "--stage", "2", "--backbone", "smartedit",
        "--pretrained_model_name_or_path", str(saved_folder), "--train_data_dir", str(data), "--rewards", str(rewards),
        "--output_dir", str(output), "--resolution", "32", "--train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--max_train_steps", str(steps), "--checkpointing_steps", "1",
        "--learning_rate", "1e-3", "--mixed_precision", "no", "--no-use_ema", "--dataloader_num_workers", "0",
        "--report_to", "none", *extra,
    ]  # fmt: skip


def test_training_stage2_runs_and_resumes_bitwise(saved_folder, tmp_path, image):
    from safetensors.torch import load_file
    from training_data import write_official_rewards, write_triplet_folder

    from reward_edit_pipeline.cli import main

    keys = write_triplet_folder(tmp_path / "data", 4)
    rewards = write_official_rewards(tmp_path / "RewardEdit_20K.json", keys)
    full = tmp_path / "full"
    assert main(_train_argv(saved_folder, tmp_path / "data", rewards, full)) == 0
    state = json.loads((full / "checkpoint-3" / "training_state.json").read_text())
    assert state["global_step"] == 3 and all(math.isfinite(loss) for loss in state["losses"])
    # --llm_lora_rank 0 (the default): a frozen LLM, no LoRA files in checkpoints or next to the pipeline
    assert "llm_lora" not in state and not (full / "llm_lora").exists()
    assert not (full / "checkpoint-3" / "llm_lora.safetensors").exists()

    # interrupted after step 1, then resumed from the latest checkpoint: the same weights, bit for bit
    partial = tmp_path / "partial"
    assert main(_train_argv(saved_folder, tmp_path / "data", rewards, partial, steps=1)) == 0
    assert (
        main(_train_argv(saved_folder, tmp_path / "data", rewards, partial, "--resume_from_checkpoint", "latest")) == 0
    )
    for name in ("bridge", "unet"):
        resumed = load_file(str(partial / "checkpoint-3" / f"{name}.safetensors"))
        uninterrupted = load_file(str(full / "checkpoint-3" / f"{name}.safetensors"))
        assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)
    initial = RewardSmartEditPipeline.from_pretrained(saved_folder)
    trained = RewardSmartEditPipeline.from_pretrained(full)
    changed = [
        name for name in ("bridge", "unet")
        if any(not torch.equal(a, b) for a, b in zip(getattr(initial, name).state_dict().values(),
                                                     getattr(trained, name).state_dict().values()))
    ]  # fmt: skip
    assert changed == ["bridge", "unet"]
    assert all(torch.equal(a, b) for a, b in zip(initial.llm.state_dict().values(), trained.llm.state_dict().values()))
    trained.set_progress_bar_config(disable=True)
    assert np.isfinite(_edit(trained, image, reward_scores=(5, 4, 5))).all()


def _fixed_noise_loss(pipe: RewardSmartEditPipeline, argv: list[str]) -> float:
    """The stage-2 loss of every training example with fixed noise and timesteps and no dropout (all modules in eval
    mode), so that two models are compared on the same draws."""
    from reward_edit_pipeline.train.args import parse_args
    from reward_edit_pipeline.train.data import SkipCounter, TripletDataset, collate_training_batch
    from reward_edit_pipeline.train.smartedit import smartedit_training_loss
    from reward_edit_pipeline.train.sources import load_training_examples

    from reward_edit_pipeline.pipelines.pipeline_reward_edit import encode_failure_texts

    args = parse_args(argv[1:])
    examples = load_training_examples(args, SkipCounter())
    dataset = TripletDataset(examples, pipe.tokenizer, args.resolution, with_rewards=True)
    batch = collate_training_batch([dataset[index] for index in range(len(dataset))])
    device = torch.device("cpu")
    with torch.no_grad():
        table = encode_failure_texts(pipe.text_encoder, pipe.tokenizer, dataset.failure_texts, device)
        return smartedit_training_loss(
            pipe, batch, [example.instruction for example in examples], table, pipe.null_text_condition(device),
            torch.Generator().manual_seed(123), 0.0, 0.0,
        ).item()  # fmt: skip


def test_training_with_llm_lora_resumes_bitwise_and_saves_the_merged_llm(saved_folder, tmp_path, image):
    """`--llm_lora_rank`: PEFT LoRA on the LLM's q/v projections trains with the bridge and the UNet, resumes bit for
    bit, and the saved folder's `llm` (LoRA merged, no PEFT needed) edits like the base LLM with the saved adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from training_data import write_official_rewards, write_triplet_folder

    from reward_edit_pipeline.cli import main

    keys = write_triplet_folder(tmp_path / "data", 4)
    rewards = write_official_rewards(tmp_path / "RewardEdit_20K.json", keys)
    lora = ("--llm_lora_rank", "2", "--llm_lora_alpha", "4")
    full, plain = tmp_path / "full", tmp_path / "plain"
    assert main(_train_argv(saved_folder, tmp_path / "data", rewards, full, *lora, steps=4)) == 0
    assert main(_train_argv(saved_folder, tmp_path / "data", rewards, plain, steps=1)) == 0
    state = json.loads((full / "checkpoint-4" / "training_state.json").read_text())
    assert state["llm_lora"] == {"rank": 2, "alpha": 4.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    # B starts at 0 and the adapter's initialisation leaves the global random state alone: step 1 is rank 0's step 1
    plain_losses = json.loads((plain / "checkpoint-1" / "training_state.json").read_text())["losses"]
    assert state["losses"][0] == plain_losses[0]

    # interrupted after step 2, resumed: bridge, UNet and LLM LoRA weights equal bit for bit
    partial = tmp_path / "partial"
    assert main(_train_argv(saved_folder, tmp_path / "data", rewards, partial, *lora, steps=2)) == 0
    resume = ("--resume_from_checkpoint", "latest")
    assert main(_train_argv(saved_folder, tmp_path / "data", rewards, partial, *lora, *resume, steps=4)) == 0
    for name in ("bridge.safetensors", "unet.safetensors", "llm_lora.safetensors"):
        resumed, uninterrupted = (load_file(str(run / "checkpoint-4" / name)) for run in (partial, full))
        assert resumed.keys() == uninterrupted.keys()
        assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)
    # a LoRA checkpoint is not resumed by a frozen-LLM run (nor the other way round)
    assert main(_train_argv(saved_folder, tmp_path / "data", rewards, partial, *resume, steps=5)) == 2

    # the LoRA weights trained: B left zero, A moved; only q_proj / v_proj carry adapters
    lora_weights = load_file(str(full / "checkpoint-4" / "llm_lora.safetensors"))
    assert {key.split(".")[4] for key in lora_weights} == {"q_proj", "v_proj"}
    first = load_file(str(full / "checkpoint-1" / "llm_lora.safetensors"))
    assert all(lora_weights[key].abs().max() > 0 for key in lora_weights if ".lora_B." in key)
    assert all(not torch.equal(lora_weights[key], first[key]) for key in lora_weights if ".lora_A." in key)

    # the saved pipeline: LoRA merged into plain LLaMA weights; the adapter in PEFT format next to it
    initial = RewardSmartEditPipeline.from_pretrained(saved_folder)
    merged = RewardSmartEditPipeline.from_pretrained(full)
    merged_llm, base_llm = merged.llm.state_dict(), initial.llm.state_dict()
    assert merged_llm.keys() == base_llm.keys() and not any("lora" in key for key in merged_llm)
    changed = {key for key in base_llm if not torch.equal(merged_llm[key], base_llm[key])}
    assert changed == {f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")}
    adapter_files = {path.name for path in (full / "llm_lora").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter_files and not list(full.rglob("*.bin"))
    adapter_config = json.loads((full / "llm_lora" / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (2, 4.0)
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]

    # the unmerged model (base LLM + the saved adapter, trained bridge and UNet) == the merged folder
    unmerged = RewardSmartEditPipeline(**{**merged.components, "llm": initial.llm})
    PeftModel.from_pretrained(initial.llm, str(full / "llm_lora"))  # injects the adapter into initial.llm
    assert any("lora_A" in name for name, _ in unmerged.llm.named_parameters())
    frozen_llm = RewardSmartEditPipeline.from_pretrained(saved_folder).llm
    candidates = {
        "merged": merged,
        "unmerged": unmerged,
        "frozen": RewardSmartEditPipeline(**{**merged.components, "llm": frozen_llm}),  # trained bridge/UNet, no LoRA
    }
    with torch.no_grad():
        features = merged.encode_vision(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "cpu")
        states = {
            name: pipe.encode_instructions(["make the sky red"], features, "cpu") for name, pipe in candidates.items()
        }
    edits = {}
    for name, pipe in candidates.items():
        pipe.set_progress_bar_config(disable=True)
        edits[name] = _edit(pipe, image)
    # measured: LLM states 4.8e-7 apart (the LoRA itself moves them by 3.1e-2); edits 2.3e-6 apart (LoRA: 6.4e-5)
    assert (states["merged"] - states["unmerged"]).abs().max() <= 1e-5
    assert (states["merged"] - states["frozen"]).abs().max() > 1e-3
    edit_gap = np.abs(edits["merged"] - edits["unmerged"]).max()
    assert edit_gap <= 1e-5 and np.abs(edits["merged"] - edits["frozen"]).max() > 5 * max(edit_gap, 1e-6)

    # and the loss dropped: the trained model's loss on fixed noise is below the initial one (fresh loads: an edit
    # leaves the scheduler's inference timesteps set)
    argv = _train_argv(saved_folder, tmp_path / "data", rewards, full)
    losses = [_fixed_noise_loss(RewardSmartEditPipeline.from_pretrained(folder), argv) for folder in (saved_folder, full)]
    assert losses[1] < 0.9 * losses[0]  # measured: 1.121 → 0.799
