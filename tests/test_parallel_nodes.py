"""The loader's several-GPU inputs: optional with one-GPU defaults (old workflows keep working), and settable
from scripts/render.py with --set "Wan Model Loader.gpus=2"."""

import json
import sys

from pack_paths import PACK_ROOT

sys.path.insert(0, str(PACK_ROOT / "scripts"))

import build_workflows  # noqa: E402
import comfyui_client  # noqa: E402
from reelsmith.nodes.wan import ReelsmithWanModelLoader  # noqa: E402


def test_gpus_and_parallel_are_optional_with_one_gpu_defaults():
    inputs = ReelsmithWanModelLoader.INPUT_TYPES()
    assert "gpus" not in inputs["required"] and "parallel" not in inputs["required"]
    gpus, parallel = inputs["optional"]["gpus"], inputs["optional"]["parallel"]
    assert gpus[0] == ["1", "2", "4", "8", "all"] and gpus[1]["default"] == "1" and gpus[1]["tooltip"]
    assert parallel[0] == ["auto", "sequence", "cfg", "sequence+cfg"] and parallel[1]["default"] == "auto"
    assert parallel[1]["tooltip"]


def test_render_set_selects_two_gpus():
    api = json.loads((PACK_ROOT / "workflows" / "api" / "wan22_t2v_480p.json").read_text())
    object_info = {"ReelsmithWanModelLoader": build_workflows.object_info_of(ReelsmithWanModelLoader)}
    changes = comfyui_client.apply_sets(api, ["Wan Model Loader.gpus=2", "Wan Model Loader.parallel=cfg"],
                                        object_info)
    loader = next(node for node in api.values() if node["class_type"] == "ReelsmithWanModelLoader")
    assert loader["inputs"]["gpus"] == "2"  # the combo's string, not the number 2
    assert loader["inputs"]["parallel"] == "cfg"
    assert len(changes) == 2


def test_loader_passes_the_choices_to_the_engine(monkeypatch):
    seen = {}
    monkeypatch.setattr(ReelsmithWanModelLoader, "resolve_files", staticmethod(lambda *a, **k: "files"))
    monkeypatch.setattr("reelsmith.nodes.wan.load_wan_model", lambda files, options: seen.setdefault("o", options))
    node = ReelsmithWanModelLoader()
    node.load("m", "d", "none", "none", "v", "bf16", "auto", "off", "none")
    options = seen.pop("o")
    assert (options.gpus, options.parallel) == ("1", "auto")
    node.load("m", "d", "none", "none", "v", "bf16", "auto", "off", "none", gpus="4", parallel="sequence+cfg")
    options = seen.pop("o")
    assert (options.gpus, options.parallel) == ("4", "sequence+cfg")
