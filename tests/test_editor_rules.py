"""The editor's snapping rules and presets (GET /reelsmith/editor/rules) are the engine's validation rules:
these tests fail when the published table, the node definitions or the JS drift from what validation accepts."""

import json
import re
import shutil
import subprocess

import pytest

from pack_paths import PACK_ROOT
from reelsmith import NODE_CLASS_MAPPINGS
from reelsmith.engine.models.wan_variants import WAN_VARIANTS
from reelsmith.engine.pipelines import avatar_validation
from reelsmith.engine.pipelines.avatar_validation import avatar_input_errors
from reelsmith.engine.pipelines.ltx_validation import ltx_size_errors
from reelsmith.engine.pipelines.wan_validation import wan_size_errors
from reelsmith.nodes import routes

RULES = routes.sampler_rules()
JS = (PACK_ROOT / "js" / "reelsmith.js").read_text()
AVATAR = "ReelsmithHunyuanAvatarSampler"


def _validation(name: str, multiple: int):
    """(size problems, frame problems) functions of the engine's validation for a sampler and a size step."""
    family = RULES["samplers"][name]["family"]
    if family == "wan":
        return (lambda w, h: wan_size_errors(w, h, 81, multiple),
                lambda f: [p for p in wan_size_errors(832, 480, f, multiple) if p.startswith("frames")])
    if family == "ltx":
        return (lambda w, h: ltx_size_errors(w, h, 97),
                lambda f: [p for p in ltx_size_errors(768, 512, f) if p.startswith("frames")])
    if family == "avatar":  # one square size (image_size); the length comes from the audio
        return (lambda w, h: avatar_input_errors(w, "25") + ([] if w == h else [f"{w}x{h} is not square"]), None)
    raise AssertionError(f"{family}: a sampler family without engine validation")


def _multiples(entry) -> list[int]:
    return sorted({entry["size"]["multiple"], *entry["size"]["by_variant"].values()})


def test_rules_are_json_and_cover_every_sampler():
    json.dumps(RULES)
    sizeable = {name for name, cls in NODE_CLASS_MAPPINGS.items()
                if {"width", "height", "frames"} <= set(cls.INPUT_TYPES().get("required", {}))}
    assert sizeable == {"ReelsmithWan22TextToVideo", "ReelsmithWan22ImageToVideo", "ReelsmithLTXTextToVideo",
                        "ReelsmithLTXImageToVideo", "ReelsmithLTXKeyframes"}
    assert sizeable <= set(RULES["samplers"]), "a sampler with size widgets has no snapping rule"
    assert set(RULES["loaders"]) == {"ReelsmithWanModelLoader", "ReelsmithLTXModelLoader",
                                     "ReelsmithHunyuanAvatarLoader"}


@pytest.mark.parametrize("name", sorted(RULES["samplers"]))
def test_model_type_leads_from_the_sampler_to_a_loader(name):
    """The JS walks a sampler's input of the rule's model type up to a loader: that input and that loader exist."""
    rule = RULES["samplers"][name]
    inputs = NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]
    assert any(spec[0] == rule["model_type"] for spec in inputs.values()), rule["model_type"]
    assert any(rule["model_type"] in NODE_CLASS_MAPPINGS[loader].RETURN_TYPES and info["family"] == rule["family"]
               for loader, info in RULES["loaders"].items())


def test_avatar_sampler_rule_is_ready_for_its_node():
    avatar = RULES["samplers"]["ReelsmithHunyuanAvatarSampler"]
    assert avatar["family"] == "avatar"
    assert avatar["size"]["widgets"] == ["image_size"] and avatar["size"]["multiple"] == 64
    assert all(p["width"] == p["height"] and p["width"] % 64 == 0 for p in avatar["presets"]["64"])
    assert [p["width"] for p in avatar["presets"]["64"]] == [448, 704, 1088]


