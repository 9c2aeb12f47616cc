"""The one eval-time image transform, shared by training, export checks and the runtime.

Resize the shorter side to ``size`` (bicubic with antialiasing, PIL), then centre-crop
``size x size``. Geometry and rounding follow torchvision's ``Resize``/``CenterCrop`` so the crop
is the one CLIP users know. Output is uint8 HWC RGB: what the deployed graph takes. Images are
opened (EXIF orientation, any mode to RGB) by ``dga.runtime.decode``, the only decoder.

The two steps run as one: PIL resamples only the crop's box of the source image (``resize(box=)``)
instead of resizing the whole image and throwing the sides away. Same filter, same crop, same
sampling positions, but not always the same values as torchvision's resize-then-crop, for two
reasons: PIL takes the box as 32-bit floats, which moves the filter weights slightly (values 1
level apart, now and then 2); and Pillow 13 picks the order of its two 1-D passes from the input
and output sizes, so for a tall image the box may be resampled vertically first where the whole
image is resampled horizontally first; the first pass is rounded and clipped to 8 bits, so
where bicubic overshoots (hard edges) a few values come out further apart. Measured
(bench/results/preprocess-parity.json, docs/preprocessing.md): on photo-like JPEGs of mixed
sizes 1.7 % of values differ, by 1 level at most (per image from 0 to 19 %); on hard-edged
graphics 0.2 % differ and 0.01 % by more than 2 levels (up to 16); on square images (the demo's
benchmark) nothing differs, as the box is then the whole image. The documented tolerance, checked
by tests/test_preprocess_parity.py: photo-like content within 2 levels everywhere; hard edges
under 0.5 % of values more than 2 levels off. Training's evaluation, export's checks and the
runtime all use this very function, so between them the pixels are identical (dga-infer's JPEG
draft aside, see decode.py). On the mixed-size photos of the end-to-end benchmark resampling only
the box takes about a quarter of the decode CPU time away.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb(img: Image.Image, in_place: bool = False) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, CMYK, RGBA, I;16, ...) to RGB.

    ``in_place=True`` (the decoder's own images) rotates ``img`` itself instead of a copy.
    """
    if in_place:
        ImageOps.exif_transpose(img, in_place=True)
    else:
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


def shorter_side_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to ``size`` (torchvision's rounding)."""
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def crop_box(w: int, h: int, size: int) -> tuple[int, int]:
    """(left, top) of the centred size x size crop of a w x h image."""
    return int(round((w - size) / 2.0)), int(round((h - size) / 2.0))


def eval_image(img: Image.Image, size: int) -> np.ndarray:
    """PIL image of any mode -> uint8 array [size, size, 3] (RGB): the crop's box resampled once."""
    return resize_crop(to_rgb(img), size)


def resize_crop(rgb: Image.Image, size: int) -> np.ndarray:
    """eval_image for an image already through ``to_rgb`` (the decoder's path: no second EXIF pass)."""
    w, h = rgb.size
    new_w, new_h = shorter_side_size(w, h, size)
    left, top = crop_box(new_w, new_h, size)
    if (new_w, new_h) == (w, h):
        return np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
