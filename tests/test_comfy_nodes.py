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

from reward_edit_pipeline.comfy_nodes import NODE_API, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from reward_edit_pipeline.comfy_nodes import runtime as comfy_runtime
from reward_edit_pipeline.comfy_nodes.core import (
    HUB_ID_CHOICE,
    PipelineCache,
    RewardCondition,
    check_comfy_image,
    comfy_image_to_pil,
    edit_images,
    judge_images,
    list_pipeline_folders,
    make_reward_condition,
    resolve_dtype,
    resolve_model_source,
    resolve_pipeline_folder,
)
from reward_edit_pipeline.comfy_nodes.specs import NODE_SPECS
from reward_edit_pipeline.comfy_nodes.v1 import v1_input_types

from reward_edit_pipeline.judge import FunctionJudge

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_IDS = ["RewardEditLoader", "RewardCondition", "RewardEdit", "RewardJudge"]


def comfy_image(batch: int = 1, height: int = 16, width: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipeline():
    from reward_edit_pipeline.testing import make_dummy_pipeline

    return make_dummy_pipeline(seed=0)


# ------------------------------------------------------------------------------------------------ registration
def test_mappings_register_exactly_the_four_nodes_with_display_names():
    assert list(NODE_CLASS_MAPPINGS) == NODE_IDS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_IDS)
    assert NODE_API == "v1"  # no comfy_api outside ComfyUI


def test_v1_shells_follow_the_specs_with_category_description_and_tooltips(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "folder_paths", _fake_folder_paths(tmp_path))
    for spec in NODE_SPECS:
        node = NODE_CLASS_MAPPINGS[spec.node_id]
        types_ = node.INPUT_TYPES()
        inputs = {**types_["required"], **types_.get("optional", {})}
        assert list(inputs) == [i.name for i in spec.inputs]
        assert all(entry[1]["tooltip"] for entry in inputs.values())
        assert node.CATEGORY == "reward_edit"
        assert node.DESCRIPTION == spec.description
        assert node.RETURN_TYPES == tuple(o.io_type for o in spec.outputs)
        assert callable(getattr(node(), node.FUNCTION))


def test_node_input_and_output_types_match_the_issue():
    types_ = {spec.node_id: spec for spec in NODE_SPECS}
    assert [o.io_type for o in types_["RewardEditLoader"].outputs] == ["REWARD_EDIT_PIPE"]
    assert [o.io_type for o in types_["RewardCondition"].outputs] == ["REWARD_CONDITION"]
    assert [o.io_type for o in types_["RewardEdit"].outputs] == ["IMAGE"]
    assert [o.io_type for o in types_["RewardJudge"].outputs] == ["FLOAT", "FLOAT", "FLOAT", "STRING"]
    assert [i.name for i in types_["RewardEdit"].inputs] == [
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
    assert [i.name for i in types_["RewardJudge"].inputs] == ["original", "edited", "instruction", "model", "base_url"]
    condition = v1_input_types(types_["RewardCondition"])
    for name in ("following", "preserving", "quality"):
        kind, options = condition["required"][name]
        assert (kind, options["min"], options["max"], options["step"], options["default"]) == ("FLOAT", 0, 5, 0.5, 5)
    assert condition["optional"]["failure_text"][1] == {
        "tooltip": condition["optional"]["failure_text"][1]["tooltip"],
        "default": "",
        "multiline": True,
    }


def test_v3_ids_are_unique_across_inputs_and_outputs():
    for spec in NODE_SPECS:
        ids = [i.name for i in spec.inputs] + [o.name for o in spec.outputs]
        assert len(ids) == len(set(ids)), spec.node_id


def test_judge_node_has_no_api_key_input():
    judge_inputs = [i.name for i in NODE_SPECS[3].inputs]
    assert not any("key" in name or "token" in name for name in judge_inputs)


# ------------------------------------------------------------------------------------------------ RewardCondition
def test_reward_condition_defaults_to_the_paper_no_failure_condition():
    node = NODE_CLASS_MAPPINGS["RewardCondition"]()
    (condition,) = node.condition(5.0, 5.0, 5.0)
    assert condition == RewardCondition(scores=(5.0, 5.0, 5.0), failure_text=None)
    assert make_reward_condition(5, 5, 5, "   ").failure_text is None


def test_reward_condition_keeps_scores_in_order_and_strips_failure_text():
    condition = make_reward_condition(1.5, 3.0, 4.5, "  the hat is still red; None; blurry \n")
    assert condition.scores == (1.5, 3.0, 4.5)
    assert condition.failure_text == "the hat is still red; None; blurry"


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
        (torch.zeros(1, 8, 8, 4), "3 \\(RGB\\) channels"),
        (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "float tensor"),
        (torch.full((1, 8, 8, 3), 1.5), "values must lie in \\[0, 1\\]"),
        (torch.zeros(0, 8, 8, 3), "empty"),
    ],
)
def test_bad_images_raise_errors_naming_the_input(image, message):
    with pytest.raises((TypeError, ValueError), match=message) as error:
        check_comfy_image(image, "original")
    assert "original" in str(error.value)