def test_wan_steps_come_from_the_variants():
    wan = RULES["samplers"]["ReelsmithWan22TextToVideo"]
    assert wan["size"]["by_variant"] == {"t2v-a14b": 16, "i2v-a14b": 16, "ti2v-5b": 32}
    assert wan["size"]["multiple"] == 16 and wan["frames"]["stride"] == 4
    ltx = RULES["samplers"]["ReelsmithLTXTextToVideo"]
    assert (ltx["size"]["multiple"], ltx["frames"]["stride"]) == (32, 8)


@pytest.mark.parametrize("name", sorted(n for n in RULES["samplers"] if n in NODE_CLASS_MAPPINGS))
def test_widget_steps_match_the_rules(name):
    """The front end's own rounding uses INPUT_TYPES step/min: they must give the same grid as the rules."""
    entry = RULES["samplers"][name]
    inputs = NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]
    for widget in entry["size"]["widgets"]:
        assert inputs[widget][1]["step"] == entry["size"]["multiple"]
        assert inputs[widget][1]["min"] % entry["size"]["multiple"] == 0
    if entry["frames"] is None:  # the avatar sampler: its length comes from the audio
        return
    frames = inputs[entry["frames"]["widget"]][1]
    assert frames["step"] == entry["frames"]["stride"]
    assert frames["min"] % frames["step"] == entry["frames"]["offset"] % frames["step"]
    assert entry["frames"]["limits"] == {k: frames[k] for k in ("min", "max", "step")}


@pytest.mark.parametrize("name", sorted(n for n in RULES["samplers"] if RULES["samplers"][n]["frames"]))
def test_rules_accept_exactly_what_validation_accepts(name):
    entry = RULES["samplers"][name]
    for multiple in _multiples(entry):
        size_problems, frame_problems = _validation(name, multiple)
        for value in range(multiple, 2049, 8):
            on_grid = value % multiple == 0
            assert (not size_problems(value, multiple * 16)) == on_grid, (multiple, value)
            assert (not size_problems(multiple * 16, value)) == on_grid, (multiple, value)
    stride, offset = entry["frames"]["stride"], entry["frames"]["offset"]
    _, frame_problems = _validation(name, entry["size"]["multiple"])
    for frames in range(1, 300):
        assert (not frame_problems(frames)) == ((frames - offset) % stride == 0), frames


def _js_snap(values, step, offset, limits) -> list:
    """The extension's own snapToGrid (js/reelsmith.js) run by Node.js on typed values (no previous value)."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("Node.js not found: the JS snapping is checked in the browser tier instead")
    source = re.search(r"^function snapToGrid\(.*?^}$", JS, re.S | re.M).group(0)
    script = f"{source}\nconsole.log(JSON.stringify({json.dumps(values)}.map((v) => snapToGrid(v, {step}, {offset}, "\
             f"undefined, {json.dumps(limits)}))));"
    result = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout)


def test_avatar_rules_accept_exactly_what_the_engine_accepts():
    """What the editor publishes for the avatar sampler (step and limits of image_size) is the engine's rule
    (engine/pipelines/avatar_validation.py): a value on it is accepted, a value off it refused, and whatever the
    JS snaps a typed value to is accepted."""
    entry = RULES["samplers"][AVATAR]
    size = entry["size"]
    assert size["widgets"] == ["image_size"] and size["by_variant"] == {} and entry["frames"] is None
    assert size["limits"] == {"min": avatar_validation.MIN_INPUT_SIDE, "max": avatar_validation.MAX_IMAGE_SIZE,
                              "step": avatar_validation.SIZE_STEP} == {"min": 256, "max": 1280, "step": 64}
    step, limits = size["multiple"], size["limits"]
    typed = list(range(0, 2101))
    for value in typed:
        on_rule = value % step == 0 and limits["min"] <= value <= limits["max"]
        assert (not avatar_input_errors(value, "25")) == on_rule, value
    snapped = _js_snap(typed, step, 0, limits)
    for value, result in zip(typed, snapped):
        assert not avatar_input_errors(result, "25"), (value, result)
        if limits["min"] <= value <= limits["max"]:
            assert abs(result - value) <= step // 2, (value, result)  # the nearest valid size
    assert (snapped[1000], snapped[100], snapped[2000], snapped[736]) == (1024, 256, 1280, 704)  # ties go down


def test_avatar_fps_choices_are_the_engines():
    choices = NODE_CLASS_MAPPINGS[AVATAR].INPUT_TYPES()["required"]["fps"][0]
    assert choices == list(avatar_validation.FPS_CHOICES) == ["25", "12.5"]
    assert all(not avatar_input_errors(704, fps) for fps in choices)
    for wrong in ("30", "24", 0, None, "fast"):
        assert avatar_input_errors(704, wrong) == [f"fps {wrong} is not 25 or 12.5 fps (the frame rates the model "
                                                   f"was trained on)"]


def test_avatar_sampler_validates_with_the_engines_rule():
    """VALIDATE_INPUTS (and so queueing) says exactly what the engine's check says."""
    node = NODE_CLASS_MAPPINGS[AVATAR]
    for image_size, fps in ((704, "25"), (1024, "12.5"), (700, "25"), (1344, "25"), (704, "30")):
        problems = avatar_input_errors(image_size, fps)
        result = node.VALIDATE_INPUTS(image_size=image_size, fps=fps)
        assert result is True if not problems else result == "Hunyuan Avatar: " + "; ".join(problems) + "."


