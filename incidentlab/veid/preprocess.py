"""Preprocessing of a VEID capture: decode, resize to 224x224x3, divide by the divisor, order the channels.

Needs Pillow and numpy; touches nothing outside the bytes it is given.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, VeidError

__all__ = ["PreprocessConfig", "preprocess", "tensor_stats", "INPUT_SIZE", "CHANNEL_ORDERS"]

#: Height and width of the model's input, in pixels.
INPUT_SIZE = 224
CHANNEL_ORDERS = ("RGB", "BGR")
#: The divisor that maps 8-bit pixels onto [0, 1].
DEFAULT_DIVISOR = 255.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """Settings of the preprocessing: ``divisor`` of the pixel values and the ``channel_order`` fed to the model."""

    divisor: float = DEFAULT_DIVISOR
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if isinstance(self.divisor, bool) or not isinstance(self.divisor, (int, float)) or not self.divisor > 0:
            raise ConfigError(f"divisor={self.divisor!r} is invalid; use a positive number (255 maps pixels to [0, 1])")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order={self.channel_order!r} is invalid; use one of {', '.join(CHANNEL_ORDERS)}")


def preprocess(data: bytes, config: PreprocessConfig) -> np.ndarray:
    """Decode an image and return the model's float32 input tensor of shape (224, 224, 3).

    Takes encoded image bytes (JPEG, PNG, ...) and the preprocessing settings. Raises VeidError
    when the bytes are not an image Pillow can decode.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    except UnidentifiedImageError as exc:
        raise VeidError(f"the capture ({len(data)} bytes) is not an image format Pillow can identify; "
                        "send JPEG or PNG bytes") from exc
    except (OSError, ValueError) as exc:  # a truncated or corrupt file of a known format
        raise VeidError(f"the capture ({len(data)} bytes) could not be decoded: {exc}; "
                        "send a complete JPEG or PNG file") from exc
    tensor = np.asarray(rgb, dtype=np.float32) / np.float32(config.divisor)
    if config.channel_order == "BGR":
        tensor = tensor[:, :, ::-1]
    return tensor


def tensor_stats(tensor: np.ndarray) -> dict:
    """Return the mean, standard deviation, minimum and maximum of a preprocessed tensor's pixels."""
    return {"mean": float(tensor.mean()), "std": float(tensor.std()),
            "min": float(tensor.min()), "max": float(tensor.max())}
