"""One table of cases, run through every front end, with one expected outcome per case.

`FRONT_END_CASES` describes each case without naming a front end: the input image, the reward scores, the failure
text, and what must come out (an output size, the very same image as another case, or an error message). Every
function in `FRONT_ENDS` runs a case its own way (Python API, `reward-edit edit`; the ComfyUI node adds its own
runner here) and returns the edited image as a uint8 array or raises `FrontEndError` with the message the user sees.
The test asserts the same outcome everywhere, and the same pixels from every front end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reward_edit_pipeline.cli import main
from reward_edit_pipeline.testing import save_dummy_pipeline

INSTRUCTION = "make it blue"
SEED = 42
STEPS = 1


class FrontEndError(Exception):
    """What a front end told the user instead of an image (exception message, or the CLI's stderr)."""


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


def _rgb() -> Image.Image:
    return Image.fromarray(_photo(13, 9))


def _opaque_rgba() -> Image.Image:
    return _rgb().convert("RGBA")


def _grey() -> Image.Image:
    return Image.fromarray(_photo(13, 9)[..., 0]).convert("RGB")


def _sixteen_bit_grey() -> Image.Image:
    return Image.fromarray(_photo(13, 9)[..., 0].astype(np.uint16) * 257)  # == the 8-bit grey image


def _photo_451x300() -> Image.Image:
    return Image.fromarray(_photo(451, 300, seed=3))


@dataclass(frozen=True)
class FrontEndCase:
    """One input and its expected outcome.

    Attributes:
        name: the case id.
        image: builds the input image (the CLI saves it losslessly as `suffix` first).
        scores: reward scores as the user types them (a "F,P,Q" text).
        failure_text: the failure text (None = not given).
        size: expected output (width, height).
        same_as: name of a case whose output must be pixel-identical.
        error: message fragment every front end must show instead of an image.
    """

    name: str
    image: Callable[[], Image.Image]
    scores: str = "5,5,5"
    failure_text: str | None = None
    size: tuple[int, int] | None = None
    same_as: str | None = None
    error: str | None = None
    suffix: str = ".png"
    marks: tuple = field(default=())


FRONT_END_CASES: list[FrontEndCase] = [
    FrontEndCase("odd-size", _rgb, size=(13, 9)),
    FrontEndCase("empty-failure-text", _rgb, failure_text="", size=(13, 9), same_as="odd-size"),
    FrontEndCase("blank-failure-text", _rgb, failure_text="   ", size=(13, 9), same_as="odd-size"),
    FrontEndCase("failure-text", _rgb, failure_text="the sky is unchanged", size=(13, 9)),
    FrontEndCase("scores-with-spaces", _rgb, scores="5, 5, 5", size=(13, 9), same_as="odd-size"),
    FrontEndCase("opaque-rgba", _opaque_rgba, size=(13, 9), same_as="odd-size"),
    FrontEndCase("grey", _grey, size=(13, 9)),
    FrontEndCase("sixteen-bit-grey", _sixteen_bit_grey, size=(13, 9), same_as="grey"),
    FrontEndCase(
        "score-out-of-range", _rgb, scores="5,6,5", error="preserving score must be a finite number in [0, 5]"
    ),
    FrontEndCase("score-not-a-number", _rgb, scores="5,high,5", error="three comma-separated numbers in [0, 5]"),
    FrontEndCase("photo-451x300", _photo_451x300, size=(451, 300), marks=(pytest.mark.slow,)),
]
CASES_BY_NAME = {case.name: case for case in FRONT_END_CASES}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return save_dummy_pipeline(tmp_path_factory.mktemp("front_end_model"))


@pytest.fixture(scope="module")
def python_pipeline(model_folder):
    from reward_edit_pipeline import load_pipeline

    pipe = load_pipeline(str(model_folder), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edit_with_python(case: FrontEndCase, context: dict) -> np.ndarray:
    from reward_edit_pipeline.devices import make_generator

    pipe = context["python_pipeline"]
    try:
        result = pipe(
            INSTRUCTION,
            case.image(),
            reward_scores=case.scores,
            failure_text=case.failure_text,
            num_inference_steps=STEPS,
            generator=make_generator(SEED),
        )
    except (ValueError, TypeError) as error:
        raise FrontEndError(str(error)) from error
    return np.asarray(result.images[0])


def edit_with_cli(case: FrontEndCase, context: dict) -> np.ndarray:
    tmp_path: Path = context["tmp_path"]
    source, output = tmp_path / f"{case.name}{case.suffix}", tmp_path / f"{case.name}-edited.png"
    case.image().save(source)
    argv = ["edit", str(source), INSTRUCTION, "-o", str(output), "--model", str(context["model_folder"])]
    argv += ["--steps", str(STEPS), "--seed", str(SEED), "--max-side", "0", f"--scores={case.scores}"]
    if case.failure_text is not None:
        argv.append(f"--failure-text={case.failure_text}")
    capsys = context["capsys"]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    if code != 0:
        assert code == 2 and "Traceback" not in err, err  # bad input: exit status 2, one clear line
        raise FrontEndError(err)
    return np.asarray(Image.open(output).convert("RGB"))


#: front end name -> runner; the ComfyUI pack adds "comfyui" (its RewardEdit node logic on the same cases)
FRONT_ENDS: dict[str, Callable[[FrontEndCase, dict], np.ndarray]] = {
    "python": edit_with_python,
    "cli": edit_with_cli,
}


@pytest.fixture(scope="module")
def outputs() -> dict[tuple[str, str], np.ndarray]:
    """(front end, case name) -> edited image, shared so `same_as` compares with the other case's result."""
    return {}


def _run(front_end: str, case: FrontEndCase, context: dict, outputs: dict) -> np.ndarray:
    key = (front_end, case.name)
    if key not in outputs:
        outputs[key] = FRONT_ENDS[front_end](case, context)
    return outputs[key]


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
@pytest.mark.parametrize("case", [pytest.param(case, id=case.name, marks=case.marks) for case in FRONT_END_CASES])
def test_every_front_end_gives_the_same_outcome(
    case, front_end, python_pipeline, model_folder, tmp_path, capsys, outputs
):
    context = {"python_pipeline": python_pipeline, "model_folder": model_folder, "tmp_path": tmp_path, "capsys": capsys}
    if case.error is not None:
        with pytest.raises(FrontEndError) as info:
            _run(front_end, case, context, outputs)
        assert case.error in str(info.value)
        return
    edited = _run(front_end, case, context, outputs)
    assert edited.dtype == np.uint8 and edited.shape == (case.size[1], case.size[0], 3)
    if case.same_as is not None:
        np.testing.assert_array_equal(edited, _run(front_end, CASES_BY_NAME[case.same_as], context, outputs))
    if front_end != "python":  # the same pixels as the Python API
        np.testing.assert_array_equal(edited, _run("python", case, context, outputs))
