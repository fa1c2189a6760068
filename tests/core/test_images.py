import io

import numpy as np
import pytest
from PIL import Image

from defectgen.core.images import (
    ImageProblem,
    decode_image,
    encode_png,
    normalize_mask,
    pixel_id,
    resize,
    to_color,
)
from tests.conftest import texture


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_id_is_stable_across_encodings_and_differs_for_other_pixels():
    px = texture(1)
    as_png, _ = decode_image(_encode(Image.fromarray(px), "PNG"))
    as_bmp, _ = decode_image(_encode(Image.fromarray(px), "BMP"))
    assert pixel_id(as_png) == pixel_id(as_bmp) == pixel_id(px)
    assert pixel_id(texture(2)) != pixel_id(px)
    # Same bytes, other shape: other id.
    assert pixel_id(px.reshape(20, 80)) != pixel_id(px)


def test_empty_truncated_and_non_image_are_problems():
    with pytest.raises(ImageProblem, match="empty file"):
        decode_image(b"")
    full = _encode(Image.fromarray(texture(3, (64, 64))), "PNG")
    with pytest.raises(ImageProblem, match="truncated|not a readable"):
        decode_image(full[: len(full) // 2])
    with pytest.raises(ImageProblem, match="not a readable image"):
        decode_image(b"hello, I am a text file pretending to be a PNG")


def test_sixteen_bit_scales_to_eight_bit():
    arr16 = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    img = Image.fromarray(arr16)
    assert img.mode.startswith("I;16")
    px, conv = decode_image(_encode(img))
    assert conv is not None and "-> L" in conv
    assert px.dtype == np.uint8 and px.tolist() == [[0, 255], [100, 200]]
    low = np.array([[1000, 3000]], dtype=np.uint16)
    px, _ = decode_image(_encode(Image.fromarray(low)), sixteen_bit="minmax")
    assert px.tolist() == [[0, 255]]


def test_palette_cmyk_rgba_are_converted():
    gray_pal = Image.fromarray(texture(4)).convert("P")
    px, conv = decode_image(_encode(gray_pal))
    assert px.ndim == 2 and conv == "P -> L"
    color_pal = Image.fromarray(texture(5, rgb=True)).convert("P", palette=Image.Palette.ADAPTIVE)
    px, conv = decode_image(_encode(color_pal))
    assert px.shape == (40, 40, 3) and conv == "P -> RGB"
    cmyk = Image.fromarray(texture(6, rgb=True)).convert("CMYK")
    px, conv = decode_image(_encode(cmyk, "JPEG"))
    assert px.shape == (40, 40, 3) and conv == "CMYK -> RGB"
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel becomes black
    px, conv = decode_image(_encode(Image.fromarray(rgba, "RGBA")))
    assert conv == "RGBA -> RGB" and px[0, 0].tolist() == [0, 0, 0] and px[1, 1, 0] == 200


def test_masks_normalised_or_refused():
    assert normalize_mask(np.array([[0, 1]], np.uint8), binarize=False, threshold=128).tolist() == [
        [0, 255]
    ]
    soft = np.array([[0, 10, 200, 255]], np.uint8)
    with pytest.raises(ImageProblem, match="not binary: 4 distinct values"):
        normalize_mask(soft, binarize=False, threshold=128)
    assert normalize_mask(soft, binarize=True, threshold=128).tolist() == [[0, 0, 255, 255]]


def test_colour_and_resize():
    rgb = texture(7, rgb=True)
    gray = to_color(rgb, "grayscale")
    assert gray.shape == (40, 40)
    assert to_color(gray, "rgb").shape == (40, 40, 3)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 5:20] = 255
    small = resize(mask, 16, nearest=True)
    assert small.shape == (16, 16) and set(np.unique(small).tolist()) <= {0, 255}
    back, _ = decode_image(encode_png(small))
    assert np.array_equal(back, small)
