"""Procedural sticker images for the demo data: emotion -> colour and face, identity -> shape.

Every sticker is a coloured shape with a face on a patterned background:
- the *emotion* (0..6, class order of ``data.ser30k.EMOTIONS``) sets the fill colour and the mouth
  (and the eyes/brows of Fear and Anger), so an image classifier can learn it;
- the *shape* (0..7, :data:`SHAPES`) is the sticker's identity inside its set;
- the *style* (background tint and pattern) is shared by one sticker set or SER30K topic.
Jitter (position, size, brightness, pixel noise) keeps images of one class from being identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Fill colour per emotion; saturated so they stand apart from the pastel backgrounds.
EMOTION_COLORS = (
    (255, 140, 0),  # Surprise: orange
    (250, 215, 0),  # Happiness: yellow
    (100, 170, 40),  # Disgust: green
    (140, 70, 200),  # Fear: purple
    (40, 100, 230),  # Sadness: blue
    (220, 30, 30),  # Anger: red
    (150, 150, 150),  # Neutral: gray
)
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "frame", "ellipse")
PATTERNS = ("plain", "stripes", "dots", "checker", "diagonal")
_INK = np.array((40, 30, 30), dtype=np.float32)


@dataclass(frozen=True)
class Style:
    """Look shared by one sticker set / SER30K topic."""

    background: tuple[int, int, int]
    pattern: int


def random_style(rng: np.random.Generator) -> Style:
    """A pastel background colour and a pattern."""
    background = tuple(int(v) for v in rng.integers(195, 250, size=3))
    return Style(background=background, pattern=int(rng.integers(len(PATTERNS))))


def _background(style: Style, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    cell = size / 8
    pattern = PATTERNS[style.pattern]
    if pattern == "stripes":
        mark = (yy // cell) % 2 == 0
    elif pattern == "dots":
        mark = ((xx % (2 * cell)) - cell) ** 2 + ((yy % (2 * cell)) - cell) ** 2 < (cell / 2) ** 2
    elif pattern == "checker":
        mark = ((xx // cell) + (yy // cell)) % 2 == 0
    elif pattern == "diagonal":
        mark = ((xx + yy) // cell) % 2 == 0
    else:
        mark = np.zeros_like(xx, dtype=bool)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = np.array(style.background, dtype=np.float32)
    image[mark] -= 22.0
    return image


def _shape_mask(shape: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    name = SHAPES[shape]
    if name == "circle":
        return dx**2 + dy**2 < r**2
    if name == "square":
        return np.maximum(ax, ay) < 0.85 * r
    if name == "triangle":  # apex up, base below the centre
        return (dy > -r) & (dy < 0.75 * r) & (ax < (dy + r) / 1.75)
    if name == "diamond":
        return ax + ay < 1.15 * r
    if name == "cross":
        return ((ax < 0.38 * r) & (ay < r)) | ((ay < 0.38 * r) & (ax < r))
    if name == "ring":
        return (dx**2 + dy**2 < r**2) & (dx**2 + dy**2 > (0.55 * r) ** 2)
    if name == "frame":
        edge = np.maximum(ax, ay)
        return (edge < 0.9 * r) & (edge > 0.5 * r)
    return (dx / r) ** 2 + (dy / (0.6 * r)) ** 2 < 1.0  # ellipse


def _face(emotion: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Mask of the eyes, brows and mouth that show the emotion."""
    eye_r = 0.15 * r if emotion == 3 else 0.1 * r  # Fear: wide eyes
    eyes = ((np.abs(dx) - 0.32 * r) ** 2 + (dy + 0.22 * r) ** 2) < eye_r**2
    half, line = 0.42 * r, 0.07 * r
    inside = np.abs(dx) < half
    base = 0.28 * r
    u = dx / half
    if emotion == 0:  # Surprise: round open mouth
        mouth = (dx / (0.17 * r)) ** 2 + ((dy - 0.38 * r) / (0.22 * r)) ** 2 < 1.0
    elif emotion == 1:  # Happiness: smile, centre lower than the corners
        mouth = inside & (np.abs(dy - (base + 0.22 * r * (1 - u**2))) < line)
    elif emotion == 2:  # Disgust: wavy line
        mouth = inside & (np.abs(dy - (base + 0.1 * r * np.sin(u * 2 * np.pi))) < line)
    elif emotion == 3:  # Fear: wide clenched mouth
        mouth = (dx / (0.36 * r)) ** 2 + ((dy - 0.36 * r) / (0.1 * r)) ** 2 < 1.0
    elif emotion == 4:  # Sadness: frown, corners lower than the centre
        mouth = inside & (np.abs(dy - (base + 0.22 * r * u**2)) < line)
    else:  # Anger and Neutral: flat line
        mouth = inside & (np.abs(dy - base - 0.12 * r) < line)
    face = eyes | mouth
    if emotion == 5:  # Anger: brows slanting down towards the nose
        brow_y = -0.42 * r + 0.25 * (0.5 * r - np.abs(dx))
        face |= (np.abs(dx) > 0.15 * r) & (np.abs(dx) < 0.5 * r) & (np.abs(dy - brow_y) < line)
    return face


def draw_sticker(
    emotion: int, shape: int, style: Style, rng: np.random.Generator, size: int = 64
) -> np.ndarray:
    """One sticker image, ``[size, size, 3] uint8``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image = _background(style, yy, xx, size)
    cx, cy = (size / 2 + rng.uniform(-0.05, 0.05, size=2) * size).tolist()
    r = size * 0.34 * float(rng.uniform(0.92, 1.05))
    dx, dy = xx - cx, yy - cy
    brightness = float(rng.uniform(0.9, 1.06))
    color = np.clip(np.array(EMOTION_COLORS[emotion], dtype=np.float32) * brightness, 0, 255)
    image[_shape_mask(shape, dx, dy, r)] = color
    image[_face(emotion, dx, dy, r)] = _INK
    image += rng.normal(0.0, 5.0, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def round_alpha(size: int) -> np.ndarray:
    """An alpha channel that hides the corners outside the inscribed circle (``[size, size]``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    inside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 2) ** 2
    return np.where(inside, 255, 0).astype(np.uint8)
