"""RewardUNet2DConditionModel at run time: the forward mirrors diffusers', precomputed conditions, threads, compile,
older checkpoint key names."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from reward_edit_pipeline import RewardUNet2DConditionModel
from reward_edit_pipeline.models import RewardConditionEmbeddings
from reward_edit_pipeline.models.unet_2d_reward import LEGACY_TO_CURRENT_PREFIXES
from reward_edit_pipeline.testing import TEXT_WIDTH, get_dummy_unet_config


def tiny_reward_unet(reward_init: str = "default", seed: int = 0, **config) -> RewardUNet2DConditionModel:
    torch.manual_seed(seed)
    base = UNet2DConditionModel(**{**get_dummy_unet_config(), **config}).eval()
    torch.manual_seed(seed + 1)
    return RewardUNet2DConditionModel.from_unet(base, reward_init=reward_init).eval()


def reward_inputs(batch: int = 2, seed: int = 0, size: tuple[int, int] = (16, 16)) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 8, *size, generator=generator),
        "timestep": torch.tensor(321),
        "encoder_hidden_states": torch.randn(batch, 7, TEXT_WIDTH, generator=generator),
        "reward_scores": torch.rand(batch, 3, generator=generator) * 5,
        "failure_text_embeds": torch.randn(batch, TEXT_WIDTH, generator=generator),
    }


# Configs that take different branches of the base forward, with the extra inputs each branch needs.
BASE_FORWARD_CASES = {
    "default": ({}, {}),
    "odd_size_and_text_mask": (
        {},
        {
            "size": (18, 14),  # not a multiple of 2**num_upsamplers: the up blocks get explicit output sizes
            "encoder_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]]),
        },
    ),
    "class_and_timestep_cond": (
        {"class_embed_type": "timestep", "time_cond_proj_dim": 6, "time_embedding_act_fn": "silu"},
        {"class_labels": torch.tensor([3, 700]), "timestep_cond": torch.randn(2, 6)},
    ),
    "added_text_embedding_and_centering": (
        {"addition_embed_type": "text", "addition_embed_type_num_heads": 4, "center_input_sample": True},
        {},
    ),
    "scale_shift_no_mid_block": ({"resnet_time_scale_shift": "scale_shift", "mid_block_type": None}, {}),
    "controlnet_residuals": ({}, {"controlnet": True}),
    "adapter_residuals": ({}, {"adapter": True}),
}


def base_forward_arguments(extra: dict, batch: int = 2) -> tuple[dict, dict]:
    extra = dict(extra)
    inputs = reward_inputs(batch, seed=4, size=extra.pop("size", (16, 16)))
    rewards = {name: inputs.pop(name) for name in ("reward_scores", "failure_text_embeds")}
    generator = torch.Generator().manual_seed(9)
    if extra.pop("controlnet", False):  # one residual per down-block output (conv_in, 2 resnets + downsample, 2)
        shapes = [(32, 16, 16)] * 3 + [(32, 8, 8), (64, 8, 8), (64, 8, 8)]
        extra["down_block_additional_residuals"] = [torch.randn(batch, *shape, generator=generator) for shape in shapes]
        extra["mid_block_additional_residual"] = torch.randn(batch, 64, 8, 8, generator=generator)
    if extra.pop("adapter", False):
        extra["down_intrablock_additional_residuals"] = [
            torch.randn(batch, 32, 8, 8, generator=generator),
            torch.randn(batch, 64, 8, 8, generator=generator),
        ]
    return {**inputs, **extra}, rewards


def fresh(arguments: dict) -> dict:
    """Copy list arguments (the base forward pops adapter residuals off the caller's list)."""
    return {name: list(value) if isinstance(value, list) else value for name, value in arguments.items()}


@pytest.mark.parametrize("case", list(BASE_FORWARD_CASES))
def test_zero_init_forward_equals_the_installed_diffusers_forward(case):
    config, extra = BASE_FORWARD_CASES[case]
    torch.manual_seed(0)
    base = UNet2DConditionModel(**{**get_dummy_unet_config(), **config}).eval()
    wrapped = RewardUNet2DConditionModel.from_unet(base, reward_init="zero").eval()
    arguments, rewards = base_forward_arguments(extra)
    with torch.no_grad():
        expected = base(**fresh(arguments)).sample
        actual = wrapped(**fresh(arguments), **rewards).sample
    assert expected.abs().max() > 0.1  # a real output, not a degenerate one
    assert torch.equal(actual, expected), f"{case}: max diff {(actual - expected).abs().max().item():.3g}"


def test_reward_additions_enter_where_the_paper_puts_them():
    """Non-zero rewards: our forward equals diffusers' forward with the global embedding added to the timestep
    embedding (through `get_aug_embed`) and the latent attention added after `conv_in` (through a forward hook)."""
    unet = tiny_reward_unet("default")
    base = UNet2DConditionModel(**get_dummy_unet_config()).eval()
    base.load_state_dict(unet.state_dict(), strict=False)
    inputs = reward_inputs(seed=2)
    with torch.no_grad():
        condition = unet.compute_reward_condition(inputs["reward_scores"], inputs["failure_text_embeds"])
        base.get_aug_embed = lambda emb, encoder_hidden_states, added_cond_kwargs: condition.global_embedding
        base.conv_in.register_forward_hook(
            lambda module, args, output: output + unet.latent_reward_attention(output, condition.tokens)
        )
        expected = base(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample
        actual = unet(**inputs).sample
    assert torch.equal(actual, expected)
    assert condition.global_embedding.abs().max() > 1e-3 and condition.tokens.abs().max() > 1e-3


def test_precomputed_reward_condition_gives_the_same_output():
    unet = tiny_reward_unet("default")
    inputs = reward_inputs(batch=3)
    mask = torch.tensor([False, True, False])
    with torch.no_grad():
        direct = unet(**inputs, null_reward_mask=mask).sample
        condition = unet.compute_reward_condition(inputs["reward_scores"], inputs["failure_text_embeds"], mask)
        raw = {name: inputs[name] for name in ("sample", "timestep", "encoder_hidden_states")}
        precomputed = unet(**raw, reward_condition=condition).sample
        via_added = unet(**raw, added_cond_kwargs={"reward_condition": condition}).sample
        # A 1-row and a 3-row matmul may round apart in float32 (BLAS picks kernels by shape): compare in float64.
        unet64 = copy.deepcopy(unet).double()
        raw64 = {name: value.double() if torch.is_tensor(value) else value for name, value in raw.items()}
        scores64 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        text64 = inputs["failure_text_embeds"][0].double()
        one_row = unet64.compute_reward_condition(scores64, text64)
        broadcast = unet64(**raw64, reward_condition=one_row).sample
        explicit = unet64(**raw64, reward_scores=scores64, failure_text_embeds=text64).sample
    assert torch.equal(precomputed, direct) and torch.equal(via_added, direct)
    assert torch.allclose(broadcast, explicit, atol=1e-12, rtol=0)
    assert isinstance(condition, RewardConditionEmbeddings)
    assert condition.global_embedding.shape == (3, unet.time_embedding.linear_2.out_features)
    assert condition.tokens.shape == (3, 2, unet.config.block_out_channels[0])


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"reward_scores": torch.ones(2, 3)}, ValueError, "either a precomputed `reward_condition` or"),
        ({"reward_condition": (torch.zeros(2, 128), torch.zeros(2, 2, 32))}, TypeError, "RewardConditionEmbeddings"),
        (
            {"reward_condition": RewardConditionEmbeddings(torch.zeros(2, 7), torch.zeros(2, 2, 32))},
            ValueError,
            r"global_embedding` must have shape \[2, 128\]",
        ),
        (
            {"reward_condition": RewardConditionEmbeddings(torch.zeros(2, 128), torch.zeros(2, 2, 31))},
            ValueError,
            r"tokens` must have shape \[2, T, 32\]",
        ),
    ],
)
def test_bad_precomputed_condition_is_refused_naming_the_argument(change, error, message):
    unet = tiny_reward_unet("zero")
    inputs = reward_inputs()
    raw = {name: inputs[name] for name in ("sample", "timestep", "encoder_hidden_states")}
    if "reward_condition" not in change:
        change = {
            **change,
            "reward_condition": unet.compute_reward_condition(inputs["reward_scores"], inputs["failure_text_embeds"]),
        }
    with pytest.raises(error, match=message):
        unet(**raw, **change)


