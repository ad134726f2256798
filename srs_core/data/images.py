"""Sticker and image decoding to ``[H, W, 3] uint8`` RGB arrays.

Sticker ``.npy`` files are parsed header first (:func:`read_npy`): a data file is never
unpickled, and an array is only built when the file holds all the bytes its header claims.
Images whose header claims more than :data:`MAX_IMAGE_PIXELS` pixels, and stickers or images
with a side over :data:`srs_core.data.limits.MAX_IMAGE_SIDE` (``image_too_large``), are not
decoded.
Transparent pixels (``H×W×4`` arrays, RGBA/LA/P images) are composited over white, because a
transparent sticker's hidden RGB values are arbitrary (often black) and people see it on a
light chat background.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np

from srs_core.data import limits
from srs_core.data.report import DataProblem

GRAY = 127  # value of the padding image that stands in for a missing candidate
# A compressed image's header may claim any size; decoding allocates width x height x 4 bytes.
# 32 M pixels (e.g. 8192 x 4096) is far above any sticker and keeps one decode under ~130 MB.
MAX_IMAGE_PIXELS = 1 << 25
# Library messages may hold object reprs ("<_io.BytesIO object at 0x...>", "<ast.Name object
# at 0x...>") that say nothing to a person; DataProblem already names the file.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _message(exc: BaseException) -> str:
    return _OBJECT_REPR.sub("(a Python object)", str(exc)) or type(exc).__name__


def _check_side(sides: tuple[int, ...], where: str) -> None:
    """``image_too_large`` when a sticker array's height or width is over the limit."""
    if sides and max(sides) > limits.MAX_IMAGE_SIDE:
        size = "x".join(map(str, sides))
        raise DataProblem("image_too_large", where, f"{size} (HxW) pixels: a side may be at "
                          f"most {limits.MAX_IMAGE_SIDE} (limits.MAX_IMAGE_SIDE)")


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


# First bytes of files that are sometimes saved where an .npy belongs, for the message.
_KNOWN_MAGIC = ((b"PK\x03\x04", "a zip archive (.npz?)"), (b"\x89PNG", "a PNG image"),
                (b"\xff\xd8\xff", "a JPEG image"), (b"\x80", "a Python pickle"))
_NPY_MAGIC = b"\x93NUMPY"


def _not_npy(data: bytes, where: str) -> DataProblem:
    kind = next((name for magic, name in _KNOWN_MAGIC if data.startswith(magic)), None)
    start = data[:8].hex(" ") or "nothing (empty file)"
    detail = f"not an .npy file: it starts with {start}" + (f", {kind}" if kind else "")
    return DataProblem("npy_corrupt", where, detail + f"; an .npy file starts with "
                       f"{_NPY_MAGIC.hex(' ')}")


def read_npy(data: bytes, where: str) -> np.ndarray:
    """The array in ``.npy`` bytes, checked before anything is allocated.

    The header may claim any shape, so it is parsed first and ``shape x itemsize`` compared
    with the bytes present: memory stays proportional to the file, however large its header
    says the array is. Object dtypes (pickles) and non-numeric dtypes are refused unread.
    """
    stream = io.BytesIO(data)
    if not data.startswith(_NPY_MAGIC):
        raise _not_npy(data, where)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:  # 3.0 only adds UTF-8 field names of structured dtypes: never an image
            raise ValueError(f"npy format version {version[0]}.{version[1]} is not supported "
                             "for images (1.0 and 2.0 are)")
    except (ValueError, SyntaxError, RecursionError, TypeError) as exc:
        raise DataProblem("npy_corrupt", where, f"malformed .npy header: {_message(exc)}") from None
    if dtype.hasobject:
        raise DataProblem("npy_corrupt", where, "object arrays (pickles) are refused")
    if dtype.kind not in "iuf":
        raise DataProblem("npy_bad_values", where, f"dtype {dtype} is not a numeric image type")
    if any(n < 0 for n in shape):
        raise DataProblem("npy_corrupt", where, f"header shape {shape} has a negative size")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    present = len(data) - stream.tell()
    if present < expected:
        raise DataProblem("npy_corrupt", where, f"truncated: the header says {dtype} {shape}, "
                          f"{expected} bytes of data, but the file has {present}")
    _check_side(shape[:2], where)  # before the array is viewed, converted or resized
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def decode_npy(data: bytes, where: str) -> np.ndarray:
    """Parse ``.npy`` bytes without unpickling (:func:`read_npy`) and normalise to HxWx3 uint8."""
    pixels = to_rgb_uint8(read_npy(data, where), where)
    # read_npy's array is a read-only view of ``data``; callers get their own writable copy
    return np.require(pixels, requirements=["C", "W"])


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode an image file's bytes (any Pillow format and mode) to HxWx3 uint8 RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if width * height > MAX_IMAGE_PIXELS:
                raise DataProblem("image_corrupt", where, f"{width}x{height} pixels is more than "
                                  f"the {MAX_IMAGE_PIXELS} an image may have")
            if max(width, height) > limits.MAX_IMAGE_SIDE:
                raise DataProblem("image_too_large", where, f"{width}x{height} pixels: a side "
                                  f"may be at most {limits.MAX_IMAGE_SIDE} "
                                  "(limits.MAX_IMAGE_SIDE)")
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            )
            if has_alpha:
                rgba = np.asarray(image.convert("RGBA"))
                return _over_white(rgba[..., :3], rgba[..., 3])
            return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    except UnidentifiedImageError:
        start = data[:8].hex(" ") or "nothing (empty file)"
        raise DataProblem("image_corrupt", where,
                          f"not an image file Pillow can read: it starts with {start}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated/garbled files as OSError or SyntaxError depending on format
        raise DataProblem("image_corrupt", where, _message(exc)) from None
    except Image.DecompressionBombError as exc:
        raise DataProblem("image_corrupt", where, str(exc)) from None
