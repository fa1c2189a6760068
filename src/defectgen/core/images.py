"""Decoding images to 8-bit arrays, pixel ids, colour and size conversions.

Pure functions on bytes and arrays; the stages decide where bytes come from.
Every decoded image is a uint8 array: (H, W) for grayscale, (H, W, 3) for RGB.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageFile

# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageProblem(Exception):
    """One file cannot be used; the message says why and how to fix it."""


def decode_image(
    data: bytes, *, sixteen_bit: Literal["scale", "minmax"] = "scale"
) -> tuple[np.ndarray, str | None]:
    """Decode image bytes into an 8-bit grayscale or RGB array.

    Args:
        data: the file's bytes.
        sixteen_bit: how 16/32-bit grayscale becomes 8-bit: "scale" maps the type's
            full range linearly (65535 -> 255); "minmax" stretches each image's own range.

    Returns:
        (pixels, conversion): pixels is (H, W) or (H, W, 3) uint8; conversion names
        what was converted (e.g. "I;16 -> L"), or None when the image was already 8-bit L/RGB.

    Raises:
        ImageProblem: empty, truncated or non-image data.
    """
    if len(data) == 0:
        raise ImageProblem("empty file (0 bytes); re-export or remove it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBomb etc. surface as errors below
            img = Image.open(io.BytesIO(data))
            img.load()
    except OSError as exc:
        text = str(exc)
        if "truncated" in text.lower() or "broken data stream" in text.lower():
            raise ImageProblem(f"truncated image data ({text}); re-export the file") from None
        raise ImageProblem(
            f"not a readable image ({text}); remove it or convert it to PNG"
        ) from None
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageProblem(
            f"not a readable image ({exc}); remove it or convert it to PNG"
        ) from None

    mode = img.mode
    if mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.uint8).copy(), None
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8).copy(), "1 -> L"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if sixteen_bit == "minmax":
            lo, hi = float(arr.min()), float(arr.max())
            scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            if mode == "F":
                top = 1.0 if arr.max() <= 1.0 else top
            scaled = arr / top * 255.0
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return out, f"{mode} -> L ({sixteen_bit})"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels become black: defect images have no meaningful background colour.
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        flat = Image.alpha_composite(base, rgba)
        target = "L" if mode in ("LA",) else "RGB"
        return np.asarray(flat.convert(target), dtype=np.uint8).copy(), f"{mode} -> {target}"
    if mode == "P":
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return rgb[..., 0].copy(), "P -> L"
        return rgb.copy(), "P -> RGB"
    # CMYK, YCbCr, LAB, HSV and the rest: PIL knows the conversion to RGB.
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), f"{mode} -> RGB"
    except (ValueError, OSError) as exc:
        raise ImageProblem(f"unsupported image mode {mode!r} ({exc}); convert it to PNG") from None


def pixel_id(pixels: np.ndarray) -> str:
    """sha256 of the decoded pixels and their shape: stable across re-encoding (PNG vs BMP)."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    digest = hashlib.sha256(f"{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def to_color(pixels: np.ndarray, color: Literal["grayscale", "rgb"]) -> np.ndarray:
    """Convert (H, W) or (H, W, 3) uint8 to the requested colour layout (ITU-R 601 luma)."""
    if color == "grayscale":
        if pixels.ndim == 2:
            return pixels
        return np.asarray(Image.fromarray(pixels, "RGB").convert("L"), dtype=np.uint8)
    if pixels.ndim == 3:
        return pixels
    return np.repeat(pixels[:, :, None], 3, axis=2)


def resize(pixels: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize to size x size: Lanczos for images, nearest-neighbour for masks (stay binary)."""
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(pixels).resize((size, size), resample), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int, *, keep_lost: bool = True) -> np.ndarray:
    """A {0, 255} mask resized to size x size so that thin defects keep their shape and
    blobs their area.

    Downscaling works on each output pixel's foreground share (PIL's BOX filter, the area
    average; f the larger downscale factor). A share of at least 1 / 2 is foreground (the
    area-preserving rounding). A defect that rounding would lose or break (a crack one
    pixel wide covers only about 1 / f of each output pixel it crosses) is drawn from the
    generous mask instead, share >= 1 / (2 f): there each 8-connected region of the
    generous mask whose rounded part is not exactly one region is taken whole, so a thin
    line survives and stays connected while a blob keeps its rounded outline (nearest-
    neighbour sampling broke cracks into dashes or lost them). A mask with foreground
    that still vanishes (a defect under half an output pixel's footprint) keeps its
    strongest output pixel (`keep_lost`, the default: a labelled defect never becomes an
    empty mask), else comes back empty. Upscaling: nearest-neighbour (exact)."""
    from scipy import ndimage

    h, w = mask.shape[:2]
    if (h, w) == (size, size):
        return mask
    fg = np.asarray(mask) > 127
    f = max(h, w) / size
    if f <= 1:
        up = Image.fromarray(fg.astype(np.uint8) * 255).resize(
            (size, size), Image.Resampling.NEAREST
        )
        return np.asarray(up, dtype=np.uint8)
    share = np.asarray(
        Image.fromarray(fg.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
    )
    rounded, generous = share >= 0.5, share >= 1 / (2 * f)
    eight = np.ones((3, 3))
    regions, n = ndimage.label(generous, structure=eight)
    parts, _ = ndimage.label(rounded, structure=eight)
    out = rounded.copy()
    for k in range(1, n + 1):
        inside = regions == k
        if len(np.unique(parts[inside & rounded])) != 1:  # rounding lost or broke it
            out |= inside
    if keep_lost and fg.any() and not out.any():
        out.flat[int(np.argmax(share))] = True
    return out.astype(np.uint8) * 255


def mask_shape(mask: np.ndarray) -> tuple[int, float]:
    """(8-connected defect regions, foreground fraction of the image) of a mask."""
    from scipy import ndimage

    fg = np.asarray(mask) > 127
    _, regions = ndimage.label(fg, structure=np.ones((3, 3)))
    return int(regions), float(fg.mean())


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a (H, W) or (H, W, 3) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def normalize_mask(pixels: np.ndarray, *, binarize: bool, threshold: int) -> np.ndarray:
    """Turn a decoded mask into (H, W) uint8 with values {0, 255}.

    Accepts {0, 255} and {0, 1} masks as they are (colour masks: any non-zero channel is
    foreground). Other values are a problem unless `binarize` is set, then >= threshold
    is foreground.

    Raises:
        ImageProblem: non-binary values and binarize is off.
    """
    if pixels.ndim == 3:
        pixels = pixels.max(axis=2)
    values = np.unique(pixels)
    if set(values.tolist()) <= {0, 255}:
        return pixels.astype(np.uint8)
    if set(values.tolist()) <= {0, 1}:
        return (pixels * 255).astype(np.uint8)
    if binarize:
        return np.where(pixels >= threshold, 255, 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise ImageProblem(
        f"mask is not binary: {len(values)} distinct values ({shown}); expected {{0, 255}} "
        "or {0, 1}. Re-export it as a lossless PNG, or set ingest.binarize_masks: true"
    )