def test_the_module_keeps_no_per_call_state_and_no_hooks():
    unet = tiny_reward_unet("default")
    before = dict(vars(unet))
    with torch.no_grad():
        unet(**reward_inputs())
    after = dict(vars(unet))
    assert set(after) == set(before)
    assert all(after[name] is before[name] for name in before)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in unet.modules())


def test_one_instance_serves_several_threads_with_the_sequential_results():
    unet = tiny_reward_unet("default")
    requests = []
    for index in range(6):
        inputs = reward_inputs(batch=2, seed=10 + index)
        inputs["reward_scores"] = torch.full((2, 3), float(index % 6))  # a different reward in every request
        requests.append(inputs)
    with torch.no_grad():
        sequential = [unet(**request).sample for request in requests]
    assert all((sequential[0] - other).abs().max() > 1e-4 for other in sequential[1:])

    results: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(requests))

    def serve(index: int) -> None:
        try:
            barrier.wait()
            with torch.no_grad():
                for repeat in range(3):
                    results[index, repeat] = unet(**requests[index]).sample
        except BaseException as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for (index, repeat), output in results.items():
        assert torch.equal(output, sequential[index]), f"request {index}, repeat {repeat}"
    assert len(results) == 3 * len(requests)


def test_checkpoints_with_the_older_flat_key_names_still_load(tmp_path):
    unet = tiny_reward_unet("default")
    unet.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    legacy = {}
    for key, value in state.items():
        for old, new in LEGACY_TO_CURRENT_PREFIXES:
            if key.startswith(new):
                key = old + key[len(new) :]
        legacy[key] = value
    assert "reward_time_embedding.linear_1.weight" in legacy and not any(
        k.startswith("reward_conditioner.") for k in legacy
    )
    save_file(legacy, str(weights))
    inputs = reward_inputs()
    reloaded = RewardUNet2DConditionModel.from_pretrained(tmp_path).eval()
    fresh_model = tiny_reward_unet("zero", seed=5)
    result = fresh_model.load_state_dict(legacy)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        expected = unet(**inputs).sample
        assert torch.equal(reloaded(**inputs).sample, expected)
        assert torch.equal(fresh_model(**inputs).sample, expected)


