"""Trainer flags: paper defaults, clear errors on bad input, the `reward-edit train` entry point, model surgery."""

from __future__ import annotations

import pytest
import torch
from reward_edit_pipeline.train.args import build_parser, parse_args
from reward_edit_pipeline.train.train import list_checkpoints, prune_checkpoints, widen_conv_in


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def _base_argv(data_dir, *extra: str) -> list[str]:
    return ["--stage", "1", "--pretrained_model_name_or_path", "base", "--train_data_dir", str(data_dir), *extra]


def test_defaults_are_the_paper_stage2_recipe(data_dir, tmp_path):
    rewards = tmp_path / "RewardEdit_20K.json"
    rewards.write_text("{}")
    args = parse_args(
        [
            "--stage",
            "2",
            "--pretrained_model_name_or_path",
            "b",
            "--train_data_dir",
            str(data_dir),
            "--rewards",
            str(rewards),
        ]
    )
    assert args.resolution == 256 and args.random_flip is True
    assert (args.train_batch_size, args.gradient_accumulation_steps) == (4, 4)
    assert args.learning_rate == 5e-5 and args.lr_scheduler == "constant" and args.lr_warmup_steps == 0
    assert args.conditioning_dropout_prob == 0.05 and args.use_ema is True and args.max_grad_norm == 1.0
    assert args.mixed_precision == "fp16" and args.gradient_checkpointing is True
    assert (args.adam_beta1, args.adam_beta2, args.adam_weight_decay, args.adam_epsilon) == (0.9, 0.999, 1e-2, 1e-8)
    assert args.max_train_steps == 10_000 and args.checkpointing_steps == 500
    assert args.reward_dropout_prob == 0.05


def test_diffusers_flag_names_are_accepted(data_dir):
    args = parse_args(
        _base_argv(
            data_dir,
            "--output_dir", "o", "--resolution", "64", "--train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--max_train_steps", "3", "--learning_rate", "1e-4", "--checkpointing_steps", "1",
            "--checkpoints_total_limit", "2", "--resume_from_checkpoint", "latest", "--mixed_precision", "no",
            "--use_ema", "--seed", "3", "--conditioning_dropout_prob", "0.1", "--cache_latents",
        )
    )  # fmt: skip
    assert args.checkpoints_total_limit == 2 and args.cache_latents and args.reward_dropout_prob == 0.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--conditioning_dropout_prob", "0.5"], "--conditioning_dropout_prob must be in [0, 1/3]"),
        (["--resolution", "100"], "--resolution must be a positive multiple of 8"),
        (["--learning_rate", "0"], "--learning_rate must be a finite number > 0"),
        (["--train_batch_size", "0"], "--train_batch_size must be an integer >= 1"),
        (["--reward_dropout_prob", "0.1"], "--reward_dropout_prob only applies to --stage 2"),
        (["--rewards", "x.json"], "--rewards only applies to --stage 2"),
        (["--validation_prompt", "make it red"], "give both --validation_image and --validation_prompt"),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], '--resume_from_checkpoint must be "latest"'),
        (["--dataset_name", "some/dataset"], "give exactly one of --train_data_dir or --dataset_name"),
        (["--max_train_steps", "5", "--num_train_epochs", "2"], "give --max_train_steps or --num_train_epochs, not"),
    ],
)
def test_bad_arguments_exit_with_a_message_naming_the_flag(data_dir, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(_base_argv(data_dir, *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_stage2_without_rewards_and_missing_data_dir_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--stage", "2", "--pretrained_model_name_or_path", "b", "--train_data_dir", str(tmp_path)])
    assert "--rewards is required for --stage 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--stage", "1", "--pretrained_model_name_or_path", "b", "--train_data_dir", str(tmp_path / "nope")])
    error = capsys.readouterr().err
    assert "--train_data_dir" in error and "does not exist" in error
    with pytest.raises(SystemExit):
        parse_args(["--stage", "3", "--pretrained_model_name_or_path", "b", "--train_data_dir", str(tmp_path)])
    assert "--stage: invalid choice" in capsys.readouterr().err


def test_reward_edit_train_verb_uses_the_same_flags_and_errors(data_dir, capsys):
    from reward_edit_pipeline.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--stage", "--rewards", "--reward_dropout_prob", "--cache_latents", "--conditioning_dropout_prob"):
        assert flag in help_text
    assert cli_main(["train", *_base_argv(data_dir, "--conditioning_dropout_prob", "0.9")]) == 2  # bad input
    assert "--conditioning_dropout_prob must be in [0, 1/3]" in capsys.readouterr().err
    assert {action.dest for action in build_parser()._actions} >= {"stage", "rewards", "cache_latents"}


def test_widen_conv_in_zero_initializes_the_new_channels_and_keeps_the_output():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 32, 3, padding=1)

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_in = conv
            self.config = {}

        def register_to_config(self, **kwargs) -> None:
            self.config.update(kwargs)

    holder = Holder()
    before = conv.weight.detach().clone()
    widen_conv_in(holder, 8)
    assert holder.conv_in.in_channels == 8 and holder.config == {"in_channels": 8}
    assert torch.equal(holder.conv_in.weight[:, :4], before)
    assert torch.count_nonzero(holder.conv_in.weight[:, 4:]) == 0
    latents, image_latents = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(holder.conv_in(torch.cat([latents, image_latents], 1)), conv(latents))
    with pytest.raises(ValueError, match="already has 8 input channels"):
        widen_conv_in(holder, 8)