def test_image_sizes_must_be_multiples_of_the_vae_factor():
    with pytest.raises(ValueError, match=r"multiples of 8 .* 36x20"):
        check_comfy_image(torch.zeros(1, 20, 36, 3), "image", multiple_of=8)


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
        ({"instruction": "   "}, "instruction"),
        ({"steps": 0}, "steps"),
        ({"seed": -1}, "seed"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"reward_guidance_scale": 0.5}, "reward_guidance_scale"),
        ({"reward": (5, 5, 5)}, "RewardCondition"),
        ({"image": torch.zeros(1, 15, 16, 3)}, "multiples of 2"),
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


def test_judge_node_reads_the_api_key_from_the_environment_only(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    judge = comfy_runtime.make_judge("gpt-4o", "http://127.0.0.1:9/v1")
    assert judge.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ValueError, match="base_url"):
        comfy_runtime.make_judge("gpt-4o", "file:///etc/passwd")
    with pytest.raises(ValueError, match="model"):
        comfy_runtime.make_judge(" ", "")


def test_v1_judge_shell_returns_ui_text_and_the_four_outputs(monkeypatch):
    judge = _recording_judge({"following": 3.0, "preserving": 4.0, "quality": 5.0})
    monkeypatch.setattr(comfy_runtime, "make_judge", lambda model, base_url: judge)
    output = NODE_CLASS_MAPPINGS["RewardJudge"]().judge(comfy_image(), comfy_image(), "x", "gpt-4o", "")
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
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float64", "cpu")


def test_pipeline_cache_loads_once_and_evicts_the_least_recently_used():
    cache = PipelineCache(capacity=1)
    evicted = []
    first = cache.get_or_load("a", lambda: object(), evicted.append)
    assert cache.get_or_load("a", lambda: pytest.fail("reloaded"), evicted.append) is first
    second = cache.get_or_load("b", lambda: object(), evicted.append)
    assert evicted == [first] and second is not first and cache.loads == 2 and len(cache) == 1


# Fakes of the three ComfyUI modules the runtime bridge uses, recording what the nodes ask of ComfyUI.
def _fake_folder_paths(root: Path) -> types.ModuleType:
    module = types.ModuleType("folder_paths")
    module.get_folder_paths = lambda name: [str(root)] if name == "diffusers" else []
    return module


class _FakeComfy:
    def __init__(self) -> None:
        self.events: list = []
        self.interrupted = False
        self.device, self.fp16 = torch.device("cpu"), False
        self.current_loaded_models: list = []
        fake = self

        class ProgressBar:
            def __init__(self, total):
                fake.events.append(("bar", total))

            def update_absolute(self, value, total=None, preview=None):
                fake.events.append(("progress", value, total))

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0):
                self.model, self.load_device, self.offload_device = model, load_device, offload_device

        class Loaded:
            def __init__(self, model):
                self.model = model

            def model_unload(self):
                fake.events.append(("unload", self.model))

        def load_models_gpu(models, memory_required=0, force_full_load=False):
            fake.events.append(("load_models_gpu", models, force_full_load))
            fake.current_loaded_models.extend(Loaded(m) for m in models)

        def throw_exception_if_processing_interrupted():
            if fake.interrupted:
                raise KeyboardInterrupt("interrupted")

        self.model_management = types.SimpleNamespace(
            get_torch_device=lambda: fake.device,
            should_use_fp16=lambda device=None: fake.fp16,
            unet_offload_device=lambda: torch.device("cpu"),
            current_loaded_models=self.current_loaded_models,
            load_models_gpu=load_models_gpu,
            throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted,
            soft_empty_cache=lambda: fake.events.append(("soft_empty_cache",)),
        )
        self.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
        self.model_patcher = types.SimpleNamespace(ModelPatcher=ModelPatcher)

    def install(self, monkeypatch, root: Path) -> None:
        comfy = types.ModuleType("comfy")
        comfy.model_management, comfy.utils, comfy.model_patcher = self.model_management, self.utils, self.model_patcher
        monkeypatch.setitem(sys.modules, "comfy", comfy)
        for name in ("model_management", "utils", "model_patcher"):
            monkeypatch.setitem(sys.modules, f"comfy.{name}", getattr(comfy, name))
        monkeypatch.setitem(sys.modules, "folder_paths", _fake_folder_paths(root))


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path, pipeline):
    import reward_edit_pipeline

    fake = _FakeComfy()
    root = tmp_path / "diffusers"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "model_index.json").write_text("{}")
    fake.install(monkeypatch, root)
    loads = []

    def load_pipeline(source, torch_dtype=None, device=None, execution_device=None):
        loads.append((source, torch_dtype))
        return pipeline

    monkeypatch.setattr(reward_edit_pipeline, "load_pipeline", load_pipeline, raising=False)
    monkeypatch.setattr(comfy_runtime, "PIPELINE_CACHE", PipelineCache(capacity=1))
    fake.loads = loads
    fake.root = root
    return fake


