"""RewardUNet2DConditionModel: official parity, zero-init equivalence, config round trips, errors, diffusers features."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from parity_weights import PARITY_DIR, write_official_unet_folder
from safetensors.torch import load_file

from reward_edit_pipeline import RewardUNet2DConditionModel
from reward_edit_pipeline.models.unet_2d_reward import (
    OFFICIAL_TO_OURS_PREFIXES,
    REWARD_MODULE_PREFIXES,
    LatentRewardAttention,
)
from reward_edit_pipeline.testing import TEXT_WIDTH, get_dummy_unet_config


@pytest.fixture(scope="module")
def official_folder(tmp_path_factory) -> Path:
    return write_official_unet_folder(tmp_path_factory.mktemp("official_unet"))


@pytest.fixture(scope="module")
def parity_tensors() -> tuple[dict, dict]:
    return load_file(str(PARITY_DIR / "inputs.safetensors")), load_file(str(PARITY_DIR / "outputs.safetensors"))


def tiny_base_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**get_dummy_unet_config()).eval()


def tiny_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 8, 16, 16, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, 77, TEXT_WIDTH, generator=generator),
        "reward_scores": torch.rand(batch, 3, generator=generator) * 5,
        "failure_text_embeds": torch.randn(batch, TEXT_WIDTH, generator=generator),
    }


@pytest.mark.slow
def test_official_parity_fp64_and_fp32_match_the_official_outputs(official_folder, parity_tensors):
    inputs, outputs = parity_tensors
    unet = RewardUNet2DConditionModel.from_official_unet(official_folder)
    official_kwargs = {name: inputs[name] for name in ("reward_scores", "negative_embeds", "image_embeds")}
    with torch.no_grad():
        out32 = unet(
            inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], added_cond_kwargs=official_kwargs
        ).sample
        unet.double()
        as64 = {name: value.double() if value.is_floating_point() else value for name, value in inputs.items()}
        out64 = unet(
            as64["sample"],
            as64["timestep"],
            as64["encoder_hidden_states"],
            reward_scores=as64["reward_scores"],
            failure_text_embeds=as64["negative_embeds"],
        ).sample
    assert (out64 - outputs["sample_fp64"]).abs().max().item() <= 1e-10
    assert (out32 - outputs["sample_fp32"]).abs().max().item() <= 1e-4
    assert outputs["sample_fp64"].abs().max() > 1.0  # the comparison is not against a near-zero output


@pytest.mark.slow
def test_official_export_writes_the_official_key_names_and_round_trips(official_folder, tmp_path):
    unet = RewardUNet2DConditionModel.from_official_unet(official_folder)
    unet.save_official_unet(tmp_path)
    exported = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    original = load_file(str(official_folder / "diffusion_pytorch_model.safetensors"))
    assert set(exported) == set(original)
    assert all(torch.equal(exported[key], original[key]) for key in original)
    assert not any(key.startswith("latent_reward_attention") for key in exported)


def test_pickle_checkpoint_is_refused_unless_allowed(tmp_path):
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet(), reward_init="default")
    unet.save_official_unet(tmp_path)
    state = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        RewardUNet2DConditionModel.from_official_unet(tmp_path)
    loaded = RewardUNet2DConditionModel.from_official_unet(tmp_path, allow_pickle=True)
    assert torch.equal(loaded.latent_reward_attention.to_q.weight, unet.latent_reward_attention.to_q.weight)


def textbook_latent_attention(block: LatentRewardAttention, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Unfolded BERT post-LN cross-attention, written independently of the module's fused code."""
    batch, channels, height, width = hidden.shape
    heads, head_dim = block.num_heads, channels // block.num_heads
    query_in = block.proj_in(block.norm(hidden)).flatten(2).transpose(1, 2)
    q = block.to_q(query_in).view(batch, -1, heads, head_dim).transpose(1, 2)
    k = block.to_k(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
    v = block.to_v(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    context = (probs @ v).transpose(1, 2).reshape(batch, -1, channels)
    attended = block.attn_norm(block.to_out(context) + query_in)
    inner = block.ff_in(attended)
    inner = inner * 0.5 * (1.0 + torch.erf(inner / math.sqrt(2.0)))
    output = block.ff_norm(block.ff_out(inner) + attended)
    return block.proj_out(output.transpose(1, 2).reshape(batch, channels, height, width))


def test_folded_latent_attention_equals_the_textbook_computation():
    torch.manual_seed(0)
    block = LatentRewardAttention(64, num_heads=8, norm_num_groups=32).double().eval()
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    hidden, tokens = torch.randn(3, 64, 5, 7, dtype=torch.float64), torch.randn(3, 2, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(
            block(hidden, tokens), textbook_latent_attention(block, hidden, tokens), atol=1e-12, rtol=0
        )


def test_zero_init_wrapper_reproduces_the_base_unet_exactly_for_any_reward():
    base = tiny_base_unet()
    wrapped = RewardUNet2DConditionModel.from_unet(base, reward_init="zero").eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = base(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]).sample
        actual = wrapped(**inputs).sample
    assert torch.equal(actual, expected)


def test_rewards_failure_text_and_null_condition_each_change_the_output():
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet(), reward_init="default").eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        reference = unet(**inputs).sample
        other_scores = unet(**{**inputs, "reward_scores": torch.full((2, 3), 0.5)}).sample
        other_text = unet(**{**inputs, "failure_text_embeds": -inputs["failure_text_embeds"]}).sample
        null = unet(**inputs, null_reward_mask=torch.tensor([True, False])).sample
    assert (reference - other_scores).abs().max() > 1e-4
    assert (reference - other_text).abs().max() > 1e-4
    assert (reference[0] - null[0]).abs().max() > 1e-4
    assert torch.equal(reference[1], null[1])


def test_single_reward_row_broadcasts_over_the_batch():
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet(), reward_init="default").eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        broadcast = unet(**{**inputs, "reward_scores": torch.tensor([1.0, 2.0, 3.0])}).sample
        explicit = unet(**{**inputs, "reward_scores": torch.tensor([[1.0, 2.0, 3.0]] * 2)}).sample
    assert torch.equal(broadcast, explicit)


