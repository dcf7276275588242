"""`reward-edit train --backbone flux-kontext` on tiny components (CPU): learning, exact resume, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reward_edit_pipeline.train.args import parse_args  # noqa: E402
from reward_edit_pipeline.train.data import SkipCounter  # noqa: E402
from reward_edit_pipeline.train.dit import BACKBONES, TRAINABLE_FILE, train_dit  # noqa: E402
from reward_edit_pipeline.train.sources import load_training_examples  # noqa: E402
from safetensors.torch import load_file
from training_data import restore_last_dit_checkpoint, write_official_rewards, write_triplet_folder  # noqa: E402

from reward_edit_pipeline.cli import main as cli_main  # noqa: E402
from reward_edit_pipeline.pipelines.pipeline_reward_flux_kontext import RewardFluxKontextPipeline  # noqa: E402
from reward_edit_pipeline.pipelines.reward_dit_common import read_reward_adapter_lora_config  # noqa: E402
from reward_edit_pipeline.testing_dit import dummy_flux_kontext_call_kwargs, save_dummy_flux_kontext_folder  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_dit")
    save_dummy_flux_kontext_folder(root / "kontext")
    keys = write_triplet_folder(root / "data", 4)
    write_official_rewards(root / "RewardEdit_20K.json", keys)
    return root


def _argv(workspace: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--backbone", "flux-kontext",
        "--pretrained_model_name_or_path", str(workspace / "kontext"),
        "--train_data_dir", str(workspace / "data"),
        "--rewards", str(workspace / "RewardEdit_20K.json"),
        "--output_dir", str(output),
        "--resolution", "32", "--train_batch_size", "2", "--gradient_accumulation_steps", "1",
        "--checkpointing_steps", "2", "--learning_rate", "3e-3", "--lora_rank", "4", "--reward_token_dim", "16",
        "--mixed_precision", "no", "--dataloader_num_workers", "0", "--report_to", "none",
    ] + list(extra)  # fmt: skip


@torch.no_grad()
def _fixed_loss(pipe: RewardFluxKontextPipeline, args) -> float:
    """Mean flow-matching loss over the training examples with fixed noise, sigmas and no reward dropout."""
    adapter = BACKBONES["flux-kontext"]
    examples = load_training_examples(args, SkipCounter())
    cache = adapter.encode_examples(pipe, examples, args.resolution, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1234)
    rows = torch.arange(len(examples))
    no_dropout = torch.zeros(len(examples), dtype=torch.bool)
    losses = [
        adapter.training_loss(pipe.transformer, cache, rows, generator, no_dropout, args).item() for _ in range(8)
    ]
    return float(np.mean(losses))


def test_lora_and_reward_training_lowers_the_loss_and_saves_loadable_outputs(workspace, tmp_path):
    output = tmp_path / "run"
    assert cli_main(["train", *_argv(workspace, output, "--max_train_steps", "30")]) == 0
    args = parse_args(_argv(workspace, output, "--max_train_steps", "30"))
    summary = json.loads((output / "summary.json").read_text())
    assert summary["global_step"] == 30 and summary["backbone"] == "flux-kontext"

    base = RewardFluxKontextPipeline.from_flux_kontext(workspace / "kontext", reward_config={"reward_token_dim": 16})
    trained = RewardFluxKontextPipeline.from_pretrained(output)
    before, after = _fixed_loss(base, args), _fixed_loss(trained, args)
    assert after < 0.8 * before, (before, after)

    # reward modules were trained (gates opened) and LoRA was merged into base weights
    assert any(module.gate.abs().max() > 0 for module in trained.transformer.reward_attention)
    base_q = base.transformer.transformer_blocks[0].attn.to_q.weight
    assert not torch.equal(trained.transformer.transformer_blocks[0].attn.to_q.weight, base_q)
    assert (output / "reward_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (output / "reward_lora" / "reward_modules.safetensors").is_file()
    trained.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8))
    call = dict(image=image, prompt="invert the red", reward_scores=(4, 2, 5), **dummy_flux_kontext_call_kwargs())
    edited = trained(**call, generator=torch.Generator().manual_seed(0)).images
    assert edited.shape == (1, 32, 32, 3) and np.isfinite(edited).all()

    # the small release: stock checkpoint + reward_lora/ (LoRA unmerged) edits like the merged full folder
    adapted = RewardFluxKontextPipeline.from_reward_adapter(workspace / "kontext", output / "reward_lora")
    adapted.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(adapted(**call, generator=torch.Generator().manual_seed(0)).images, edited, atol=1e-4)
    unadapted = RewardFluxKontextPipeline.from_flux_kontext(
        workspace / "kontext", reward_config={"reward_token_dim": 8}
    )
    with pytest.raises(ValueError, match="other reward settings"):
        unadapted.load_reward_adapter(output / "reward_lora")


def test_resume_continues_exactly(workspace, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_dit(parse_args(_argv(workspace, straight, "--max_train_steps", "4", "--no-gradient_checkpointing")))
    train_dit(parse_args(_argv(workspace, resumed, "--max_train_steps", "2")))
    summary = train_dit(
        parse_args(_argv(workspace, resumed, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    )
    assert summary["global_step"] == 4
    expected = load_file(straight / "checkpoint-4" / TRAINABLE_FILE)
    got = load_file(resumed / "checkpoint-4" / TRAINABLE_FILE)
    assert set(got) == set(expected) and any(name.startswith("reward_attention.") for name in got)
    assert any("lora_A" in name for name in got)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    straight_losses = json.loads((straight / "summary.json").read_text())["losses"]
    assert summary["losses"] == straight_losses


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mixed_precision", "fp16"], "fp16 is not supported for DiT"),
        (["--stage", "1"], "--stage applies to --backbone sd15 only"),
        (["--lora_rank", "0"], "--lora_rank must be an integer >= 1"),
    ],
)
def test_bad_dit_arguments_name_the_flag(workspace, tmp_path, extra, message, capsys):
    argv = _argv(workspace, tmp_path / "bad", "--max_train_steps", "1")
    argv = [arg for arg in argv if arg not in ("--mixed_precision", "no")] if "--mixed_precision" in extra else argv
    with pytest.raises(SystemExit):
        parse_args(argv + extra)
    assert message in capsys.readouterr().err


def test_unreadable_pairs_are_skipped_and_counted(workspace, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    broken = sorted(data.rglob("*_1.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    argv = _argv(workspace, tmp_path / "run", "--max_train_steps", "1")
    argv[argv.index("--train_data_dir") + 1] = str(data)
    summary = train_dit(parse_args(argv))
    assert summary["num_examples"] == 3
    assert summary["skipped"]["by_reason"] == {"unreadable_image": 1}


def test_lora_alpha_other_than_the_rank_travels_with_the_adapter(workspace, tmp_path, capsys):
    output = tmp_path / "run"
    train_dit(parse_args(_argv(workspace, output, "--max_train_steps", "3", "--lora_rank", "2", "--lora_alpha", "8")))
    lora_config = read_reward_adapter_lora_config(output / "reward_lora")
    assert lora_config is not None and (lora_config["r"], lora_config["lora_alpha"]) == (2, 8.0)

    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8))
    call = dict(image=image, prompt="invert the red", reward_scores=(4, 2, 5), **dummy_flux_kontext_call_kwargs())

    def edit(pipe: RewardFluxKontextPipeline) -> np.ndarray:
        pipe.set_progress_bar_config(disable=True)
        return pipe(**call, generator=torch.Generator().manual_seed(0)).images

    base = RewardFluxKontextPipeline.from_flux_kontext(workspace / "kontext", reward_config={"reward_token_dim": 16})
    in_memory = restore_last_dit_checkpoint(base, "flux-kontext", output, rank=2, alpha=8.0)
    expected = edit(in_memory)
    adapter = np.abs(edit(RewardFluxKontextPipeline.from_reward_adapter(workspace / "kontext", output / "reward_lora"))
                     - expected).max()  # fmt: skip
    merged = np.abs(edit(RewardFluxKontextPipeline.from_pretrained(output)) - expected).max()
    in_memory.transformer.set_adapters(["default"], weights=[2 / 8])  # the same weights at alpha = rank
    at_rank = np.abs(edit(in_memory) - expected).max()
    with capsys.disabled():
        print(f"\nflux, rank 2, alpha 8: max |delta| vs the in-memory transformer: reward_lora/ {adapter:.2e}, "
              f"merged folder {merged:.2e}, the same LoRA at alpha = rank {at_rank:.2e}")  # fmt: skip
    assert at_rank > 1e-3  # the alpha matters here: a loader that dropped it would be caught
    assert adapter < 1e-5 and merged < 1e-4

    # a checkpoint records its LoRA settings: resuming with another alpha is refused, naming the flag
    with pytest.raises(ValueError, match="--lora_alpha"):
        train_dit(parse_args(_argv(workspace, output, "--max_train_steps", "4", "--lora_rank", "2",
                                   "--resume_from_checkpoint", "latest")))  # fmt: skip
