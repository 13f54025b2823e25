"""Visible and invisible watermarks: pixel-exact placement and blending, batched on the frames' device, and
an invisible payload that survives an H.264 CRF 23 round trip through PyAV."""

import io

import av
import numpy as np
import pytest
import torch
from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.post import invisible_watermark as iw
from reelsmith.engine.post import visible_watermark as vw
from reelsmith.nodes.watermark import ReelsmithWatermark, ReelsmithWatermarkDetect

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def solid_mark(h, w, rgb=(1.0, 0.0, 0.0), alpha=1.0):
    mark = torch.empty(h, w, 4)
    mark[..., :3] = torch.tensor(rgb)
    mark[..., 3] = alpha
    return mark


def changed_box(before, after):
    """(top, left, bottom, right) inclusive of pixels that differ in any frame/channel."""
    ys, xs = torch.nonzero((before != after).any(dim=-1).any(dim=0), as_tuple=True)
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


# ---------------------------------------------------------------- visible

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("position, box", [
    ("top-left", (5, 5, 14, 24)),
    ("top-right", (5, 96 - 20 - 5, 14, 96 - 5 - 1)),
    ("bottom-left", (64 - 10 - 5, 5, 64 - 5 - 1, 24)),
    ("bottom-right", (64 - 10 - 5, 96 - 20 - 5, 64 - 5 - 1, 96 - 5 - 1)),
    ("centre", (27, 38, 36, 57)),
])
def test_visible_mark_placement(device, position, box):
    frames = torch.full((3, 64, 96, 3), 0.25, device=device)
    out = vw.apply_visible_watermark(frames, solid_mark(10, 20), vw.Placement(position, margin=5))
    assert out.device == frames.device and out.shape == frames.shape
    assert changed_box(frames, out) == box
    assert torch.equal(out[0], out[2])                     # every frame of the batch got the same mark
    assert torch.equal(frames, torch.full_like(frames, 0.25))  # input untouched


def test_visible_mark_xy_clipped_at_frame_edge():
    frames = torch.zeros(2, 32, 32, 3)
    out = vw.apply_visible_watermark(frames, solid_mark(10, 10), vw.Placement("xy", x=27, y=-4))
    assert changed_box(frames, out) == (0, 27, 5, 31)


@pytest.mark.parametrize("device", DEVICES)
def test_opacity_blend_is_exact(device):
    frames = torch.full((4, 16, 16, 3), 0.2, device=device)
    out = vw.apply_visible_watermark(frames, solid_mark(4, 4, (1.0, 0.0, 0.5), alpha=0.5),
                                     vw.Placement("top-left", margin=0, opacity=0.5))
    a = 0.25  # mark alpha 0.5 times opacity 0.5
    expected = torch.tensor([0.2 + (1.0 - 0.2) * a, 0.2 * (1 - a), 0.2 + (0.5 - 0.2) * a], device=device)
    torch.testing.assert_close(out[:, :4, :4], expected.expand(4, 4, 4, 3), rtol=0, atol=1e-6)
    assert torch.equal(out[:, 4:], frames[:, 4:]) and torch.equal(out[:, :, 4:], frames[:, :, 4:])


def test_zero_opacity_and_transparent_mask_leave_frames_alone():
    frames = torch.rand(2, 32, 32, 3)
    out = vw.apply_visible_watermark(frames, solid_mark(8, 8), vw.Placement("centre", opacity=0.0))
    assert torch.equal(out, frames)
    image = torch.ones(1, 8, 8, 3)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0  # LoadImage: MASK 1 = transparent
    mark = vw.mark_from_image(image, mask)
    out = vw.apply_visible_watermark(frames, mark, vw.Placement("top-left", margin=0))
    assert torch.equal(out[:, :8, :4], frames[:, :8, :4])
    assert torch.equal(out[:, :8, 4:8], torch.ones(2, 8, 4, 3))


def test_image_mark_scaled_to_fraction_of_frame_width():
    frames = torch.zeros(2, 64, 96, 3)
    logo = torch.ones(1, 40, 80, 3)
    (out,) = ReelsmithWatermark().apply(frames, "image", "", 32, "top-left", 0, 0, 0, 0.25, 1.0, "", "normal",
                                        mark_image=logo)
    top, left, bottom, right = changed_box(frames, out)
    assert (top, left) == (0, 0) and right - left + 1 == 24 and bottom - top + 1 == 12


def test_text_mark_is_not_empty():
    mark = vw.mark_from_text("Reelsmith", 24)
    assert mark.shape[-1] == 4 and mark.shape[1] > mark.shape[0] > 10
    assert (mark[..., 3] > 0.5).sum() > 50
    frames = torch.full((2, 120, 200, 3), 0.5)
    (out,) = ReelsmithWatermark().apply(frames, "text", "AI generated", 20, "bottom-right", 0, 0, 8, 0.2, 1.0,
                                        "", "normal")
    top, left, bottom, right = changed_box(frames, out)
    assert bottom <= 120 - 8 - 1 and right <= 200 - 8 - 1 and top > 60 and left > 60
    assert (out.max() > 0.9) and (out.min() < 0.1)  # white text with a dark outline


def test_missing_mark_image_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="mark_image"):
        ReelsmithWatermark().apply(torch.zeros(1, 64, 64, 3), "image", "", 32, "centre", 0, 0, 0, 0.2, 1.0, "",
                                   "normal")
    with pytest.raises(InvalidInputError, match="text is empty"):
        vw.mark_from_text("  ", 20)


