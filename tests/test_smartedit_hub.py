"""The SmartEdit release from the Hub: `convert_smartedit_release`, `reward-edit convert-smartedit` and
`load_pipeline("TencentARC/SmartEdit-7B")` against the loopback Hub (`hub_server.py`), which serves four tiny repos
in the real repos' layouts (the release's pickles, an InstructPix2Pix folder, Vicuna's config + tokenizer, a full CLIP
model) under the real repo ids."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from reward_edit_pipeline import convert_smartedit as convert_module
from reward_edit_pipeline.convert_smartedit import (
    DEFAULT_BASE_MODEL,
    DEFAULT_VISION_MODEL,
    SMARTEDIT_RELEASES,
    add_smartedit_tokens,
    convert_smartedit_release,
)
from reward_edit_pipeline.pipelines.pipeline_reward_smartedit import RewardSmartEditPipeline
from reward_edit_pipeline.testing_smartedit import (
    NUM_IMAGE_TOKENS,
    get_dummy_llm_tokenizer,
    get_dummy_release_pipeline,
    save_dummy_smartedit_sources,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RELEASE = "TencentARC/SmartEdit-7B"
LLM_REPO = SMARTEDIT_RELEASES[RELEASE]
#: the tiny bridge's head counts (the release's, 12 and 8, do not divide the tiny widths)
TINY_HEADS = {"qformer_num_heads": 4, "bim_num_heads": 2}


def edit(pipe: RewardSmartEditPipeline) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    image = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    return pipe(
        "make it red",
        image,
        reward_scores=(5, 4, 5),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def original() -> RewardSmartEditPipeline:
    return get_dummy_release_pipeline()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, original):
    """The four source folders (see `save_dummy_smartedit_sources`)."""
    return save_dummy_smartedit_sources(original, tmp_path_factory.mktemp("smartedit-sources"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sources):
    """The conversion of the local folders: (folder, pipeline loaded from it, its edit)."""
    folder = convert_smartedit_release(
        sources["release"],
        base_model=sources["base"],
        llm_model=sources["llm"],
        vision_model=sources["vision"],
        allow_pickle=True,
        output_dir=tmp_path_factory.mktemp("smartedit-local") / "converted",
        bridge_overrides=TINY_HEADS,
    )
    pipe = RewardSmartEditPipeline.from_pretrained(folder)
    return folder, pipe, edit(pipe)


def publish(hub, sources, release=None) -> None:
    """Serve the sources under the real repo ids (`release`: another release folder)."""
    hub.seed_folder(RELEASE, release or sources["release"])
    hub.seed_folder(DEFAULT_BASE_MODEL, sources["base"])
    hub.seed_folder(LLM_REPO, sources["llm"])
    hub.seed_folder(DEFAULT_VISION_MODEL, sources["vision"])


def downloaded(hub) -> list[str]:
    return [path for method, route, path in hub.requests if route == "resolve" and method == "GET"]


def assert_same_pipeline(pipe: RewardSmartEditPipeline, expected: RewardSmartEditPipeline) -> None:
    for name in ("vae", "text_encoder", "unet", "llm", "vision_encoder", "bridge"):
        mine, theirs = getattr(pipe, name).state_dict(), getattr(expected, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        unequal = [key for key in mine if not torch.equal(mine[key], theirs[key])]
        assert not unequal, f"{name}: {unequal[:3]}"
    assert pipe.llm_tokenizer.get_vocab() == expected.llm_tokenizer.get_vocab()
    public = [
        {key: value for key, value in config.items() if not key.startswith("_")}
        for config in (pipe.bridge.config, expected.bridge.config)
    ]
    assert public[0] == public[1]


def test_smartedit_tokens_are_added_in_the_release_order():
    tokenizer = get_dummy_llm_tokenizer(num_image_tokens=0)
    base = len(tokenizer)  # Vicuna: 32000 → <img> 32000, <im_start> 32001, <im_end> 32002, <img_0> 32003
    add_smartedit_tokens(tokenizer, 32)
    ids = tokenizer.convert_tokens_to_ids(["<img>", "<im_start>", "<im_end>", "<img_0>", "<img_31>"])
    assert ids == [base, base + 1, base + 2, base + 3, base + 34] and len(tokenizer) == base + 35
    special = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    assert {"<im_start>", "<im_end>"} <= special and not {"<img>", "<img_0>"} & special


def test_local_conversion_rebuilds_the_released_weights(original, reference):
    _, converted, _ = reference
    for name in ("bridge", "vision_encoder"):
        mine, theirs = getattr(converted, name).state_dict(), getattr(original, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)
    unet, theirs = converted.unet.state_dict(), original.unet.state_dict()
    released = [key for key in theirs if not key.startswith(("reward_", "failure_text_", "latent_reward_attention"))]
    assert all(torch.equal(unet[key], theirs[key]) for key in released)
    assert converted.llm.config.vocab_size == original.llm.config.vocab_size
    assert converted.image_token_ids() == original.image_token_ids()
    assert converted.bridge.config.num_image_tokens == NUM_IMAGE_TOKENS  # read from the release's vocabulary


def test_hub_conversion_downloads_only_what_it_needs_and_equals_the_local_one(hub, sources, reference, tmp_path):
    _, expected, expected_edit = reference
    release = tmp_path / "release"
    shutil.copytree(sources["release"], release)
    shutil.copytree(release / "unet-15000", release / "unet-9000")  # another checkpoint: not downloaded
    publish(hub, sources, release)
    folder = convert_smartedit_release(
        RELEASE, allow_pickle=True, output_dir=tmp_path / "converted", bridge_overrides=TINY_HEADS
    )
    pipe = RewardSmartEditPipeline.from_pretrained(folder)
    assert_same_pipeline(pipe, expected)
    np.testing.assert_array_equal(edit(pipe), expected_edit)
    fetched = downloaded(hub)
    assert any(f"/{RELEASE}/resolve/" in path and path.endswith("LLM-15000/adapter_model.bin") for path in fetched)
    assert not [path for path in fetched if "unet-9000" in path]
    # the base UNet's weights (the release holds them) and every weight of the LLM repo stay on the Hub
    assert not [path for path in fetched if f"/{DEFAULT_BASE_MODEL}/" in path and "/unet/diffusion_pytorch" in path]
    assert {path.rsplit("/", 1)[1] for path in fetched if f"/{LLM_REPO}/" in path} <= {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }


def test_cli_converts_from_the_hub_and_keeps_the_token_out_of_its_output(
    hub, hub_token, sources, reference, tmp_path, capsys, caplog
):
    from reward_edit_pipeline.cli import main

    _, expected, expected_edit = reference
    publish(hub, sources)
    (tmp_path / "bridge.json").write_text(json.dumps(TINY_HEADS))
    argv = ["-vv", "convert-smartedit", RELEASE, "-o", str(tmp_path / "out"), "--allow-pickle"]
    with caplog.at_level(logging.DEBUG):
        assert main([*argv, "--bridge-config", str(tmp_path / "bridge.json")]) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 'out'}" in captured.out
    assert hub_token not in captured.out + captured.err + caplog.text
    pipe = RewardSmartEditPipeline.from_pretrained(tmp_path / "out")
    assert_same_pipeline(pipe, expected)
    np.testing.assert_array_equal(edit(pipe), expected_edit)


def test_pickles_are_refused_without_allow_pickle_before_any_download(hub, sources, tmp_path, capsys):
    from reward_edit_pipeline.cli import main

    publish(hub, sources)
    with pytest.raises(ValueError, match=r"LLM-15000/adapter_model\.bin.*pickle.*allow_pickle=True"):
        convert_smartedit_release(RELEASE, output_dir=tmp_path / "out")
    assert main(["convert-smartedit", RELEASE, "-o", str(tmp_path / "out")]) == 2
    assert "pass --allow-pickle if you trust its source" in capsys.readouterr().err
    assert downloaded(hub) == [] and not (tmp_path / "out").exists()


def test_load_pipeline_needs_allow_pickle_once_then_loads_the_cache_offline(
    hub, sources, reference, tmp_path, monkeypatch
):
    import huggingface_hub.constants as hub_constants

    from reward_edit_pipeline import load_pipeline

    _, expected, expected_edit = reference
    monkeypatch.setenv("REWARD_EDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(convert_module, "RELEASED_HEAD_COUNTS", TINY_HEADS)  # the tiny release's head counts
    publish(hub, sources)
    with pytest.raises(FileNotFoundError, match=f"reward-edit convert-smartedit {RELEASE} --allow-pickle"):
        load_pipeline(RELEASE, device="cpu")
    assert downloaded(hub) == []
    converted = load_pipeline(RELEASE, device="cpu", allow_pickle=True)
    assert_same_pipeline(converted, expected)
    np.testing.assert_array_equal(edit(converted), expected_edit)
    cached = list((tmp_path / "cache" / "converted").iterdir())
    assert [path.name for path in cached] == ["TencentARC--SmartEdit-7B--main--steps-15000"]

    requests = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    again = load_pipeline(RELEASE, device="cpu")  # no allow_pickle needed: the cache holds safetensors
    assert len(hub.requests) == requests
    np.testing.assert_array_equal(edit(again), expected_edit)


def test_missing_files_and_wrong_steps_are_named(hub, sources, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hub_constants

    from reward_edit_pipeline.cli import main

    release = tmp_path / "release"
    shutil.copytree(sources["release"], release)
    (release / "modulate-15000" / "adapter_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no modulate-15000/adapter_model\.bin \(or adapter_model\.saf"):
        convert_smartedit_release(release, allow_pickle=True, output_dir=tmp_path / "out")
    publish(hub, sources)
    with pytest.raises(FileNotFoundError, match=r"no LLM-9000/adapter_model\.bin.*steps found in the release: 15000"):
        convert_smartedit_release(RELEASE, steps=9000, allow_pickle=True, output_dir=tmp_path / "out")
    assert main(["convert-smartedit", RELEASE, "--steps", "9000", "--allow-pickle", "-o", str(tmp_path / "o")]) == 2
    assert "unet-9000/adapter_model.bin" in capsys.readouterr().err
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        convert_smartedit_release(RELEASE, steps=0, allow_pickle=True, output_dir=tmp_path / "out")
    assert main(["convert-smartedit", "tester/missing-release", "--allow-pickle", "-o", str(tmp_path / "o")]) == 2
    assert "tester/missing-release" in capsys.readouterr().err  # the Hub's 404: bad input
    assert downloaded(hub) == []
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # no connection and nothing cached: exit 1
    assert main(["convert-smartedit", RELEASE, "--allow-pickle", "-o", str(tmp_path / "o")]) == 1
    assert "cannot be reached" in capsys.readouterr().err


def test_a_base_model_without_an_8_channel_unet_is_refused(sources, tmp_path):
    from reward_edit_pipeline.testing import save_dummy_text_to_image_folder

    base = save_dummy_text_to_image_folder(tmp_path / "sd")
    with pytest.raises(ValueError, match="`base_model` .* in_channels=4; SmartEdit's UNet takes 8"):
        convert_smartedit_release(
            sources["release"],
            base_model=base,
            llm_model=sources["llm"],
            vision_model=sources["vision"],
            allow_pickle=True,
            output_dir=tmp_path / "out",
        )