@pytest.mark.parametrize("name", sorted(n for n in RULES["samplers"] if n in NODE_CLASS_MAPPINGS))
def test_presets_are_valid_for_their_step(name):
    entry = RULES["samplers"][name]
    for multiple in _multiples(entry):
        presets = entry["presets"][str(multiple)]
        # 480p / 720p / 1080p x landscape / portrait / square; one size widget (the avatar's image size): square
        orientations = ("square",) if len(entry["size"]["widgets"]) == 1 else ("landscape", "portrait", "square")
        assert len(presets) == 3 * len(orientations)
        size_problems, _ = _validation(name, multiple)
        for preset in presets:
            assert not size_problems(preset["width"], preset["height"]), preset
        names = [p["name"].split(" (")[0] for p in presets]
        assert names == [f"{r} {o}" for r in ("480p", "720p", "1080p") for o in orientations]


def test_presets_snap_to_the_models_own_sizes():
    wan = {p["name"]: (p["width"], p["height"]) for p in RULES["samplers"]["ReelsmithWan22TextToVideo"]["presets"]["16"]}
    assert wan["480p landscape (832x480)"] == (832, 480)  # the shipped 480p workflow's size
    assert wan["720p landscape (1280x720)"] == (1280, 720)
    ti2v = {p["name"].split(" (")[0]: (p["width"], p["height"])
            for p in RULES["samplers"]["ReelsmithWan22ImageToVideo"]["presets"]["32"]}
    assert ti2v["720p landscape"] == (1280, 704)  # TI2V-5B's own 720p size
    ltx = {p["name"].split(" (")[0]: (p["width"], p["height"])
           for p in RULES["samplers"]["ReelsmithLTXTextToVideo"]["presets"]["32"]}
    assert ltx["720p landscape"] == (1280, 704) and ltx["1080p portrait"] == (1088, 1920)


def test_snap_to_multiple_is_nearest_with_ties_down():
    assert routes.snap_to_multiple(720, 32) == 704
    assert routes.snap_to_multiple(730, 32) == 736
    assert routes.snap_to_multiple(1080, 16) == 1072
    assert routes.snap_to_multiple(3, 16) == 16


def test_js_holds_no_copy_of_the_rules():
    """The extension asks the server; a multiple or stride written into the JS could drift from the engine."""
    assert f'const ROUTES = "{routes.ROUTE_PREFIX}"' in JS
    assert "${ROUTES}/rules" in JS and "${ROUTES}/estimate" in JS and "${ROUTES}/loader_status" in JS
    assert not re.findall(r"\b(?:16|32|64)\b", JS), "a size step written into the JS"
    assert not re.findall(r"[%*/]\s*[48]\b|\b[48]\s*[%*/]", JS), "a frame stride written into the JS"
    for name in RULES["samplers"]:
        assert name not in JS, f"{name} is named in the JS: its rule belongs in nodes/routes.py"
    for variant in WAN_VARIANTS:
        assert variant not in JS