def test_loader_node_caches_the_pipeline_and_hands_it_to_model_management(fake_comfy):
    loader = NODE_CLASS_MAPPINGS["RewardEditLoader"]()
    assert loader.INPUT_TYPES()["required"]["model"][0] == ["tiny", HUB_ID_CHOICE]
    (pipe,) = loader.load("tiny", "", "auto", "auto")
    (again,) = loader.load("tiny", "", "auto", "auto")
    assert again is pipe and fake_comfy.loads == [(str(fake_comfy.root / "tiny"), torch.float32)]
    assert set(pipe.patcher.model) == {"unet", "vae", "text_encoder"}
    assert pipe.patcher.model["unet"] is pipe.pipeline.unet
    NODE_CLASS_MAPPINGS["RewardEdit"]().edit(
        pipe, comfy_image(), "x", make_reward_condition(5, 5, 5), 1, 7.5, 1.5, 0, 1
    )
    (cpu_pipe,) = loader.load("tiny", "", "cpu", "fp32")  # another key: the first pipe leaves the cache
    assert cpu_pipe.patcher is None and len(fake_comfy.loads) == 2
    assert ("unload", pipe.patcher) in fake_comfy.events and ("soft_empty_cache",) in fake_comfy.events
    # a graph with two loaders still edits with the evicted pipe: model management loads it again
    (edited,) = NODE_CLASS_MAPPINGS["RewardEdit"]().edit(
        pipe, comfy_image(), "x", make_reward_condition(5, 5, 5), 1, 7.5, 1.5, 0, 1.0
    )
    assert edited.shape == (1, 16, 24, 3)
    assert [e for e in fake_comfy.events if e[0] == "load_models_gpu"][-1][1] == [pipe.patcher]


def test_loader_node_rejects_unknown_folders_and_devices(fake_comfy):
    loader = NODE_CLASS_MAPPINGS["RewardEditLoader"]()
    with pytest.raises(ValueError, match="'missing' is not a pipeline folder .* available: \\['tiny'\\]"):
        loader.load("missing", "", "auto", "auto")
    with pytest.raises(ValueError, match="`device`"):
        loader.load("tiny", "", "cuda:7", "auto")
    assert fake_comfy.loads == []


def test_edit_node_loads_through_model_management_and_drives_the_progress_bar(fake_comfy):
    (pipe,) = NODE_CLASS_MAPPINGS["RewardEditLoader"]().load("tiny", "", "auto", "auto")
    (reward,) = NODE_CLASS_MAPPINGS["RewardCondition"]().condition(5, 5, 5, "")
    node = NODE_CLASS_MAPPINGS["RewardEdit"]()
    (edited,) = node.edit(pipe, comfy_image(batch=2), "x", reward, 2, 7.5, 1.5, 0, 1.0)
    assert edited.shape == (2, 16, 24, 3)
    assert fake_comfy.events[0] == ("load_models_gpu", [pipe.patcher], True)  # no partial (low-VRAM) loading
    assert ("bar", 4) in fake_comfy.events
    assert [e[1] for e in fake_comfy.events if e[0] == "progress"][:4] == [1, 2, 3, 4]


