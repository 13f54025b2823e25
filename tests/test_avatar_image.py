"""Avatar reference image: the vendor's size rule (shorter side, multiples of 64, area cap), aspect kept by a
cover resize + centre crop, masks carried through the same transform, the still video for the VAE, errors."""

import pytest
import torch

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.pipelines.avatar_image import (fit_mask_to_reference, prepare_reference_image,
                                                     reference_size, reference_video)


@pytest.mark.parametrize("source, image_size, expected", [
    ((1024, 1024), 704, (704, 704)),
    ((800, 600), 704, (960, 704)),       # 704 / 600 -> 938.7 -> 960; area under the cap
    ((1080, 1920), 704, (704, 1216)),    # 704 x 1280 is over 704 x 1216: shrunk by sqrt(856064 / (1080 * 1920))
    ((1920, 1080), 704, (1216, 704)),
    ((1000, 3000), 512, (384, 1088)),    # cap 512 x 768
    ((600, 800), 384, (384, 512)),
    ((1000, 1000), 640, (640, 640)),     # a size outside the vendor's table: long side cap 1.5 x
])
def test_reference_size_follows_the_vendor(source, image_size, expected):
    assert reference_size(*source, image_size) == expected


def test_reference_size_never_exceeds_the_area_cap_by_more_than_rounding():
    for width in range(256, 3000, 97):
        for height in (256, 700, 1500, 2900):
            w, h = reference_size(width, height, 704)
            assert w % 64 == 0 and h % 64 == 0
            assert w * h <= 704 * 1216 * 1.2


@pytest.mark.parametrize("size", [700, 192, 0])
def test_image_size_must_be_a_multiple_of_64_from_256(size):
    with pytest.raises(InvalidInputError, match="multiple of 64"):
        reference_size(1000, 1000, size)


def _image(width, height):
    image = torch.zeros(1, height, width, 3)
    image[0, :, :, 2] = 0.5
    return image


def test_prepare_keeps_the_aspect_with_a_centre_crop():
    image = _image(300, 400)
    image[0, 150:250, 100:200] = torch.tensor([1.0, 0.0, 0.0])   # a red square in the middle
    reference = prepare_reference_image(image, 704)
    assert (reference.width, reference.height) == (704, 960)       # vendor size for 300 x 400
    assert reference.pixels.dtype.name == "uint8" and reference.pixels.shape == (960, 704, 3)
    # cover: scale max(704/300, 960/400) = 2.4 -> 720 x 960, 8 px cut from each side
    assert reference.resized_size == (720, 960) and reference.crop == (8, 0)
    red = (reference.pixels[..., 0] > 128) & (reference.pixels[..., 2] < 64)
    ys, xs = red.nonzero()
    assert abs(xs.min() - (240 - 8)) <= 2 and abs(xs.max() - (480 - 8)) <= 2    # square kept square
    assert abs(ys.min() - 360) <= 2 and abs(ys.max() - 600) <= 2
    assert reference.as_image().shape == (1, 960, 704, 3)


def test_first_image_of_a_batch_and_other_channel_counts():
    batch = torch.cat([_image(256, 256), torch.ones(1, 256, 256, 3)])
    assert prepare_reference_image(batch, 256).pixels[..., 0].max() == 0
    gray = torch.full((256, 256, 1), 1.0)
    assert prepare_reference_image(gray, 256).pixels.min() == 255
    rgba = torch.ones(1, 256, 256, 4)
    assert prepare_reference_image(rgba, 256).pixels.shape == (256, 256, 3)


def test_too_small_image_is_refused():
    with pytest.raises(InvalidInputError, match=r"200x300 px.*at least 256 px"):
        prepare_reference_image(_image(200, 300))


def test_malformed_images_are_refused():
    with pytest.raises(InvalidInputError, match="IMAGE"):
        prepare_reference_image(torch.zeros(1, 300, 300))
    with pytest.raises(InvalidInputError, match="empty"):
        prepare_reference_image(torch.zeros(0, 300, 300, 3))


def test_mask_goes_through_the_same_resize_and_crop():
    reference = prepare_reference_image(_image(300, 400), 704)
    mask = torch.zeros(1, 400, 300)
    mask[0, 100:300, 100:200] = 1.0
    fitted = fit_mask_to_reference(mask, reference)
    assert fitted.shape == (960, 704) and fitted.dtype == torch.float32
    inside = fitted > 0.5
    ys, xs = inside.nonzero(as_tuple=True)
    assert abs(xs.min().item() - 232) <= 2 and abs(xs.max().item() - 472) <= 2
    assert abs(ys.min().item() - 240) <= 2 and abs(ys.max().item() - 720) <= 2
    assert fitted[480, 352].item() == pytest.approx(1.0) and fitted[10, 10].item() == 0.0
    # a 2-d mask of another size is stretched over the whole input first
    whole = fit_mask_to_reference(torch.ones(40, 30), reference)
    assert whole.min().item() == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="MASK"):
        fit_mask_to_reference(torch.zeros(2, 2, 2, 2), reference)


def test_reference_video_is_the_still_image_in_minus_1_to_1():
    image = _image(256, 256)
    image[0, 0, 0] = torch.tensor([1.0, 0.0, 0.5])
    reference = prepare_reference_image(image, 256)
    video = reference_video(reference, frames=5)
    assert video.shape == (1, 3, 5, 256, 256)
    torch.testing.assert_close(video[:, :, 0], video[:, :, 4], rtol=0, atol=0)
    expected = torch.from_numpy(reference.pixels).float().permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(video[0, :, 2], expected, rtol=0, atol=0)
    assert video.min() >= -1 and video.max() <= 1
    assert reference_video(reference).shape[2] == 129