# ---------------------------------------------------------------- invisible

def scene(n=9, h=256, w=256, seed=0):
    """Moving smooth colour patterns with a little noise: content that H.264 does not find trivial."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    phase = seed * 0.7
    frames = []
    for t in range(n):
        r = 0.5 + 0.4 * torch.sin(6 * xx + t * 0.3 + phase) * torch.cos(4 * yy)
        gr = 0.5 + 0.3 * torch.cos(9 * yy - t * 0.2 + phase)
        b = (xx * yy + 0.1 * t + phase) % 1
        frames.append(torch.stack([r, gr, b], -1) + 0.03 * torch.randn(h, w, 3, generator=g))
    return torch.stack(frames).clamp(0, 1)


def encode_h264(frames, crf=23) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for f in (frames.cpu() * 255).round().to(torch.uint8).numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode(data: bytes):
    with av.open(io.BytesIO(data)) as container:
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])).float() / 255


def test_codeword_round_trip_and_crc():
    bits = iw.encode_codeword("job-42")
    assert bits.numel() == iw.CODE_BITS and iw.decode_codeword(bits) == "job-42"
    for i in (0, 17, iw.CODE_BITS - 1):
        flipped = bits.clone()
        flipped[i] ^= 1
        assert iw.decode_codeword(flipped) is None
    with pytest.raises(InvalidInputError, match="bytes"):
        iw.encode_codeword("x" * (iw.MAX_PAYLOAD_BYTES + 1))


@pytest.mark.parametrize("device", DEVICES)
def test_payload_survives_h264_crf23(device, tmp_path):
    frames = scene().to(device)
    marked = iw.embed_payload(frames, "job-7f3a9c21", iw.STRENGTHS["normal"])
    assert marked.device == frames.device and marked.shape == frames.shape
    psnr = 10 * torch.log10(1 / ((marked - frames) ** 2).mean())
    assert psnr > 40
    data = encode_h264(marked, crf=23)
    detection = iw.detect_payload(decode(data))
    assert detection.found and detection.payload == "job-7f3a9c21" and detection.confidence > 0.99
    path = tmp_path / "marked.mp4"
    path.write_bytes(data)
    assert iw.detect_payload_in_file(path).payload == "job-7f3a9c21"
    report, confidence, found = ReelsmithWatermarkDetect().detect(str(path), 0)
    assert found and confidence > 0.99 and "job-7f3a9c21" in report


def test_node_embeds_payload_under_visible_mark():
    frames = scene(n=6)
    (out,) = ReelsmithWatermark().apply(frames, "text", "AI", 16, "top-left", 0, 0, 4, 0.2, 0.7, "id-1", "strong")
    assert iw.detect_payload(decode(encode_h264(out))).payload == "id-1"


@pytest.mark.parametrize("seed", range(4))
def test_no_false_positive_on_unmarked_frames(seed):
    frames = scene(seed=seed + 10)
    for candidate in (frames, decode(encode_h264(frames))):
        detection = iw.detect_payload(candidate)
        assert not detection.found and detection.payload is None and detection.confidence < 0.5
    report, _, found = ReelsmithWatermarkDetect().detect("", 0, images=frames)
    assert not found and "no watermark" in report


def test_wrong_payload_never_reported_with_confidence():
    frames = scene(n=4, h=128, w=128, seed=3)
    for crf in (23, 35, 45):
        for payload, strength in (("alpha", "subtle"), ("beta-2", "normal")):
            marked = iw.embed_payload(frames, payload, iw.STRENGTHS[strength])
            detection = iw.detect_payload(decode(encode_h264(marked, crf=crf)))
            assert detection.payload in (payload, None)
            if detection.payload is None:
                assert not detection.found
            else:
                assert detection.found and detection.confidence >= 0.5


def test_detect_needs_input_and_existing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="Nothing to check"):
        ReelsmithWatermarkDetect().detect("", 0)
    with pytest.raises(InvalidInputError, match="does not exist"):
        iw.detect_payload_in_file(tmp_path / "missing.mp4")
    with pytest.raises(InvalidInputError, match="too small"):
        iw.embed_payload(torch.zeros(1, 32, 32, 3), "x")


@pytest.mark.parametrize("node_id", ["ReelsmithWatermark", "ReelsmithWatermarkDetect",
                                     "ReelsmithContentCredentials", "ReelsmithContentCredentialsVerify"])
def test_delivery_nodes_follow_the_node_contract(node_id):
    from reelsmith.nodes import content_credentials, watermark
    mappings = {**watermark.NODE_CLASS_MAPPINGS, **content_credentials.NODE_CLASS_MAPPINGS}
    names = {**watermark.NODE_DISPLAY_NAME_MAPPINGS, **content_credentials.NODE_DISPLAY_NAME_MAPPINGS}
    cls = mappings[node_id]
    assert names[node_id].startswith("Reelsmith ") and cls.CATEGORY.startswith("Reelsmith/")
    assert len(cls.DESCRIPTION) > 40 and callable(getattr(cls(), cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    for section in cls.INPUT_TYPES().values():
        for name, spec in section.items():
            assert len(spec) == 2 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(spec[0], (list, tuple)):
                assert spec[1].get("default") in (None, *spec[0])
            elif spec[0] in ("INT", "FLOAT"):
                assert spec[1]["min"] <= spec[1]["default"] <= spec[1]["max"]
