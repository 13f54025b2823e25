"""Node-contract tier: every node follows the pack's contract, and every shipped workflow is valid
against ComfyUI 0.8.0's own node definitions (reference snapshot) plus the pack's."""

import inspect
import json
import sys

import pytest

from pack_paths import PACK_ROOT

sys.path.insert(0, str(PACK_ROOT / "scripts"))
import build_workflows  # noqa: E402

import reelsmith  # noqa: E402

WORKFLOWS = sorted((PACK_ROOT / "workflows").glob("*.json"))
MODEL_FILE_INPUTS = {"diffusion_model", "diffusion_model_low_noise", "text_encoder", "vae", "model", "lora_name",
                     "checkpoint", "upscaler"}
VENDOR_FOLDERS = ("HunyuanVideo-Avatar",)  # models/<folder>/ as `hf download --local-dir` leaves a vendor repo
OBJECT_INFO = build_workflows.combined_object_info()


def test_pack_exports_nodes_and_web_directory():
    assert reelsmith.NODE_CLASS_MAPPINGS, "no nodes exported"
    assert set(reelsmith.NODE_CLASS_MAPPINGS) == set(reelsmith.NODE_DISPLAY_NAME_MAPPINGS)
    assert (PACK_ROOT / reelsmith.WEB_DIRECTORY).is_dir()


@pytest.mark.parametrize("node_id", sorted(reelsmith.NODE_CLASS_MAPPINGS))
def test_node_contract(node_id):
    cls = reelsmith.NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("Reelsmith")
    assert reelsmith.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("Reelsmith ")
    assert cls.CATEGORY.startswith("Reelsmith/")
    assert len(cls.DESCRIPTION) > 40
    assert callable(getattr(cls(), cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    inputs = cls.INPUT_TYPES()
    for section in inputs.values():
        for name, spec in section.items():
            assert len(spec) == 2 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
            kind = spec[0]
            if isinstance(kind, (list, tuple)):
                default = spec[1].get("default")
                assert default is None or default in kind, f"{node_id}.{name}: default {default!r} not an option"
            elif kind in ("INT", "FLOAT"):
                assert spec[1]["min"] <= spec[1]["default"] <= spec[1]["max"]


def test_core_nodes_do_not_collide():
    core = json.loads(build_workflows.REFERENCE_OBJECT_INFO.read_text())
    assert not set(reelsmith.NODE_CLASS_MAPPINGS) & set(core)


def test_workflows_are_generated_and_in_sync():
    assert len(WORKFLOWS) >= 4
    assert build_workflows.main(["--check"]) == 0


def _check_api_workflow(api: dict, model_names: set[str], where: str):
    for node_id, node in api.items():
        info = OBJECT_INFO.get(node["class_type"])
        assert info is not None, f"{where}: node {node_id} has unknown type {node['class_type']}"
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name in info["input"].get("required", {}):
            assert name in node["inputs"], f"{where}: {node['class_type']} is missing required input '{name}'"
        for name, value in node["inputs"].items():
            assert name in declared, f"{where}: {node['class_type']} has no input '{name}'"
            kind, options = declared[name][0], declared[name][1] if len(declared[name]) > 1 else {}
            if isinstance(value, list):  # a link: [source node, output slot]
                source = api[value[0]]
                out_type = OBJECT_INFO[source["class_type"]]["output"][value[1]]
                expected = kind if isinstance(kind, str) else "COMBO"
                assert out_type == expected, f"{where}: {name} gets {out_type}, needs {expected}"
            elif isinstance(kind, list) or kind == "COMBO":
                choices = kind if isinstance(kind, list) else options.get("options", [])
                if options.get("image_upload") or options.get("audio_upload"):
                    continue  # lists the server's input folder; a workflow names the file its user uploads
                if name in MODEL_FILE_INPUTS and node["class_type"].startswith("Reelsmith"):
                    assert value in model_names or value in ("none", "single files (pick below)"), \
                        f"{where}: {name}={value!r} is not in the workflow's model list"
                else:
                    assert value in choices, f"{where}: {node['class_type']}.{name}={value!r} not in {choices}"
            elif kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {name}={value}"
        cls = reelsmith.NODE_CLASS_MAPPINGS.get(node["class_type"])
        if cls is not None and hasattr(cls, "VALIDATE_INPUTS"):  # as ComfyUI calls it: the inputs it names
            wanted = inspect.signature(cls.VALIDATE_INPUTS).parameters
            assert cls.VALIDATE_INPUTS(**{k: v for k, v in node["inputs"].items() if k in wanted}) is True


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_valid_in_both_formats(path):
    from comfy_cli.workflow_to_api import convert_ui_to_api

    ui = json.loads(path.read_text())
    api = json.loads((path.parent / "api" / path.name).read_text())
    assert (path.parent / f"{path.stem}.jpg").is_file(), "thumbnail missing"
    models = [m for node in ui["nodes"] for m in node.get("properties", {}).get("models", [])]
    assert models, "the loader lists no model files"
    for model in models:
        assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith(model["name"])
        assert model["directory"] in ("diffusion_models", "text_encoders", "vae", "loras", "checkpoints",
                                      "latent_upscale_models") + VENDOR_FOLDERS
    # a vendor folder loader names the folder its files go to
    names = {m["name"] for m in models} | {m["directory"] for m in models if m["directory"] in VENDOR_FOLDERS}
    _check_api_workflow(api, names, f"{path.name} (API)")
    converted = convert_ui_to_api(ui, OBJECT_INFO)
    strip = lambda wf: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in wf.items()}  # noqa: E731
    assert strip(converted) == strip(api)
