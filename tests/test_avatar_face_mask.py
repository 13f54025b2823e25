"""Avatar face detector and face mask: the vendor's TorchScript I/O convention on a tiny scripted stand-in saved
to a file, NMS, the 3x box enlargement, the bilinear latent mask, several faces, a user MASK instead of the
detector, and the errors for no face, an empty MASK and a missing or broken detector file."""

from typing import List

import pytest
import torch

from reelsmith.engine.errors import InvalidInputError, ModelFilesError
from reelsmith.engine.models.avatar_face_detector import (FaceBox, FaceDetector, detector_grids,
                                                          detector_input_size, non_max_suppression)
from reelsmith.engine.pipelines.avatar_face_mask import (avatar_face_mask, choose_faces, enlarged_face_region,
                                                         face_pixel_mask, latent_face_mask)
from reelsmith.engine.pipelines.avatar_image import prepare_reference_image

# the stand-in is scripted with torch.jit.script, deprecated but the vendor's format
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


class TinyFaceNet(torch.nn.Module):
    """Same I/O as det_align/detface.pt: (image [1, 3, h, w] RGB 0..1, three (x, y) grids) -> [1, N, 16] rows of
    centre x, centre y, width, height (input pixels), objectness, 10 landmark values, class score.
    Boxes are fixed fractions of the input; objectness is the mean of the RED channel (so a wrong channel order
    or 0..255 input shows), and zero when the grids do not match the input size."""

    def __init__(self, boxes: torch.Tensor, objectness: torch.Tensor):
        super().__init__()
        self.register_buffer("boxes", boxes)
        self.register_buffer("objectness", objectness)

    def forward(self, image: torch.Tensor, grids: List[torch.Tensor]) -> torch.Tensor:
        height, width = image.shape[2], image.shape[3]
        valid = torch.ones(1)
        strides = [8, 16, 32]
        for index in range(3):
            grid = grids[index]
            if grid.shape[2] * strides[index] != height or grid.shape[3] * strides[index] != width:
                valid = valid * 0
        if bool(grids[1][0, 0, 1, 2, 0] != 2.0) or bool(grids[1][0, 0, 1, 2, 1] != 1.0):  # (x, y) order
            valid = valid * 0
        red = image[:, 0].mean().clamp(0, 1)
        rows = torch.zeros(1, self.boxes.shape[0], 16)
        scale = torch.tensor([float(width), float(height), float(width), float(height)])
        rows[0, :, :4] = self.boxes * scale
        rows[0, :, 4] = self.objectness * red * valid
        rows[0, :, 15] = 1.0
        return rows


def _save_detector(tmp_path, boxes, objectness, name="detface.pt"):
    module = torch.jit.script(TinyFaceNet(torch.tensor(boxes, dtype=torch.float32),
                                          torch.tensor(objectness, dtype=torch.float32)))
    path = tmp_path / name
    module.save(str(path))
    return path


def _reference(color=(1.0, 0.0, 0.0), width=704, height=960):
    image = torch.zeros(1, height, width, 3)
    image[0] = torch.tensor(color)
    return prepare_reference_image(image, 704)


def test_detector_input_size_and_grids_follow_the_vendor():
    assert detector_input_size(704, 960) == (416, 576)       # int(567.3 + 31) // 32 * 32 = 576
    assert detector_input_size(1216, 704) == (736, 416)
    grids = detector_grids(416, 576)
    assert [tuple(g.shape) for g in grids] == [(1, 1, 72, 52, 2), (1, 1, 36, 26, 2), (1, 1, 18, 13, 2)]
    assert grids[0][0, 0, 5, 7].tolist() == [7.0, 5.0]       # (x, y)


def test_non_max_suppression():
    rows = torch.zeros(5, 16)
    rows[:, 15] = 1.0
    rows[0, :5] = torch.tensor([50, 50, 20, 20, 0.9])
    rows[1, :5] = torch.tensor([52, 51, 20, 20, 0.8])          # overlaps row 0 heavily: suppressed
    rows[2, :5] = torch.tensor([150, 50, 20, 20, 0.7])         # elsewhere: kept
    rows[3, :5] = torch.tensor([250, 50, 20, 20, 0.4])         # objectness under 0.5: dropped
    rows[4, :5] = torch.tensor([350, 50, 20, 20, 0.9])
    rows[4, 15] = 0.5                                           # score 0.45: dropped
    kept = non_max_suppression(rows)
    assert kept.shape == (2, 5)
    torch.testing.assert_close(kept[0], torch.tensor([40.0, 40.0, 60.0, 60.0, 0.9]))
    torch.testing.assert_close(kept[1], torch.tensor([140.0, 40.0, 160.0, 60.0, 0.7]))
    assert non_max_suppression(torch.zeros(3, 16)).shape == (0, 5)


def test_scripted_detector_finds_faces_in_image_pixels(tmp_path):
    path = _save_detector(tmp_path, [[0.5, 0.4, 0.2, 0.25], [0.2, 0.7, 0.1, 0.1]], [0.95, 0.9])
    detector = FaceDetector.load(path)
    faces = detector.detect(_reference().pixels)
    assert len(faces) == 2 and faces[0].score == pytest.approx(0.95)
    big = faces[0]
    assert (big.x, big.y) == (pytest.approx(0.4 * 704), pytest.approx(0.275 * 960))
    assert (big.width, big.height) == (pytest.approx(0.2 * 704), pytest.approx(0.25 * 960))
    # a blue image has no red: the stand-in reports nothing (input is RGB in 0..1)
    assert detector.detect(_reference(color=(0.0, 0.0, 1.0)).pixels) == []


