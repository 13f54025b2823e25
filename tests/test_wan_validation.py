"""Sizes and frame counts are refused before any work, naming the nearest valid values."""

import pytest

from reelsmith.engine.errors import InvalidInputError
from reelsmith.engine.pipelines.wan_validation import check_wan_size, nearest_frame_counts, wan_size_errors


def test_valid_sizes_pass():
    assert wan_size_errors(832, 480, 81, 16) == []
    assert wan_size_errors(1280, 704, 121, 32) == []


def test_frames_must_be_4k_plus_1():
    assert nearest_frame_counts(80) == [77, 81]
    assert nearest_frame_counts(82) == [81, 85]
    with pytest.raises(InvalidInputError, match="frames 80 is not of the form 4k\\+1: use 77 or 81"):
        check_wan_size(832, 480, 80, 16)


def test_size_multiple_named_with_nearest_values():
    with pytest.raises(InvalidInputError, match="width 830 is not a multiple of 16: use 816 or 832"):
        check_wan_size(830, 480, 81, 16)
    # TI2V-5B needs multiples of 32: 720 is not one
    with pytest.raises(InvalidInputError, match="height 720 is not a multiple of 32: use 704 or 736"):
        check_wan_size(1280, 720, 121, 32, "Wan 2.2 TI2V 5B")
