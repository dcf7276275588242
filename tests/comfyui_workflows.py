"""Check a workflow (UI format + its API-format twin) against a ComfyUI server's ``/object_info``: every node type
exists, every widget value is one the input accepts (type, range, choices), the UI's ``widgets_values`` follow the
node's widget order, and every link joins an output to an input of the same type.

Pure functions (no server): `test_comfyui_e2e.py` feeds them the live ``/object_info`` of ComfyUI 0.3.75,
`test_comfy_nodes.py` checks that they do report broken workflows.
"""

from __future__ import annotations

from typing import Any

# Nodes the ComfyUI frontend draws but the server does not know (never part of an API-format prompt).
FRONTEND_ONLY_NODES = frozenset({"Note", "MarkdownNote"})
WIDGET_KINDS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


def _inputs(info: dict[str, Any]) -> tuple[dict[str, list], list[str], set[str]]:
    """The node's input specs by name, their declared order (required, then optional), and the required names."""
    declared = info["input"]
    specs = {**declared.get("required", {}), **declared.get("optional", {})}
    order = info.get("input_order")
    names = [*order.get("required", []), *order.get("optional", [])] if order else list(specs)
    return specs, names, set(declared.get("required", {}))


def _kind_and_options(spec: list) -> tuple[Any, dict[str, Any]]:
    return spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})


def is_widget(spec: list) -> bool:
    kind, _ = _kind_and_options(spec)
    return isinstance(kind, list) or kind in WIDGET_KINDS


def socket_type(spec: list) -> str:
    kind, _ = _kind_and_options(spec)
    return kind


def value_problem(spec: list, value: Any) -> str | None:
    """Why `value` is not accepted by the input `spec` (``None`` when it is)."""
    kind, options = _kind_and_options(spec)
    choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
    if choices is not None:
        return None if value in choices else f"{value!r} is not one of {choices[:12]}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if kind in ("INT", "FLOAT"):
        numeric = (int,) if kind == "INT" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"{value!r} is not {kind}"
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{value!r} is outside [{low}, {high}]"
        return None
    return f"{value!r} given for the socket input of type {kind}"


def expected_widgets_values(info: dict[str, Any], api_inputs: dict[str, Any]) -> list[Any]:
    """The ``widgets_values`` the frontend stores for a node with these API inputs: widget inputs in declared order,
    an extra entry after a ``control_after_generate`` widget (written as ``None``: any control value is accepted)
    and after an ``image_upload`` combo (the upload button's ``"image"``)."""
    specs, names, _ = _inputs(info)
    values: list[Any] = []
    for name in names:
        if not is_widget(specs[name]) or name not in api_inputs:
            continue
        values.append(api_inputs[name])
        _, options = _kind_and_options(specs[name])
        if options.get("control_after_generate"):
            values.append(None)
        if options.get("image_upload"):
            values.append("image")
    return values


def workflow_problems(ui: dict[str, Any], api: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Every disagreement between the UI workflow, its API twin and the server's node declarations."""
    problems: list[str] = []
    nodes = {str(node["id"]): node for node in ui["nodes"] if node["type"] not in FRONTEND_ONLY_NODES}
    if {k: n["type"] for k, n in nodes.items()} != {k: v["class_type"] for k, v in api.items()}:
        problems.append("the UI and API workflows hold different nodes")
        return problems
    unknown = sorted({node["type"] for node in nodes.values()} - set(object_info))
    if unknown:
        return [f"node types this ComfyUI does not have: {unknown}"]

    def output_type(source_id: str, slot: int) -> str | None:
        outputs = object_info[api[source_id]["class_type"]]["output"] if source_id in api else []
        return outputs[slot] if 0 <= slot < len(outputs) else None

    for node_id, node in nodes.items():
        where = f"node {node_id} ({node['type']})"
        info = object_info[node["type"]]
        specs, _, required = _inputs(info)
        api_inputs = api[node_id]["inputs"]
        if set(api_inputs) - set(specs):
            problems.append(f"{where}: inputs it does not declare: {sorted(set(api_inputs) - set(specs))}")
        if required - set(api_inputs):
            problems.append(f"{where}: required inputs missing: {sorted(required - set(api_inputs))}")
        for name, value in api_inputs.items():
            if name not in specs:
                continue
            if is_widget(specs[name]):
                problem = value_problem(specs[name], value)
                if problem:
                    problems.append(f"{where} input {name!r}: {problem}")
            elif not (isinstance(value, list) and len(value) == 2 and str(value[0]) in api):
                problems.append(f"{where} input {name!r}: a socket of type {socket_type(specs[name])} needs a link")
            elif output_type(str(value[0]), value[1]) != socket_type(specs[name]):
                problems.append(
                    f"{where} input {name!r} ({socket_type(specs[name])}) is linked to an output of type "
                    f"{output_type(str(value[0]), value[1])}"
                )
        expected = expected_widgets_values(info, api_inputs)
        stored = node.get("widgets_values", [])
        if len(stored) != len(expected) or any(
            (e is None and s not in SEED_CONTROL_VALUES) or (e is not None and s != e) for e, s in zip(expected, stored)
        ):
            problems.append(f"{where}: widgets_values {stored} but the declared widgets give {expected}")
        for slot, output in enumerate(node.get("outputs", [])):
            if output["type"] != output_type(node_id, slot):
                problems.append(f"{where} output {slot} is {output['type']}, declared {output_type(node_id, slot)}")
    for link_id, source, source_slot, target, target_slot, kind in ui["links"]:
        source, target = str(source), str(target)
        target_inputs = nodes[target].get("inputs", []) if target in nodes else []
        if not 0 <= target_slot < len(target_inputs):
            problems.append(f"link {link_id}: node {target} has no input slot {target_slot}")
            continue
        name = target_inputs[target_slot]["name"]
        spec = specs_of(object_info, nodes[target]["type"]).get(name)
        declared = socket_type(spec) if spec is not None else None
        if not (kind == output_type(source, source_slot) == declared == target_inputs[target_slot]["type"]):
            problems.append(
                f"link {link_id}: {kind} from node {source} slot {source_slot} ({output_type(source, source_slot)}) "
                f"to node {target} input {name!r} ({declared})"
            )
        if api[target]["inputs"].get(name) != [source, source_slot]:
            problems.append(f"link {link_id}: the API workflow links node {target} input {name!r} elsewhere")
    return problems


def specs_of(object_info: dict[str, Any], node_type: str) -> dict[str, list]:
    return _inputs(object_info[node_type])[0]