def test_box_is_enlarged_3x_about_its_centre_and_clipped():
    face = FaceBox(x=100, y=50, width=40, height=60, score=1.0)
    # centre (120, 80); 120 x 180 box -> x 60..180, y -10..170 clipped to 0
    assert enlarged_face_region(face, 400, 300) == (60, 0, 180, 170)
    mask = face_pixel_mask([face], 400, 300)
    assert mask.shape == (300, 400)
    assert mask[0:170, 60:180].min() == 1 and mask.sum() == 170 * 120


def test_latent_mask_is_the_bilinear_resize_of_the_pixel_mask():
    pixels = torch.zeros(64, 64)
    pixels[16:48, 20:56] = 1.0
    latent = latent_face_mask(pixels)
    assert latent.shape == (1, 1, 1, 8, 8)
    grid = latent[0, 0, 0]
    # cell i samples pixels 8i+3 and 8i+4 (half-pixel centres, no antialiasing)
    assert grid[2:6, 3:7].min() == 1.0 and grid[1].max() == 0.0 and grid[6].max() == 0.0
    assert grid[3, 2].item() == pytest.approx(0.5)              # pixels 19 (out) and 20 (in)
    assert grid[3, 7].item() == 0.0


def test_face_mask_from_the_detector(tmp_path):
    detector = FaceDetector.load(_save_detector(tmp_path, [[0.5, 0.4, 0.2, 0.25]], [0.95]))
    reference = _reference()
    mask = avatar_face_mask(reference, detector)
    assert mask.source == "detector" and len(mask.faces) == 1
    assert mask.latent.shape == (1, 1, 1, 120, 88)              # 960 / 8, 704 / 8
    expected = face_pixel_mask(mask.faces, 704, 960)
    torch.testing.assert_close(mask.pixels, expected)
    torch.testing.assert_close(mask.latent, latent_face_mask(expected))
    # the 140.8 x 240 box at (281.6, 264) grown 3x about (352, 384): x 141..563, y 24..744
    ys, xs = mask.pixels.nonzero(as_tuple=True)
    assert abs(xs.min().item() - 141) <= 1 and abs(xs.max().item() + 1 - 563) <= 1
    assert abs(ys.min().item() - 24) <= 1 and abs(ys.max().item() + 1 - 744) <= 1
    assert mask.pixels.sum().item() == (xs.max() - xs.min() + 1).item() * (ys.max() - ys.min() + 1).item()


def test_several_faces_largest_or_all(tmp_path):
    detector = FaceDetector.load(_save_detector(tmp_path, [[0.25, 0.3, 0.1, 0.1], [0.75, 0.7, 0.15, 0.15]],
                                                [0.95, 0.9]))
    reference = _reference()
    largest = avatar_face_mask(reference, detector)
    both = avatar_face_mask(reference, detector, faces="all")
    assert [f.score for f in largest.faces] == [pytest.approx(0.9)]   # the larger, not the likelier
    assert len(both.faces) == 2
    assert both.pixels.sum() > largest.pixels.sum()
    assert both.pixels[int(0.3 * 960), int(0.25 * 704)] == 1 and largest.pixels[int(0.3 * 960), int(0.25 * 704)] == 0
    with pytest.raises(InvalidInputError, match="largest, all"):
        choose_faces(largest.faces, "biggest")


class _NoDetector:
    def detect(self, pixels):
        raise AssertionError("the detector must not run when a MASK is given")


def test_user_mask_replaces_the_detector():
    reference = _reference(width=352, height=480)                 # rendered 704 x 960 (2x)
    user = torch.zeros(1, 480, 352)
    user[0, 100:200, 50:150] = 1.0
    mask = avatar_face_mask(reference, _NoDetector(), user_mask=user)
    assert mask.source == "mask" and mask.faces == []
    assert mask.latent.shape == (1, 1, 1, 120, 88)
    assert mask.pixels[300, 200].item() == pytest.approx(1.0) and mask.pixels[100, 600].item() == 0.0
    assert mask.latent[0, 0, 0, 37, 25].item() == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="MASK is empty"):
        avatar_face_mask(reference, _NoDetector(), user_mask=torch.zeros(480, 352))


def test_no_face_is_an_error_that_points_at_the_mask_input(tmp_path):
    detector = FaceDetector.load(_save_detector(tmp_path, [[0.5, 0.5, 0.2, 0.2]], [0.95]))
    with pytest.raises(InvalidInputError, match="No face found.*face MASK"):
        avatar_face_mask(_reference(color=(0.0, 0.0, 1.0)), detector)
    with pytest.raises(InvalidInputError, match="MASK"):
        avatar_face_mask(_reference(), None)


def test_missing_or_broken_detector_file(tmp_path):
    with pytest.raises(ModelFilesError, match="hf download tencent/HunyuanVideo-Avatar --include "
                                              "'ckpts/det_align/detface.pt'"):
        FaceDetector.load(tmp_path / "det_align" / "detface.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torchscript archive")
    with pytest.raises(ModelFilesError, match="broken.pt: cannot load"):
        FaceDetector.load(broken)
