"""The bad-input battery: unusual or wrong inputs through the API, the CLI verbs and the trainer's entry point.

Each case must end in a correct result or a clear answer (an error naming the argument and what is accepted, or a
documented warning), never a silently wrong result or a traceback. Limits that remain are listed in docs/rules.md.
Most image cases compare what the pipeline feeds the model (`_preprocess_image`): equal inputs give equal edits, so
the few real edits here are the ones that check the output size.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reward_edit_pipeline.cli import main
from reward_edit_pipeline.testing import make_dummy_pipeline, save_dummy_official_folder, save_dummy_pipeline

cuda_missing = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")


def random_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipe():
    pipeline = make_dummy_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return save_dummy_pipeline(tmp_path_factory.mktemp("bad_inputs_model"))


def model_input(pipe, image) -> torch.Tensor:
    pixels, _ = pipe._preprocess_image(image)
    return pixels.contiguous()


def edit(pipe, image, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe("make it blue", image, num_inference_steps=1, generator=generator, output_type="np", **kwargs).images


# ---------------------------------------------------------------------------------------------------- API: images


def test_sixteen_bit_png_is_scaled_like_the_eight_bit_image(pipe, tmp_path):
    eight = random_rgb(6, 4)[..., 0]
    path = tmp_path / "sixteen.png"
    Image.fromarray(eight.astype(np.uint16) * 257).save(path)  # v * 257 in 16 bits == v in 8 bits
    sixteen = Image.open(path)
    assert sixteen.mode in ("I;16", "I")
    assert torch.equal(model_input(pipe, sixteen), model_input(pipe, Image.fromarray(eight).convert("RGB")))
    assert model_input(pipe, sixteen).max() < 1.0  # not the all-white image of before


@pytest.mark.parametrize("mode", ["RGBA", "LA", "CMYK", "L", "P", "1"])
def test_every_pil_mode_is_an_rgb_image_not_latents(pipe, mode):
    image = Image.fromarray(random_rgb(6, 4)).convert(mode)
    pixels, size = pipe._preprocess_image(image)
    assert pixels.shape == (1, 3, 4, 6) and size == (4, 6)  # 3 channels: never taken as 4-channel latents
    expected = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")
    if mode not in ("RGBA", "LA"):
        expected = image.convert("RGB")
    assert torch.equal(pixels.contiguous(), model_input(pipe, expected))


def test_rgba_edit_has_the_input_size(pipe):
    image = Image.fromarray(random_rgb(8, 6)).convert("RGBA")
    assert edit(pipe, image).shape == (1, 6, 8, 3)  # was 2x (8x with the real VAE): RGBA taken as latents


@pytest.mark.parametrize("layout", ["HWC", "BHWC", "HW"])
def test_numpy_uint8_is_scaled_like_the_same_pil_image(pipe, layout):
    pixels = random_rgb(6, 4)
    array = {"HWC": pixels, "BHWC": pixels[None], "HW": pixels[..., 0]}[layout]
    image = Image.fromarray(pixels if layout != "HW" else pixels[..., 0]).convert("RGB")
    assert torch.equal(model_input(pipe, array), model_input(pipe, image))


def test_numpy_uint16_and_float_are_scaled_like_the_same_pil_image(pipe):
    pixels = random_rgb(6, 4)
    reference = model_input(pipe, Image.fromarray(pixels))
    assert torch.equal(model_input(pipe, pixels.astype(np.uint16) * 257), reference)
    assert torch.equal(model_input(pipe, pixels.astype(np.float32) / 255.0), reference)


def test_exif_orientation_is_applied(pipe):
    pixels = random_rgb(6, 4)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path_image = Image.open(_save_with_exif(image, exif))
    assert model_input(pipe, path_image).shape[-2:] == (6, 4)


def _save_with_exif(image: Image.Image, exif) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    return path


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (np.full((4, 4, 3), 2.0, np.float32), ValueError, r"float array must hold finite values in \[0, 1\]"),
        (torch.full((1, 3, 4, 4), -0.5), ValueError, r"float tensor must hold values in \[0, 1\].*\(image \+ 1\) / 2"),
        (torch.zeros(1, 2, 4, 4), ValueError, "1 or 3 channels"),
        (np.zeros((4, 4, 3), np.int32), TypeError, "uint8 .*uint16 .*float"),
        ([Image.new("RGB", (4, 4)), Image.new("RGB", (6, 4))], ValueError, "same size"),
        ([], ValueError, "got 0 images for 1 prompts"),
    ],
)
def test_bad_images_get_clear_errors(pipe, image, error, message):
    with pytest.raises(error, match=message):
        prompts = "x" if not isinstance(image, list) or len(image) < 2 else ["x", "y"]
        pipe(prompts, image, num_inference_steps=1)


def test_huge_image_is_refused_before_any_allocation(pipe):
    huge = torch.zeros(1, 3, 1, 1).expand(1, 3, 10000, 10000)  # a view: no 1.2 GB tensor exists
    with pytest.raises(ValueError, match=r"10000x10000 .* limit of 16,777,216 .*pipe.max_image_pixels = N"):
        pipe("x", huge, num_inference_steps=1)
    pipe.max_image_pixels = 10
    try:
        with pytest.raises(ValueError, match="limit of 10 "):
            pipe("x", Image.new("RGB", (4, 4)), num_inference_steps=1)
    finally:
        pipe.max_image_pixels = type(pipe).max_image_pixels


def test_odd_sizes_edit_at_the_input_size(pipe):
    image = Image.fromarray(random_rgb(9, 7))
    assert edit(pipe, image).shape == (1, 7, 9, 3)
    pixels, size = pipe._preprocess_image(image)
    assert pixels.shape[-2:] == (8, 10) and size == (7, 9)  # padded to the VAE factor, cropped back after decoding
    assert torch.equal(pixels[..., 7, :9], pixels[..., 6, :9])  # edge rows repeated


# ---------------------------------------------------------------------------------------------------- API: other


def test_guidance_below_one_warns_that_guidance_is_off(pipe, caplog):
    with caplog.at_level(logging.WARNING):
        edit(pipe, Image.fromarray(random_rgb(8, 8)), guidance_scale=0.5)
    assert "guidance is off: guidance_scale=0.5" in caplog.text


def test_empty_failure_text_is_no_failure_text(pipe):
    image = Image.fromarray(random_rgb(4, 4))
    assert pipe.prepare_failure_texts("", 1) == pipe.prepare_failure_texts(None, 1) == ["None; None; None"]
    assert pipe.prepare_failure_texts(" ", 1) == pipe.prepare_failure_texts((None, "", None), 1)
    np.testing.assert_array_equal(edit(pipe, image, failure_text=""), edit(pipe, image, failure_text=None))


def test_both_dtype_keywords_load_and_conflicts_are_refused(model_folder):
    from reward_edit_pipeline import RewardEditPipeline

    assert RewardEditPipeline.from_pretrained(model_folder, dtype=torch.bfloat16).unet.dtype == torch.bfloat16
    assert RewardEditPipeline.from_pretrained(model_folder, torch_dtype="bf16").unet.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not both"):
        RewardEditPipeline.from_pretrained(model_folder, dtype=torch.float32, torch_dtype=torch.bfloat16)


def test_load_pipeline_refuses_half_precision_on_cpu_and_missing_folders(model_folder, tmp_path):
    from reward_edit_pipeline import load_pipeline

    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        load_pipeline(str(model_folder), device="cpu", dtype="float16")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(str(tmp_path / "no" / "such" / "model"), device="cpu")
    # loading on the CPU to run elsewhere (ComfyUI's model management): the rule is judged on the execution device
    bf16 = load_pipeline(str(model_folder), device="cpu", dtype="bfloat16", execution_device="cpu")
    assert bf16.unet.dtype == torch.bfloat16 and bf16.device.type == "cpu"
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        load_pipeline(str(model_folder), device="cpu", dtype=torch.float16, execution_device="cpu")


# ---------------------------------------------------------------------------------------------------- CLI: edit


@pytest.fixture()
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(random_rgb(9, 7)).save(path)
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("out.xyz", "unknown image extension '.xyz'"),
        ("out", "no extension"),
        (".", "is a folder"),
        ("photo.png", "refusing to overwrite the original"),
        ("photo.png/out.png", "is a file, not a folder"),
    ],
)
def test_edit_checks_the_output_path_before_any_work(photo, capsys, output, message):
    before = photo.read_bytes()
    # --model names nothing: the output error must come first, before any model is looked for
    code, err = run_cli(capsys, "edit", str(photo), "x", "-o", str(photo.parent / output), "--model", "/no/such/model")
    assert code == 2 and message in err and "Traceback" not in err
    assert photo.read_bytes() == before  # the original is untouched


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--model", "./no/such/folder"], 2, "does not exist"),
        (["--dtype", "float16", "--device", "cpu"], 2, "float16 is not supported on the CPU"),
        (["--device", "gpu"], 2, "`--device` must be 'auto', 'cpu'"),
        (
            ["--max-side", "0", "--max-pixels", "20"],
            2,
            "limit of 20 (about 4x4); downscale it first, or raise the limit with --max-pixels N",
        ),
        (["--scores", "5,5,9"], 2, "--scores"),
        (["--seed", "-1"], 2, "--seed"),
        (["--seed", str(2**64)], 2, "--seed"),
        (["--max-side", "-3"], 2, "--max-side"),
    ],
)
def test_edit_bad_arguments_exit_2_with_the_flag_named(photo, tmp_path, capsys, extra, code, message):
    argv = ["edit", str(photo), "x", "-o", str(tmp_path / "out.png"), "--model", "/no/such/model", *extra]
    if extra[:2] == ["--model", "./no/such/folder"]:
        argv = argv[:-4] + extra
    result, err = run_cli(capsys, *argv)
    assert result == code and message in err and "Traceback" not in err


@cuda_missing
def test_edit_on_cuda_without_a_gpu_is_a_clear_error(photo, tmp_path, capsys):
    code, err = run_cli(capsys, "edit", str(photo), "x", "-o", str(tmp_path / "o.png"), "--device", "cuda")
    assert code == 2 and "--device" in err and "no CUDA GPU" in err


def test_missing_model_repo_is_not_only_a_hub_problem(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, err = run_cli(capsys, "edit", str(photo), "x", "-o", str(tmp_path / "o.png"), "--model", "models/mine")
    assert code == 1 and "no local folder of that name" in err and "--model" in err


def test_edit_reports_shrinking_and_keeps_odd_sizes(model_folder, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(random_rgb(21, 15)).save(big)
    output = tmp_path / "out.png"
    argv = ["edit", str(big), "x", "-o", str(output), "--model", str(model_folder), "--steps", "1"]
    code, err = run_cli(capsys, *argv, "--max-side", "11")
    assert code == 0 and "--max-side 11 shrank the image from 21x15 to 11x8" in err
    assert Image.open(output).size == (11, 8)
    code, err = run_cli(capsys, *argv, "--max-side", "0")
    assert code == 0 and "shrank" not in err
    assert Image.open(output).size == (21, 15)  # odd size kept, not trimmed to 20x14


def test_edit_of_a_sixteen_bit_png_equals_the_eight_bit_edit(model_folder, tmp_path, capsys):
    eight = random_rgb(6, 4)
    paths = {"8": tmp_path / "eight.png", "16": tmp_path / "sixteen.png"}
    Image.fromarray(eight).save(paths["8"])
    Image.fromarray(eight[..., 1].astype(np.uint16) * 257).save(paths["16"])
    Image.fromarray(eight[..., 1]).convert("RGB").save(paths["8"])
    outputs = {}
    for name, path in paths.items():
        outputs[name] = tmp_path / f"out{name}.png"
        code, _ = run_cli(
            capsys, "edit", str(path), "x", "-o", str(outputs[name]), "--model", str(model_folder), "--steps", "1"
        )
        assert code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(outputs["16"])), np.asarray(Image.open(outputs["8"])))


def test_guidance_below_one_is_reported_by_the_cli(model_folder, photo, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        code = main(
            [
                "edit",
                str(photo),
                "x",
                "-o",
                str(tmp_path / "o.png"),
                "--model",
                str(model_folder),
                "--steps",
                "1",
                "--guidance",
                "0.5",
            ]
        )
    assert code == 0 and "guidance is off" in caplog.text


# ---------------------------------------------------------------------------------------------------- CLI: convert


def test_convert_official_missing_source_names_the_source_not_a_flag_it_lacks(tmp_path, capsys):
    code, err = run_cli(capsys, "convert-official", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert code == 2 and "SOURCE" in err and "does not exist" in err or "not an existing local folder" in err
    assert "--model" not in err


def test_convert_official_into_a_non_empty_folder_warns(tmp_path, capsys):
    source = save_dummy_official_folder(tmp_path / "official")
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    code, err = run_cli(capsys, "convert-official", str(source), "-o", str(output))
    assert code == 0 and "is not empty" in err
    assert (output / "model_index.json").is_file() and (output / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------------- CLI: data verbs


@pytest.fixture()
def data_files(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "folder.sqlite").mkdir()
    (folder / "text.sqlite").write_text("not a database")
    (folder / "corrupt.json").write_text('{"a": [1, 2')
    (folder / "empty.json").write_text("{}")
    (folder / "empty.jsonl").write_text("")
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    row = {"original": str(folder / "a.png"), "edited": str(folder / "a.png"), "instruction": "x"}
    (folder / "bad.jsonl").write_text(json.dumps(row) + "\n{not json\n")
    return {path.name: path for path in folder.iterdir()}


STORE_CASES = [
    ("folder.sqlite", "is a folder"),
    ("text.sqlite", "is not an SQLite annotation store"),
]


@pytest.mark.parametrize(("store", "message"), STORE_CASES)
@pytest.mark.parametrize("verb", ["annotate", "import-official", "export"])
def test_store_that_is_a_folder_or_not_a_database(data_files, capsys, monkeypatch, verb, store, message):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    store_path = str(data_files[store])
    argv = {
        "annotate": ["annotate", "--input", str(data_files["empty.jsonl"]), "--store", store_path, "--dry-run"],
        "import-official": ["import-official", str(data_files["empty.json"]), "--store", store_path],
        "export": [
            "export",
            "--store",
            store_path,
            "--format",
            "jsonl",
            "-o",
            str(data_files["a.png"].parent / "o.jsonl"),
        ],
    }[verb]
    code, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_jsonl_line_is_reported_with_file_and_line(data_files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    argv = ["annotate", "--input", str(data_files["bad.jsonl"]), "--store", str(tmp_path / "s.sqlite"), "--dry-run"]
    code, err = run_cli(capsys, *argv)
    assert code == 2 and "bad.jsonl:2: not valid JSON" in err and "Traceback" not in err


def test_corrupt_rewards_json_names_the_file(data_files, capsys, tmp_path):
    code, err = run_cli(
        capsys, "import-official", str(data_files["corrupt.json"]), "--store", str(tmp_path / "s.sqlite")
    )
    assert code == 2 and "corrupt.json is not valid JSON" in err


def test_empty_inputs_warn(data_files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    code, err = run_cli(
        capsys,
        "annotate",
        "--input",
        str(data_files["empty.jsonl"]),
        "--store",
        str(tmp_path / "a.sqlite"),
        "--dry-run",
    )
    assert code == 0 and "holds no triplets" in err
    code, err = run_cli(capsys, "import-official", str(data_files["empty.json"]), "--store", str(tmp_path / "b.sqlite"))
    assert code == 0 and "holds no items; nothing was imported" in err
    code, err = run_cli(
        capsys, "export", "--store", str(tmp_path / "b.sqlite"), "--format", "jsonl", "-o", str(tmp_path / "o.jsonl")
    )
    assert code == 0 and "holds no exportable item" in err


def test_parquet_export_without_the_data_extra(data_files, capsys, monkeypatch, tmp_path):
    run_cli(capsys, "import-official", str(data_files["empty.json"]), "--store", str(tmp_path / "b.sqlite"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    code, err = run_cli(
        capsys,
        "export",
        "--store",
        str(tmp_path / "b.sqlite"),
        "--format",
        "parquet",
        "-o",
        str(tmp_path / "o.parquet"),
    )
    assert code == 2 and "pip install 'reward-edit-pipeline[data]'" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- train


@cuda_missing
def test_train_default_fp16_on_cpu_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    code, err = run_cli(
        capsys, "train", "--stage", "1", "--pretrained_model_name_or_path", "base", "--train_data_dir", str(data)
    )
    assert code == 2 and "--mixed_precision fp16 needs a GPU; on the CPU use --mixed_precision no (or bf16)" in err
