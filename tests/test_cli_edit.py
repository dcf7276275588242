"""`reward-edit edit` / `convert-official` and `load_pipeline` on tiny local models (no network)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from reward_edit_pipeline import RewardEditPipeline
from reward_edit_pipeline.cli import main
from reward_edit_pipeline.loading import HubUnavailableError, detect_layout, load_pipeline
from reward_edit_pipeline.testing import (
    save_dummy_instruct_pix2pix_folder,
    save_dummy_official_folder,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def tiny_model(tiny_pipeline_folder) -> Path:
    return tiny_pipeline_folder  # the session's saved tiny pipeline (tests/conftest.py)


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def tiny_edit(pipe) -> np.ndarray:
    """A 2-step seeded edit of a fixed 32×32 image (rewards (4, 5, 3) where the pipeline takes rewards)."""
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.RandomState(1).randint(0, 256, (32, 32, 3), dtype=np.uint8))
    rewards = {"reward_scores": (4, 5, 3)} if isinstance(pipe, RewardEditPipeline) else {}
    generator = torch.Generator().manual_seed(0)
    return pipe("make it blue", image, num_inference_steps=2, generator=generator, output_type="np", **rewards).images


def closed_port_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there: connection refused at once


def test_edit_writes_the_edited_image(tiny_model, photo, tmp_path):
    output = tmp_path / "out" / "edited.png"
    code = main(["edit", str(photo), "make it blue", "-o", str(output), "--model", str(tiny_model), "--steps", "2"])
    assert code == 0
    edited = Image.open(output)
    assert edited.size == (48, 40)
    first = np.asarray(edited)
    main(["edit", str(photo), "make it blue", "-o", str(output), "--model", str(tiny_model), "--steps", "2"])
    assert np.array_equal(np.asarray(Image.open(output)), first)  # fixed default seed
    main(
        [
            "edit",
            str(photo),
            "make it blue",
            "-o",
            str(output),
            "--model",
            str(tiny_model),
            "--steps",
            "2",
            "--scores",
            "1,1,1",
        ]
    )
    assert not np.array_equal(np.asarray(Image.open(output)), first)


def test_edit_rejects_out_of_range_scores_naming_the_flag(photo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(photo), "x", "-o", str(tmp_path / "o.png"), "--scores", "5,7,5"])
    assert exit_info.value.code == 2
    assert "--scores" in capsys.readouterr().err


def test_edit_reports_an_unreadable_image(tiny_model, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["edit", str(broken), "x", "-o", str(tmp_path / "o.png"), "--model", str(tiny_model)]) == 2
    assert "cannot read IMAGE" in capsys.readouterr().err


def test_unreachable_hub_gives_one_clear_line(photo, tmp_path):
    env = {
        "HF_ENDPOINT": closed_port_endpoint(),
        "HF_HOME": str(tmp_path / "hf"),
        "REWARD_EDIT_CACHE": str(tmp_path / "c"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "reward_edit_pipeline", "edit", str(photo), "x", "-o", str(tmp_path / "o.png")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **env},
    )
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--model" in error_lines[0] and "Traceback" not in result.stderr


def test_layouts_are_detected_and_loaded(tmp_path, tiny_model):
    official = save_dummy_official_folder(tmp_path / "official")
    ip2p = save_dummy_instruct_pix2pix_folder(tmp_path / "ip2p")
    assert detect_layout(tiny_model) == "reward"
    assert detect_layout(official) == "official"
    assert detect_layout(ip2p) == "instruct-pix2pix"
    edits = {}
    for name, folder in (("reward", tiny_model), ("official", official), ("instruct-pix2pix", ip2p)):
        loaded = load_pipeline(str(folder), device="cpu")
        assert type(loaded) is RewardEditPipeline
        edits[name] = tiny_edit(loaded)
    # all three tiny folders come from seed 0: the official layout holds the same weights as the reward folder, and
    # an InstructPix2Pix folder loads with zero-initialised reward modules, so it edits like the stock pipeline
    np.testing.assert_array_equal(edits["official"], edits["reward"])
    stock = StableDiffusionInstructPix2PixPipeline.from_pretrained(ip2p, safety_checker=None)
    np.testing.assert_array_equal(edits["instruct-pix2pix"], tiny_edit(stock))
    assert np.abs(edits["instruct-pix2pix"] - edits["reward"]).max() > 1e-3  # the rewards of the others do act
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        detect_layout(tmp_path)


def test_convert_official_writes_a_reward_pipeline_folder_that_edits_the_same(tmp_path):
    official = save_dummy_official_folder(tmp_path / "official", seed=1)
    assert main(["convert-official", str(official), "-o", str(tmp_path / "converted")]) == 0
    assert detect_layout(tmp_path / "converted") == "reward"
    converted = tiny_edit(RewardEditPipeline.from_pretrained(tmp_path / "converted"))
    np.testing.assert_array_equal(converted, tiny_edit(RewardEditPipeline.from_official(official)))


def test_unknown_hub_repo_without_network_raises_hub_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(HubUnavailableError, match="`model`"):
        load_pipeline("someone/some-model", device="cpu")
