"""Sticker and image decoding to ``[H, W, 3] uint8`` RGB arrays.

Sticker ``.npy`` files are loaded with ``allow_pickle=False``: a data file is never unpickled.
Transparent pixels (``H×W×4`` arrays, RGBA/LA/P images) are composited over white, because a
transparent sticker's hidden RGB values are arbitrary (often black) and people see it on a
light chat background.
"""

from __future__ import annotations

import io

import numpy as np

from srs_core.data.report import DataProblem

GRAY = 127  # value of the padding image that stands in for a missing candidate


def gray_image(height: int, width: int) -> np.ndarray:
    """The uniform gray padding candidate, ``[height, width, 3] uint8``."""
    return np.full((height, width, 3), GRAY, dtype=np.uint8)


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataProblem("npy_bad_values", where, "float array contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 255.0:
            raise DataProblem(
                "npy_bad_values", where, f"float values {low:g}..{high:g} outside 0..1 or 0..255"
            )
        scale = 255.0 if high <= 1.0 else 1.0
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataProblem(
                "npy_bad_values", where, f"{array.dtype} values {low}..{high} outside 0..255"
            )
        return array.astype(np.uint8)
    raise DataProblem("npy_bad_values", where, f"dtype {array.dtype} is not a numeric image type")


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    weight = alpha.astype(np.float32)[..., None] / 255.0
    mixed = rgb.astype(np.float32) * weight + 255.0 * (1.0 - weight)
    return np.rint(mixed).astype(np.uint8)


def to_rgb_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Normalise a sticker array (HxW, HxWx1, HxWx3, HxWx4; uint8/int/float) to HxWx3 uint8."""
    if not isinstance(array, np.ndarray):
        raise DataProblem("npy_bad_shape", where, f"expected a numpy array, got {type(array)}")
    shape = array.shape
    valid = (array.ndim == 2 or (array.ndim == 3 and shape[2] in (1, 3, 4))) and all(shape[:2])
    if not valid:
        raise DataProblem("npy_bad_shape", where, f"shape {shape}; expected HxW, HxWx3 or HxWx4")
    pixels = _to_uint8(array, where)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.shape[2] == 4:
        pixels = _over_white(pixels[..., :3], pixels[..., 3])
    return np.ascontiguousarray(pixels)


def decode_npy(data: bytes, where: str) -> np.ndarray:
    """Parse ``.npy`` bytes without unpickling and normalise to HxWx3 uint8."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        # numpy raises ValueError both for object arrays (pickles) and for bad headers
        detail = "pickled/object array refused" if "pickle" in str(exc) else str(exc)
        raise DataProblem("npy_corrupt", where, detail) from None
    except (OSError, EOFError) as exc:
        raise DataProblem("npy_corrupt", where, str(exc) or type(exc).__name__) from None
    if not isinstance(array, np.ndarray):
        raise DataProblem("npy_corrupt", where, "not a single .npy array")
    return to_rgb_uint8(array, where)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode an image file's bytes (any Pillow format and mode) to HxWx3 uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            )
            if has_alpha:
                rgba = np.asarray(image.convert("RGBA"))
                return _over_white(rgba[..., :3], rgba[..., 3])
            return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated/garbled files as OSError or SyntaxError depending on format
        raise DataProblem("image_corrupt", where, str(exc) or type(exc).__name__) from None
    except Image.DecompressionBombError as exc:
        raise DataProblem("image_corrupt", where, str(exc)) from None
