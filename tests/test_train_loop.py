"""End-to-end training runs on tiny components (CPU): learning, exact resume, outputs, skipped data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reward_edit_pipeline.train.args import parse_args
from reward_edit_pipeline.train.train import main, train
from training_data import write_official_rewards, write_triplet_folder

from reward_edit_pipeline.testing import (
    save_dummy_instruct_pix2pix_folder,
    save_dummy_text_to_image_folder,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_torch_thread")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    save_dummy_instruct_pix2pix_folder(root / "ip2p")
    save_dummy_text_to_image_folder(root / "t2i")
    keys = write_triplet_folder(root / "data", 6)
    write_official_rewards(root / "RewardEdit_20K.json", keys)
    return root


def _argv(workspace: Path, output: Path, *extra: str, stage: int = 2) -> list[str]:
    argv = [
        "--stage", str(stage),
        "--pretrained_model_name_or_path", str(workspace / ("ip2p" if stage == 2 else "t2i")),
        "--train_data_dir", str(workspace / "data"),
        "--output_dir", str(output),
        "--resolution", "32", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
        "--max_train_steps", "4", "--checkpointing_steps", "2", "--learning_rate", "1e-3",
        "--mixed_precision", "no", "--dataloader_num_workers", "0", "--report_to", "none",
    ]  # fmt: skip
    if stage == 2:
        argv += ["--rewards", str(workspace / "RewardEdit_20K.json")]
    return argv + list(extra)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def _fixed_denoising_loss(pipe, unet, data: Path) -> float:
    """Mean noise-prediction error over the training triplets with fixed noise and timesteps (no dropout)."""
    from reward_edit_pipeline.data import iter_triplets, load_reward_records

    records = load_reward_records(data.parent / "RewardEdit_20K.json")
    generator = torch.Generator().manual_seed(0)
    losses = []
    for triplet in iter_triplets(data):
        original, edited = (
            torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[
                None
            ]
            for p in (triplet.original, triplet.edited)
        )
        latents = pipe.vae.encode(edited).latent_dist.mean * pipe.vae.config.scaling_factor
        image_latents = pipe.vae.encode(original).latent_dist.mean
        ids = pipe.tokenizer([triplet.instruction], padding="max_length", max_length=77, return_tensors="pt").input_ids
        record = records[triplet.id]
        failure = pipe.encode_failure_text(["; ".join(t or "None" for t in record.failure_texts)])
        for timestep in (100, 400, 700, 900):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.tensor([timestep])
            noisy = pipe.scheduler.add_noise(latents, noise, t)
            prediction = unet(
                torch.cat([noisy, image_latents], 1), t, pipe.text_encoder(ids)[0],
                reward_scores=torch.tensor([record.scores]), failure_text_embeds=failure,
            ).sample  # fmt: skip
            losses.append(torch.mean((prediction - noise) ** 2).item())
    return float(np.mean(losses))


def test_stage2_training_lowers_the_denoising_loss_on_a_fixed_dataset(workspace, tmp_path):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from reward_edit_pipeline import RewardEditPipeline, RewardUNet2DConditionModel

    output = tmp_path / "out"
    argv = _argv(workspace, output, "--no-use_ema", "--gradient_accumulation_steps", "1", "--max_train_steps", "40",
                 "--checkpointing_steps", "1000", "--conditioning_dropout_prob", "0", "--reward_dropout_prob", "0")  # fmt: skip
    assert main(argv) == 0
    trained = RewardEditPipeline.from_pretrained(output)
    base_unet = RewardUNet2DConditionModel.from_unet(
        UNet2DConditionModel.from_pretrained(workspace / "ip2p", subfolder="unet"), failure_text_embed_dim=32
    )
    trained.scheduler = DDPMScheduler.from_config(trained.scheduler.config)
    before = _fixed_denoising_loss(trained, base_unet, workspace / "data")
    after = _fixed_denoising_loss(trained, trained.unet, workspace / "data")
    print("fixed loss", before, after)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("accumulation", ["2", "1"], ids=["checkpoint_at_epoch_end", "checkpoint_mid_epoch"])
def test_interrupted_and_resumed_run_is_bitwise_identical_to_an_uninterrupted_one(workspace, tmp_path, accumulation):
    # 5 usable triplets, batch 2: 3 micro-batches per epoch. With accumulation 2, checkpoint 2 falls at the end of
    # epoch 0; with accumulation 1, after the 2nd of its 3 micro-batches.
    corrupt_data = tmp_path / "data"
    keys = write_triplet_folder(corrupt_data, 6)
    (corrupt_data / keys[1] / "1001_1.jpg").write_bytes(b"broken")
    rewards = write_official_rewards(tmp_path / "rewards.json", keys[:5])
    extra = ("--train_data_dir", str(corrupt_data), "--rewards", str(rewards), "--checkpoints_total_limit", "1",
             "--gradient_accumulation_steps", accumulation)  # fmt: skip

    straight = tmp_path / "straight"
    main(_argv(workspace, straight, *extra))

    class Interrupted(Exception):
        pass

    def crash_after_step_3(step: int) -> None:
        if step == 3:
            raise Interrupted

    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(parse_args(_argv(workspace, resumed, *extra)), step_callback=crash_after_step_3)
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-2"]
    main(_argv(workspace, resumed, *extra, "--resume_from_checkpoint", "latest"))

    straight_summary = json.loads((straight / "train_summary.json").read_text())
    resumed_summary = json.loads((resumed / "train_summary.json").read_text())
    assert resumed_summary["resumed_from"].endswith("checkpoint-2")
    assert resumed_summary["unet_fingerprints"] == straight_summary["unet_fingerprints"]  # training weights
    assert resumed_summary["last_losses"] == straight_summary["last_losses"]
    for name in (
        "unet/diffusion_pytorch_model.safetensors",
        "checkpoint-4/unet_ema/diffusion_pytorch_model.safetensors",
    ):
        assert _sha256(resumed / name) == _sha256(straight / name), name  # EMA weights too
    assert sorted(p.name for p in straight.glob("checkpoint-*")) == ["checkpoint-4"]  # total limit 1
    assert resumed_summary["per_process"][0]["skipped"] == straight_summary["per_process"][0]["skipped"]
    assert resumed_summary["samples_seen"] == straight_summary["samples_seen"]
    if accumulation == "2":  # 2 epochs: the corrupt pair and the triplet without rewards skipped and counted
        skipped = straight_summary["per_process"][0]["skipped"]["by_reason"]
        assert skipped == {"missing_reward": 1, "unreadable_image": 2}  # the corrupt pair once per epoch
        assert straight_summary["skipped_total"] == 3 and straight_summary["samples_seen"] == 8


def test_stage2_output_loads_into_the_pipeline_and_edits_an_image(workspace, tmp_path):
    from reward_edit_pipeline import RewardEditPipeline, RewardUNet2DConditionModel

    output = tmp_path / "out"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    image.save(tmp_path / "val.png")
    main(
        _argv(workspace, output, "--max_train_steps", "2", "--cache_latents", "--validation_image",
              str(tmp_path / "val.png"), "--validation_prompt", "invert the red", "--validation_steps", "2",
              "--validation_inference_steps", "2", "--report_to", "tensorboard")
    )  # fmt: skip
    files = [p for p in output.rglob("*") if p.is_file() and "checkpoint-" not in str(p)]
    assert not [p for p in files if p.suffix in (".bin", ".pkl", ".pt", ".ckpt")]  # safetensors only
    assert (output / "validation" / "step-0000002-0.png").is_file()
    assert list((output / "logs").rglob("events.out.tfevents.*"))
    assert (output / "latents_cache" / "index.json").is_file()
    pipe = RewardEditPipeline.from_pretrained(output)
    assert isinstance(pipe.unet, RewardUNet2DConditionModel)
    for frozen in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert _sha256(output / frozen) == _sha256(workspace / "ip2p" / frozen), frozen  # saved unchanged
    pipe.set_progress_bar_config(disable=True)
    settings = {"num_inference_steps": 2, "image_guidance_scale": 1.5, "guidance_scale": 7.5}  # log_validation's
    edited = pipe(
        "invert the red", image=image, reward_scores=(5, 5, 5), generator=torch.Generator().manual_seed(42), **settings
    ).images[0]  # fmt: skip
    # the step-2 validation edit was made in training by the final weights (seed 42 = --seed): the saved folder
    # reproduces it (PNG rounding aside), and it differs from what the untrained InstructPix2Pix model gives
    validation = np.asarray(Image.open(output / "validation" / "step-0000002-0.png"), dtype=np.int16)
    assert np.abs(np.asarray(edited, dtype=np.int16) - validation).max() <= 1
    untrained = RewardEditPipeline.from_instruct_pix2pix(workspace / "ip2p")
    untrained.set_progress_bar_config(disable=True)
    before = untrained(
        "invert the red", image=image, reward_scores=(5, 5, 5), generator=torch.Generator().manual_seed(42), **settings
    ).images[0]  # fmt: skip
    assert np.abs(np.asarray(before, dtype=np.int16) - validation).max() > 1
    summary = json.loads((output / "train_summary.json").read_text())
    assert "added zero-initialized reward modules" in summary["base_model_handling"]


def test_stage1_widens_a_text_to_image_unet_and_saves_an_instruct_pix2pix_folder(workspace, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    output = tmp_path / "stage1"
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(tmp_path / "val.png")
    validation = ("--validation_image", str(tmp_path / "val.png"), "--validation_prompt", "make it red")
    main(_argv(workspace, output, "--max_train_steps", "2", "--validation_steps", "1", "--validation_inference_steps",
               "2", *validation, stage=1))  # fmt: skip
    assert sorted(p.name for p in (output / "validation").iterdir()) == ["step-0000001-0.png", "step-0000002-0.png"]
    stage1 = StableDiffusionInstructPix2PixPipeline.from_pretrained(output, safety_checker=None)
    assert stage1.unet.config.in_channels == 8
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["base_model_handling"].startswith("stage 1: widened conv_in 4 -> 8")
    from reward_edit_pipeline import RewardEditPipeline, load_pipeline

    wrapped = load_pipeline(str(output))  # a stock InstructPix2Pix folder, wrapped for reward conditioning
    assert isinstance(wrapped, RewardEditPipeline) and wrapped.unet.config.in_channels == 8


def test_fp16_on_cpu_is_refused_with_a_clear_error(workspace, tmp_path):
    argv = _argv(workspace, tmp_path / "o")
    argv[argv.index("--mixed_precision") + 1] = "fp16"
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is allowed")
    with pytest.raises(ValueError, match="--mixed_precision fp16 needs a GPU"):
        main(argv)


def test_stage2_continues_from_an_official_release_folder(workspace, tmp_path):
    from reward_edit_pipeline import RewardEditPipeline
    from reward_edit_pipeline.testing import save_dummy_official_folder

    official = save_dummy_official_folder(tmp_path / "official")
    output = tmp_path / "out"
    main(_argv(workspace, output, "--pretrained_model_name_or_path", str(official), "--max_train_steps", "1"))
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["base_model_handling"].startswith("stage 2: base is an official Multi-Reward-Editing stage-2")
    assert RewardEditPipeline.from_pretrained(output).unet.config.reward_attention_dropout == 0.1


def test_cached_latents_train_like_the_uncached_path(workspace, tmp_path):
    """Same seed, same draws: the cached path only moves the VAE and text encoders out of the step."""
    losses = {}
    for name, extra in (("uncached", ()), ("cached", ("--cache_latents",))):
        output = tmp_path / name
        main(_argv(workspace, output, "--gradient_accumulation_steps", "1", "--max_train_steps", "3", *extra))
        losses[name] = json.loads((output / "train_summary.json").read_text())["last_losses"]
    assert len(losses["cached"]) == 3
    np.testing.assert_allclose(losses["cached"], losses["uncached"], rtol=1e-4)


def test_bf16_mixed_precision_runs_on_cpu(workspace, tmp_path):
    output = tmp_path / "bf16"
    argv = _argv(workspace, output, "--gradient_accumulation_steps", "1", "--max_train_steps", "2")
    argv[argv.index("--mixed_precision") + 1] = "bf16"
    summary = main(argv) == 0 and json.loads((output / "train_summary.json").read_text())
    assert summary["optimization_steps"] == 2 and all(np.isfinite(summary["last_losses"]))
