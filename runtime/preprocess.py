"""The one eval-time image transform, shared by training, export checks and the runtime.

Resize the shorter side to ``size`` (bicubic with antialiasing, PIL), then centre-crop
``size x size``. Rounding follows torchvision's ``Resize``/``CenterCrop`` so numbers match the
CLIP preprocessing users know. Output is uint8 HWC RGB: what the deployed graph takes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, CMYK, RGBA, I;16, ...) to RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip (PIL's convert("L") clips).
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: transparent regions become background, not black.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def eval_image(img: Image.Image, size: int) -> np.ndarray:
    """PIL image of any mode -> uint8 array [size, size, 3] (RGB)."""
    img = center_crop(resize_shorter_side(to_rgb(img), size), size)
    return np.asarray(img, dtype=np.uint8)