def test_checkpoint_total_limit_removes_the_oldest_and_ignores_incomplete(tmp_path):
    for step in (10, 2, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-40.tmp").mkdir()  # an interrupted save is never "latest"
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [2, 10, 30]
    removed = prune_checkpoints(str(tmp_path), total_limit=2)
    assert [path.rsplit("-", 1)[1] for path in removed] == ["2", "10"]
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [30]
    assert prune_checkpoints(str(tmp_path), total_limit=None) == []


def test_shipped_accelerate_configs_parse_and_match_the_recipe():
    from pathlib import Path

    import reward_edit_pipeline.train as train_package
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(train_package.__file__).parent / "configs"
    kinds = {path.stem: load_config_from_file(str(path)) for path in sorted(folder.glob("*.yaml"))}
    assert {name: config.distributed_type.value for name, config in kinds.items()} == {
        "ddp": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
        "fsdp": "FSDP",
    }
    zero2 = kinds["deepspeed_zero2"].deepspeed_config
    assert zero2["zero_stage"] == 2 and zero2["gradient_accumulation_steps"] == 4 and zero2["gradient_clipping"] == 1.0
    assert kinds["fsdp"].fsdp_config["fsdp_use_orig_params"] is True
    assert all(config.mixed_precision == "fp16" for config in kinds.values())


def _smartedit_argv(data_dir, tmp_path, *extra: str) -> list[str]:
    rewards = tmp_path / "RewardEdit_20K.json"
    rewards.write_text("{}")
    return [
        "--stage", "2", "--backbone", "smartedit", "--pretrained_model_name_or_path", "b",
        "--train_data_dir", str(data_dir), "--rewards", str(rewards), "--mixed_precision", "no", *extra,
    ]  # fmt: skip


def test_smartedit_llm_lora_flags(data_dir, tmp_path):
    frozen = parse_args(_smartedit_argv(data_dir, tmp_path))
    assert frozen.llm_lora_rank == 0 and frozen.llm_lora_alpha is None and frozen.llm_lora_target_modules is None
    lora = parse_args(_smartedit_argv(data_dir, tmp_path, "--llm_lora_rank", "8", "--llm_lora_alpha", "16"))
    assert (lora.llm_lora_rank, lora.llm_lora_alpha, lora.llm_lora_dropout) == (8, 16.0, 0.0)
    assert lora.llm_lora_target_modules == ("q_proj", "v_proj")  # SmartEdit's released adapter_config.json
    qkvo = parse_args(
        _smartedit_argv(data_dir, tmp_path, "--llm_lora_rank", "4", "--llm_lora_target_modules", "q_proj, k_proj,v_proj,o_proj")
    )
    assert qkvo.llm_lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--llm_lora_rank", "-1"], "--llm_lora_rank must be an integer >= 1 (or 0: the LLM stays frozen), got -1"),
        (["--llm_lora_rank", "2.5"], "--llm_lora_rank: invalid int value"),
        (["--llm_lora_rank", "2", "--llm_lora_alpha", "0"], "--llm_lora_alpha must be a finite number > 0, got 0.0"),
        (["--llm_lora_rank", "2", "--llm_lora_alpha", "nan"], "--llm_lora_alpha must be a finite number > 0"),
        (["--llm_lora_rank", "2", "--llm_lora_dropout", "1"], "--llm_lora_dropout must be in [0, 1), got 1.0"),
        (["--llm_lora_alpha", "16"], "--llm_lora_alpha given without --llm_lora_rank >= 1"),
        (["--llm_lora_dropout", "0.05"], "--llm_lora_dropout given without --llm_lora_rank >= 1"),
        (
            ["--llm_lora_rank", "2", "--llm_lora_target_modules", "q_proj,gate_proj"],
            "--llm_lora_target_modules must be distinct names from q_proj,k_proj,v_proj,o_proj, got 'q_proj,gate_proj'",
        ),
        (["--llm_lora_rank", "2", "--llm_lora_target_modules", "q_proj,q_proj"], "--llm_lora_target_modules must be"),
        (["--lora_rank", "8"], "--lora_rank apply to the DiT backbones only, not --backbone smartedit"),
        (["--llm_lora_rank", "8", "--lora_alpha", "16"], "--lora_alpha apply to the DiT backbones only"),
        (["--reward_token_dim", "32", "--dit_guidance_scale", "3"], "--reward_token_dim, --dit_guidance_scale apply"),
    ],
)
def test_bad_llm_lora_flags_are_named(data_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(_smartedit_argv(data_dir, tmp_path, *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_llm_lora_is_smartedit_only(data_dir, capsys):
    with pytest.raises(SystemExit):
        parse_args(_base_argv(data_dir, "--llm_lora_rank", "8"))
    assert "--llm_lora_rank applies to --backbone smartedit only, got --backbone sd15" in capsys.readouterr().err