def test_reward_path_has_no_graph_breaks_under_dynamo():
    unet = tiny_reward_unet("default")
    inputs = reward_inputs()
    raw = {name: inputs[name] for name in ("sample", "timestep", "encoder_hidden_states")}
    with torch.no_grad():
        condition = unet.compute_reward_condition(inputs["reward_scores"], inputs["failure_text_embeds"])
        torch._dynamo.reset()
        full = torch._dynamo.explain(unet)(**inputs)
        torch._dynamo.reset()
        precomputed = torch._dynamo.explain(unet)(**raw, reward_condition=condition)
        torch._dynamo.reset()
        conditioner = torch._dynamo.explain(unet.reward_conditioner)(
            inputs["reward_scores"], inputs["failure_text_embeds"]
        )
    for name, explanation in (("forward", full), ("precomputed", precomputed), ("conditioner", conditioner)):
        assert explanation.graph_break_count == 0, (name, explanation.break_reasons)
        assert explanation.graph_count == 1, name


@pytest.mark.slow
def test_torch_compile_matches_eager_on_cpu():
    unet = tiny_reward_unet("default")
    inputs = reward_inputs()
    raw = {name: inputs[name] for name in ("sample", "timestep", "encoder_hidden_states")}
    torch._dynamo.reset()
    compiled = torch.compile(unet, fullgraph=True)
    with torch.no_grad():
        condition = unet.compute_reward_condition(inputs["reward_scores"], inputs["failure_text_embeds"])
        eager = unet(**inputs).sample
        assert torch.allclose(compiled(**inputs).sample, eager, atol=1e-4, rtol=1e-4)
        assert torch.allclose(compiled(**raw, reward_condition=condition).sample, eager, atol=1e-4, rtol=1e-4)
        other = {**inputs, "reward_scores": torch.zeros(2, 3)}  # new values, same shapes: no recompilation needed
        assert torch.allclose(compiled(**other).sample, unet(**other).sample, atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()