def test_widths_come_from_the_config():
    torch.manual_seed(0)
    unet = RewardUNet2DConditionModel(
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        in_channels=8,
        cross_attention_dim=48,
        attention_head_dim=4,
        failure_text_embed_dim=40,
    )
    assert unet.reward_conditioner.reward_time_embedding.linear_2.out_features == 256  # 4 × block_out_channels[0]
    assert unet.reward_conditioner.reward_token_embedding.linear_2.out_features == 64
    assert unet.reward_conditioner.failure_text_token_proj.in_features == 40
    assert unet.latent_reward_attention.proj_in.in_channels == 64
    out = unet(
        torch.randn(1, 8, 8, 8),
        10,
        torch.randn(1, 5, 48),
        reward_scores=torch.tensor([[5.0, 5.0, 5.0]]),
        failure_text_embeds=torch.randn(1, 40),
    ).sample
    assert out.shape == (1, 4, 8, 8)


def test_from_config_round_trips_every_parent_and_reward_argument():
    unet = RewardUNet2DConditionModel(
        **get_dummy_unet_config(), upcast_attention=True, reward_attention_heads=4, no_failure_text="nothing wrong"
    )
    rebuilt = RewardUNet2DConditionModel.from_config(unet.config)
    assert rebuilt.config.upcast_attention is True
    assert rebuilt.config.reward_attention_heads == 4
    assert rebuilt.config.no_failure_text == "nothing wrong"
    assert rebuilt.config.failure_text_embed_dim == TEXT_WIDTH
    parent = set(inspect.signature(UNet2DConditionModel.__init__).parameters)
    assert parent <= set(inspect.signature(RewardUNet2DConditionModel.__init__).parameters)


