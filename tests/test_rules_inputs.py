"""The shared input rules as plain functions: reward scores, failure text, images, dtype/device/seed, Hub names, judge
construction and release-layout detection (no pipeline runs here; `test_bad_inputs.py` runs them end to end)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reward_edit_pipeline.devices import (
    MAX_SEED,
    check_seed,
    pop_dtype_kwarg,
    resolve_device,
    resolve_dtype,
    resolve_mixed_precision,
)
from reward_edit_pipeline.downloads import HubUnavailableError, download_pipeline_files, looks_like_repo_id
from reward_edit_pipeline.images import (
    array_to_float,
    check_image_pixels,
    check_output_path,
    pil_to_array,
    shrink_to_max_side,
    to_rgb_image,
)
from reward_edit_pipeline.rewards import DEFAULT_NO_FAILURE_TEXT, parse_reward_scores, resolve_failure_text

# ---------------------------------------------------------------------------------------------------- reward scores


@pytest.mark.parametrize(
    ("value", "batch_size", "expected"),
    [
        ("5,5,5", None, [(5.0, 5.0, 5.0)]),
        (" 5, 4.5 ,3 ", None, [(5.0, 4.5, 3.0)]),
        ("5 4 3", None, [(5.0, 4.0, 3.0)]),
        ((5, 4, 3), 2, [(5.0, 4.0, 3.0), (5.0, 4.0, 3.0)]),
        ([[1, 2, 3], [4, 5, 0]], 2, [(1.0, 2.0, 3.0), (4.0, 5.0, 0.0)]),
        (np.array([0.0, 2.5, 5.0]), None, [(0.0, 2.5, 5.0)]),
        (torch.tensor([[1.0, 2.0, 3.0]]), 3, [(1.0, 2.0, 3.0)] * 3),
    ],
)
def test_reward_scores_parse_from_every_front_end_form(value, batch_size, expected):
    assert parse_reward_scores(value, batch_size=batch_size) == expected


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("5;5;5", ValueError, r"three comma-separated numbers in \[0, 5\]"),
        ("5,5", ValueError, "exactly 3 values"),
        ((5, 5.01, 5), ValueError, r"preserving score must be a finite number in \[0, 5\], got 5.01"),
        ((-0.1, 5, 5), ValueError, r"following score must be a finite number in \[0, 5\]"),
        ((5, 5, float("inf")), ValueError, "quality score must be a finite number"),
        ((5, True, 5), TypeError, "must be a number"),
        (torch.ones(2, 2, 3), ValueError, r"shape \[3\] or \[B, 3\].*\(2, 2, 3\)"),
        (np.ones(4), ValueError, r"shape \[3\] or \[B, 3\].*\(4,\)"),
        (5, TypeError, "three numbers"),
        ([1, [2, 3, 4]], ValueError, "mixes numbers and triples"),
    ],
)
def test_bad_reward_scores_name_the_argument_and_range_and_are_never_clamped(value, error, message):
    with pytest.raises(error, match=message) as info:
        parse_reward_scores(value, name="reward_scores")
    assert "reward_scores" in str(info.value)


def test_reward_score_rows_must_match_the_batch():
    with pytest.raises(ValueError, match=r"shape \[3\] or \[3, 3\].*2 triples but the batch has 3 prompts"):
        parse_reward_scores([(5, 5, 5), (4, 4, 4)], batch_size=3)


# ---------------------------------------------------------------------------------------------------- failure text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "model no-failure"),
        ("", "model no-failure"),
        ("   \n", "model no-failure"),
        ((None, "", " "), "model no-failure"),
        ("  the sky is still blue ", "the sky is still blue"),
        (("the sky is still blue", None, ""), "the sky is still blue; None; None"),
        (["", "the face changed", None], "None; the face changed; None"),
    ],
)
def test_failure_text_has_one_meaning_per_value(value, expected):
    assert resolve_failure_text(value, no_failure_text="model no-failure") == expected


def test_failure_text_default_is_the_papers_convention_and_bad_types_are_refused():
    assert resolve_failure_text("") == resolve_failure_text(None) == DEFAULT_NO_FAILURE_TEXT == "None; None; None"
    with pytest.raises(TypeError, match="`failure_text` must be None, a string"):
        resolve_failure_text(3)
    with pytest.raises(ValueError, match="3 entries"):
        resolve_failure_text(("a", "b"))


# ---------------------------------------------------------------------------------------------------- images


def test_eight_bit_pil_modes_become_rgb_in_unit_range():
    rgb = np.random.RandomState(0).randint(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pil_to_array(Image.fromarray(rgb)), rgb.astype(np.float32) / 255.0)
    grey = Image.fromarray(rgb[..., 0])
    np.testing.assert_array_equal(pil_to_array(grey), np.repeat(rgb[..., :1], 3, -1) / np.float32(255.0))
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(pil_to_array(palette), np.asarray(palette.convert("RGB"), np.float32) / 255.0)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    np.testing.assert_array_equal(pil_to_array(cmyk), np.asarray(cmyk.convert("RGB"), np.float32) / 255.0)


def test_sixteen_bit_images_are_scaled_not_clipped_to_white():
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    np.testing.assert_allclose(pil_to_array(image)[..., 0], values / 65535.0, rtol=1e-6)
    # a 16-bit value v * 257 is exactly the 8-bit value v
    eight = np.array([[0, 17, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(
        pil_to_array(Image.fromarray(eight.astype(np.uint16) * 257)), pil_to_array(Image.fromarray(eight))
    )
    np.testing.assert_array_equal(array_to_float(eight.astype(np.uint16) * 257), array_to_float(eight))
    assert np.asarray(to_rgb_image(Image.fromarray(values))).max() < 255  # the judge/trainer 8-bit view too


def test_mode_i_and_f_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"mode-I image with values in \[-5, 70000\]; expected \[0, 65535\]"):
        pil_to_array(Image.fromarray(np.array([[-5, 70000]], dtype=np.int32)))
    with pytest.raises(ValueError, match=r"mode-F image .* expected \[0, 1\]"):
        pil_to_array(Image.fromarray(np.array([[0.0, 2.0]], dtype=np.float32)))


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent black → white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black → mid grey
    expected = np.array([[[1, 0, 0], [1, 1, 1]], [[127 / 255, 127 / 255, 127 / 255], [1, 1, 1]]], np.float32)
    rgba[1, 1] = (0, 0, 255, 0)
    np.testing.assert_allclose(pil_to_array(Image.fromarray(rgba)), expected, atol=1e-6)
    np.testing.assert_allclose(array_to_float(rgba)[0], expected, atol=1e-6)
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    np.testing.assert_array_equal(pil_to_array(palette), np.ones((1, 1, 3), np.float32))


def test_numpy_uint8_is_scaled_like_the_same_pil_image():
    pixels = np.random.RandomState(1).randint(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(array_to_float(pixels)[0], pil_to_array(Image.fromarray(pixels)))


@pytest.mark.parametrize(
    ("array", "error", "message"),
    [
        (np.full((2, 2, 3), 1.5, np.float32), ValueError, r"float array must hold finite values in \[0, 1\]"),
        (np.full((2, 2, 3), np.nan, np.float32), ValueError, "finite values"),
        (np.zeros((2, 2, 3), np.int64), TypeError, "uint8 .* uint16 .* float"),
        (np.zeros((2, 2, 5), np.uint8), ValueError, "C in 1, 2, 3, 4"),
        (np.zeros((0, 2, 3), np.uint8), ValueError, "empty"),
    ],
)
def test_bad_numpy_images_are_refused(array, error, message):
    with pytest.raises(error, match=message):
        array_to_float(array)


def test_pixel_limit_is_checked_before_any_conversion():
    with pytest.raises(ValueError, match=r"10000x10000 = 100,000,000 pixels, more than the limit of 16,777,216"):
        check_image_pixels(10000, 10000, 4096 * 4096)
    lazy = Image.new("RGB", (50, 40))
    with pytest.raises(ValueError, match="max_image_pixels"):
        pil_to_array(lazy, max_pixels=1999)
    check_image_pixels(10000, 10000, None)  # None = no limit


def test_shrinking_keeps_precision_for_sixteen_bit_and_alpha():
    assert shrink_to_max_side(Image.new("RGB", (40, 20)), 10).size == (10, 5)
    shrunk = shrink_to_max_side(Image.fromarray(np.full((20, 40), 257 * 100, np.uint16)), 10)
    assert isinstance(shrunk, np.ndarray) and shrunk.shape == (5, 10, 3)
    np.testing.assert_allclose(shrunk, 100 / 255, atol=1e-5)
    with pytest.raises(ValueError, match="`max_side` must be >= 0"):
        shrink_to_max_side(Image.new("RGB", (4, 4)), -1)


def test_output_path_is_checked_before_any_work(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(photo)
    assert check_output_path(tmp_path / "new" / "out.png", inputs=(photo,)) == tmp_path / "new" / "out.png"
    with pytest.raises(ValueError, match="unknown image extension '.xyz'"):
        check_output_path(tmp_path / "out.xyz")
    with pytest.raises(ValueError, match="no extension"):
        check_output_path(tmp_path / "out")
    with pytest.raises(ValueError, match="is a folder"):
        check_output_path(tmp_path)
    with pytest.raises(ValueError, match="refusing to overwrite the original"):
        check_output_path(tmp_path / "." / "photo.png", inputs=(photo,))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_path(photo / "out.png")


# ---------------------------------------------------------------------------------------------------- devices


def test_dtype_names_and_the_cpu_half_precision_rule():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype(None, "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp32", "cpu") == resolve_dtype(torch.float32, "cpu") == torch.float32
    assert resolve_dtype("float16", "cuda") == torch.float16
    with pytest.raises(ValueError, match="float16 is not supported on the CPU.*float32 \\(or bfloat16\\)"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="`dtype` must be one of auto, float32"):
        resolve_dtype("float64", "cpu")
    assert resolve_mixed_precision("no", "cpu") == torch.float32
    assert resolve_mixed_precision("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="--mixed_precision fp16 needs a GPU; on the CPU use --mixed_precision no"):
        resolve_mixed_precision("fp16", "cpu")


def test_dtype_and_torch_dtype_keywords():
    kwargs = {"torch_dtype": torch.bfloat16, "other": 1}
    assert pop_dtype_kwarg(kwargs) == torch.bfloat16 and kwargs == {"other": 1}
    assert pop_dtype_kwarg({"dtype": torch.float16}) == torch.float16
    with pytest.raises(ValueError, match="not both"):
        pop_dtype_kwarg({"dtype": torch.float16, "torch_dtype": torch.float32})


def test_devices_and_seeds():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="`device` must be 'auto', 'cpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            resolve_device("cuda", name="--device")
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    for bad in (-1, MAX_SEED + 1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 18446744073709551615\]"):
            check_seed(bad)


# ---------------------------------------------------------------------------------------------------- Hub, judge, layout


def test_repo_ids_and_paths_are_told_apart(monkeypatch, tmp_path):
    assert looks_like_repo_id("owner/name")
    for path in ("./owner/name", "/abs/path", "a/b/c", "~/x", "name", "owner/"):
        assert not looks_like_repo_id(path)
    with pytest.raises(FileNotFoundError, match="not an existing local folder and not a Hub repo id"):
        download_pipeline_files("./missing/folder", name="model")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(HubUnavailableError, match="no local folder of that name.*cannot be reached"):
        download_pipeline_files("someone/missing", name="model")


def test_judge_is_built_one_way(monkeypatch):
    from reward_edit_pipeline.judge.factory import make_judge, normalize_base_url

    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="MY_JUDGE_KEY is not set"):
        make_judge("gpt-4o", None, api_key_env="MY_JUDGE_KEY")
    monkeypatch.setenv("MY_JUDGE_KEY", "secret-value")
    judge = make_judge(" gpt-4o ", "  http://127.0.0.1:9/v1 ", api_key_env="MY_JUDGE_KEY", timeout=5)
    assert (judge.model, judge.base_url, judge.api_key_env, judge.timeout) == (
        "gpt-4o",
        "http://127.0.0.1:9/v1",
        "MY_JUDGE_KEY",
        5.0,
    )
    assert normalize_base_url("  ") is None
    with pytest.raises(ValueError, match="`base_url` must start with http:// or https://"):
        make_judge("gpt-4o", "localhost:8000", api_key_env="MY_JUDGE_KEY")
    with pytest.raises(ValueError, match="`model` must name the judge model"):
        make_judge(" ", None, api_key_env="MY_JUDGE_KEY")


def test_release_layout_detection_is_shared_with_the_trainer(tmp_path):
    from safetensors.torch import save_file

    from reward_edit_pipeline.loading import detect_layout, has_official_reward_keys

    unet = tmp_path / "release" / "unet"
    unet.mkdir(parents=True)
    (tmp_path / "release" / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    save_file(
        {"conv_in.weight": torch.zeros(1), "proj_deal.weight": torch.zeros(1)},
        unet / "diffusion_pytorch_model.safetensors",
    )
    assert has_official_reward_keys(unet) and detect_layout(tmp_path / "release") == "official"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_layout(tmp_path / "missing")
    import reward_edit_pipeline.train.train as train_module

    assert train_module.detect_layout is detect_layout  # the trainer imports the one rule


# ------------------------------------------------------------------------------------------ converted-folder writes
def test_folder_written_aside_is_complete_or_absent(tmp_path):
    """`write_folder_aside`: a failed write leaves neither the target nor a partial folder; a successful one replaces
    the older target; two writers of the same target at once each write their own folder and one complete copy
    remains (before, both used `<target>.partial` and one deleted the other's half-written files)."""
    import threading
    import time

    from reward_edit_pipeline.downloads import write_folder_aside

    target = tmp_path / "cache" / "converted-model"

    def failing(folder):
        (folder / "half.json").write_text("{")
        raise RuntimeError("crash while saving")

    with pytest.raises(RuntimeError, match="crash while saving"):
        write_folder_aside(target, failing)
    assert list(target.parent.iterdir()) == []

    def writer(tag: str):
        def write(folder):
            for index in range(5):
                (folder / f"part{index}.txt").write_text(tag)
                time.sleep(0.02)

        return write

    write_folder_aside(target, writer("old"))
    errors: list[BaseException] = []

    def run(tag: str) -> None:
        try:
            write_folder_aside(target, writer(tag))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    contents = {path.read_text() for path in target.iterdir()}
    assert sorted(path.name for path in target.iterdir()) == [f"part{i}.txt" for i in range(5)]
    assert len(contents) == 1 and contents <= {"a", "b"}  # one writer's complete copy, not a mix, not the old one
    assert [path.name for path in target.parent.iterdir()] == ["converted-model"]