def test_edit_node_stops_when_comfyui_is_interrupted(fake_comfy):
    (pipe,) = NODE_CLASS_MAPPINGS["RewardEditLoader"]().load("tiny", "", "cpu", "auto")
    fake_comfy.interrupted = True
    with pytest.raises(KeyboardInterrupt):
        NODE_CLASS_MAPPINGS["RewardEdit"]().edit(
            pipe, comfy_image(), "x", make_reward_condition(5, 5, 5), 50, 7.5, 1.5, 0, 1.0
        )
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
        timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )


@pytest.mark.slow
def test_a_plain_clone_maps_the_library_without_putting_its_root_on_sys_path():
    completed = _run_isolated(
        f"""
        pack = load_like_comfyui('reward-edit-pipeline', {str(REPO_ROOT)!r})
        assert list(pack.NODE_CLASS_MAPPINGS) == {NODE_IDS!r}, pack.NODE_CLASS_MAPPINGS
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
def _widget_values(spec, api_inputs: dict) -> list:
    values = []
    for item in spec.inputs:
        if item.io_type in ("IMAGE", "REWARD_EDIT_PIPE", "REWARD_CONDITION"):
            continue
        values.append(api_inputs[item.name])
        if item.control_after_generate:
            values.append("fixed")
    return values


@pytest.mark.parametrize("name", ["reward_edit", "reward_edit_judge"])
def test_ui_and_api_example_workflows_agree_with_each_other_and_the_specs(name):
    ui = json.loads((REPO_ROOT / "example_workflows" / f"{name}.json").read_text())
    api = json.loads((REPO_ROOT / "example_workflows" / "api" / f"{name}.json").read_text())
    specs = {spec.node_id: spec for spec in NODE_SPECS}
    assert {str(node["id"]): node["type"] for node in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    ui_links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        api_inputs = api[str(node["id"])]["inputs"]
        if node["type"] in specs:
            spec = specs[node["type"]]
            assert set(api_inputs) == {i.name for i in spec.inputs}
            assert node["widgets_values"] == _widget_values(spec, api_inputs)
        for ui_input in node.get("inputs", []):
            _, source, slot, target, _, _ = ui_links[ui_input["link"]]
            assert api_inputs[ui_input["name"]] == [str(source), slot] and target == node["id"]
    assert "key" not in json.dumps(api).lower()


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
        with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
            comfy_runtime.judge(comfy_image(), comfy_image(), "x", "gpt-4o", server.base_url)
        assert server.chat_count == 0
        monkeypatch.setenv("OPENAI_API_KEY", "sk-unit-test")
        outputs = comfy_runtime.judge(comfy_image(), comfy_image(), "add a hat", "gpt-4o", server.base_url)
        assert server.chat_count == 3
        assert all(0.0 <= score <= 5.0 for score in outputs.as_tuple()[:3])
        assert len(outputs.feedback.split("; ")) == 3


def test_loader_node_follows_comfyuis_fp16_verdict_and_loads_hub_ids(fake_comfy):
    fake_comfy.device, fake_comfy.fp16 = torch.device("meta"), True  # an accelerator where ComfyUI allows fp16
    (pipe,) = NODE_CLASS_MAPPINGS["RewardEditLoader"]().load(HUB_ID_CHOICE, "owner/reward-model", "auto", "auto")
    assert fake_comfy.loads == [("owner/reward-model", torch.float16)]
    assert pipe.patcher.load_device == torch.device("meta") and pipe.source == "owner/reward-model"
    fake_comfy.fp16 = False
    NODE_CLASS_MAPPINGS["RewardEditLoader"]().load(HUB_ID_CHOICE, "owner/reward-model", "auto", "auto")
    assert fake_comfy.loads[-1] == ("owner/reward-model", torch.float32)


def test_an_unusable_v3_api_falls_back_to_the_v1_nodes_with_a_warning(monkeypatch, caplog):
    import reward_edit_pipeline.comfy_nodes as pack

    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", types.ModuleType("comfy_api.latest"))  # no `io` in it
    monkeypatch.delitem(sys.modules, "reward_edit_pipeline.comfy_nodes.v3", raising=False)
    with caplog.at_level("WARNING"):
        classes, api, entrypoint = pack._select_node_classes()
    assert api == "v1" and entrypoint is None and [c.__name__ for c in classes] == NODE_IDS
    assert "V3 node API unusable" in caplog.text
