"""Seeded procedural identity captures: well-exposed genuine faces against dark, blurred or face-less ones.

Pure numpy and Pillow on this machine; nothing is read from disk.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["CAPTURE_KINDS", "TRAFFIC_MIX", "generate_capture", "encode_jpeg", "traffic_kind", "capture_bytes"]

#: Kinds of capture, genuine first.
CAPTURE_KINDS = ("genuine", "dark", "blurred", "faceless")
#: Share of each kind in normal verification traffic.
TRAFFIC_MIX = {"genuine": 0.82, "dark": 0.06, "blurred": 0.06, "faceless": 0.06}
#: Camera frame size (height, width); the preprocessing resizes it to 224x224.
FRAME_SHAPE = (240, 320)
JPEG_QUALITY = 90


def traffic_kind(rng: random.Random) -> str:
    """Return the kind of the next capture of normal traffic, drawn with TRAFFIC_MIX's shares."""
    return rng.choices(list(TRAFFIC_MIX), weights=list(TRAFFIC_MIX.values()))[0]


def generate_capture(rng: random.Random, kind: str = "genuine") -> np.ndarray:
    """Draw one capture of ``kind`` as an RGB uint8 array of FRAME_SHAPE.

    Takes a seeded random.Random, so the same seed gives the same capture. Raises ValueError
    for a kind outside CAPTURE_KINDS.
    """
    if kind not in CAPTURE_KINDS:
        raise ValueError(f"capture kind {kind!r} is unknown; use one of {', '.join(CAPTURE_KINDS)}")
    noise = np.random.default_rng(rng.getrandbits(32))
    frame = _background(rng, noise)
    if kind == "faceless":
        _draw_object(frame, rng)
    else:
        _draw_face(frame, rng)
    frame *= rng.uniform(0.85, 1.1)  # exposure of a usable capture
    if kind == "dark":
        frame *= rng.uniform(0.12, 0.4)
    frame += noise.normal(0.0, 6.0, frame.shape).astype(np.float32)
    image = np.clip(frame, 0, 255).astype(np.uint8)
    if kind == "blurred":
        blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(3.0, 7.0)))
        image = np.asarray(blurred)
    return image


def encode_jpeg(image: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as JPEG bytes, as a camera uploads a capture."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def capture_bytes(seed: int, kind: str = "genuine") -> bytes:
    """Return the JPEG bytes of the capture of ``kind`` drawn from ``seed``."""
    return encode_jpeg(generate_capture(random.Random(seed), kind))


def _background(rng: random.Random, noise: np.random.Generator) -> np.ndarray:
    height, width = FRAME_SHAPE
    base = np.array([rng.uniform(90, 200) for _ in range(3)])
    ramp = np.linspace(-1.0, 1.0, height)[:, None, None] * rng.uniform(10, 40)
    return (np.broadcast_to(base, (height, width, 3)) + ramp).astype(np.float32)


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    ys, xs = np.ogrid[:shape[0], :shape[1]]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0


def _draw_face(frame: np.ndarray, rng: random.Random) -> None:
    height, width = FRAME_SHAPE
    cy, cx = height / 2 + rng.uniform(-12, 12), width / 2 + rng.uniform(-16, 16)
    ry, rx = rng.uniform(70, 95), rng.uniform(50, 68)
    # Skin tones: red above green above blue, across light and dark skin.
    light = rng.uniform(0.55, 1.0)
    skin = np.array([235.0, 180.0, 150.0]) * light + np.array([0.0, rng.uniform(-10, 10), rng.uniform(-15, 5)])
    frame[_ellipse(FRAME_SHAPE, cy, cx, ry, rx)] = skin
    hair = rng.uniform(20, 70)
    frame[_ellipse(FRAME_SHAPE, cy - ry * 0.85, cx, ry * 0.35, rx * 0.95)] = (hair, hair * 0.8, hair * 0.6)
    for side in (-1, 1):
        frame[_ellipse(FRAME_SHAPE, cy - ry * 0.2, cx + side * rx * 0.4, 7, 11)] = (40, 30, 30)
    frame[_ellipse(FRAME_SHAPE, cy + ry * 0.45, cx, 6, rx * 0.35)] = (150, 60, 60)


def _draw_object(frame: np.ndarray, rng: random.Random) -> None:
    """Draw a face-sized object that is not skin: green, blue or grey (an empty seat, a wall, a hand-held card)."""
    height, width = FRAME_SHAPE
    tone = rng.choice([(60.0, 150.0, 90.0), (70.0, 110.0, 200.0), (140.0, 140.0, 150.0)])
    color = np.array(tone) * rng.uniform(0.7, 1.2)
    cy, cx = height / 2 + rng.uniform(-20, 20), width / 2 + rng.uniform(-30, 30)
    frame[_ellipse(FRAME_SHAPE, cy, cx, rng.uniform(40, 90), rng.uniform(40, 80))] = color