def test_save_pretrained_writes_safetensors_and_reloads_identically(tmp_path):
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet(), reward_init="default").eval()
    unet.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    reloaded = RewardUNet2DConditionModel.from_pretrained(tmp_path).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(unet(**inputs).sample, reloaded(**inputs).sample)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reward_scores": None}, "needs `reward_scores`"),
        ({"failure_text_embeds": None}, "needs `failure_text_embeds`"),
        ({"reward_scores": torch.ones(2, 4)}, r"`reward_scores` must have shape \[2, 3\]"),
        ({"failure_text_embeds": torch.ones(3, TEXT_WIDTH)}, "`failure_text_embeds` must have shape"),
        ({"null_reward_mask": torch.ones(2)}, "`null_reward_mask` must be a bool tensor"),
    ],
)
def test_bad_reward_inputs_raise_errors_naming_the_argument(change, message):
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet())
    with pytest.raises(ValueError, match=message):
        unet(**{**tiny_inputs(), **change})


def test_reward_given_twice_is_an_error():
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet())
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="both as a keyword argument and in `added_cond_kwargs`"):
        unet(**inputs, added_cond_kwargs={"reward_scores": inputs["reward_scores"]})


def test_gradient_checkpointing_and_backward_reach_every_reward_module():
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet(), reward_init="default").train()
    unet.enable_gradient_checkpointing()
    unet(**tiny_inputs()).sample.square().mean().backward()
    for prefix in (
        "reward_conditioner.reward_time_embedding",
        "reward_conditioner.reward_token_embedding",
        "reward_conditioner.failure_text_time_proj",
        "reward_conditioner.failure_text_token_proj",
        "latent_reward_attention",
    ):
        # (the key bias adds the same logit to every key, so softmax ignores it: its gradient is exactly zero)
        grads = [p.grad for name, p in unet.named_parameters() if name.startswith(prefix) and "to_k.bias" not in name]
        assert all(grad is not None and grad.abs().sum() > 0 for grad in grads), prefix


def test_attention_processors_and_lora_adapters_keep_working():
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet(), reward_init="default").eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        reference = unet(**inputs).sample
        unet.set_attn_processor(AttnProcessor())
        assert torch.allclose(unet(**inputs).sample, reference, atol=1e-5)
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "conv_in"], init_lora_weights=False))
    with torch.no_grad():
        with_lora = unet(**inputs).sample
    assert (with_lora - reference).abs().max() > 1e-5
    unet.disable_adapters()
    with torch.no_grad():  # conv_in is wrapped by LoRA: disabled adapters give the reference output back
        assert torch.allclose(unet(**inputs).sample, reference, atol=1e-5)


def test_sinusoid_uses_cos_then_sin_per_score_like_the_official_code():
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet())
    features = unet.reward_conditioner.reward_sinusoid(torch.tensor([2.5]))
    frequencies = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    assert torch.allclose(features[0, :128], torch.cos(2.5 * frequencies), atol=1e-6)
    assert torch.allclose(features[0, 128:], torch.sin(2.5 * frequencies), atol=1e-6)
    assert features.shape == (1, 256)


def test_official_key_prefixes_map_one_to_one_onto_existing_modules():
    unet = RewardUNet2DConditionModel.from_unet(tiny_base_unet())
    ours = [new for _, new in OFFICIAL_TO_OURS_PREFIXES]
    assert len(set(ours)) == len(ours) == len({old for old, _ in OFFICIAL_TO_OURS_PREFIXES})
    keys = list(unet.state_dict())
    assert all(any(key.startswith(prefix) for key in keys) for prefix in ours)
    reward_keys = [key for key in keys if key.startswith(REWARD_MODULE_PREFIXES)]
    assert all(any(key.startswith(prefix) for prefix in ours) for key in reward_keys)
