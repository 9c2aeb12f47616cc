"""A procedural image-caption world for pretraining a small CLIP offline (issue 5, part 1).

A scene is one object: a shape, a colour, a fill (solid, striped, dotted, outline), a size
(small, large) and a position, on one of several backgrounds (noise, gradient, checker, plain).
Its caption names the attributes ("a photo of a small red striped triangle"), with a few
phrasings so the text tower sees variety. Everything is a pure function of (seed, index): the
same arguments always give the same image and caption, in any process and in any order, which
is what a resumable, multi-worker pretraining run and a regression test need.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from dga.train.synthetic import _COLOURS, _SHAPES, _shape_points, _stable_int

SHAPES = tuple(_SHAPES)  # circle square triangle diamond star hexagon
COLOURS = tuple(_COLOURS)  # red green blue yellow orange purple pink cyan
FILLS = ("solid", "striped", "dotted", "outline")
SIZES = ("small", "large")
BACKGROUNDS = ("noise", "gradient", "checker", "plain")
TEMPLATES = (
    "a photo of a {size} {colour} {fill} {shape}.",
    "a {size} {colour} {fill} {shape}.",
    "a picture of a {colour} {shape}, {fill} and {size}.",
    "a {fill} {shape} in {colour}, {size}.",
)
_FILL_WORDS = {"solid": "solid", "striped": "striped", "dotted": "dotted", "outline": "outlined"}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    fill: str
    size: str
    background: str

    def caption(self, template: int = 0) -> str:
        text = TEMPLATES[template % len(TEMPLATES)].format(
            size=self.size, colour=self.colour, fill=_FILL_WORDS[self.fill], shape=self.shape)
        return re.sub(r"\ba ([aeiou])", r"an \1", text)  # "an orange", "an outlined"

    @property
    def label(self) -> str:
        """The attribute combination a caption names (what zero-shot accuracy is scored on)."""
        return f"{self.size} {self.colour} {self.fill} {self.shape}"


def sample_scene(rng: np.random.Generator, shapes=SHAPES, colours=COLOURS, fills=FILLS, sizes=SIZES) -> Scene:
    return Scene(shapes[rng.integers(len(shapes))], colours[rng.integers(len(colours))],
                 fills[rng.integers(len(fills))], sizes[rng.integers(len(sizes))],
                 BACKGROUNDS[rng.integers(len(BACKGROUNDS))])


def _background(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    dark = bool(rng.integers(0, 2))
    base = np.array(rng.integers(15, 80, size=3) if dark else rng.integers(175, 245, size=3), dtype=np.float64)
    if kind == "plain":
        arr = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "gradient":
        ramp = np.linspace(-30, 30, size)[:, None, None] * (1 if rng.integers(0, 2) else -1)
        arr = base + (ramp if rng.integers(0, 2) else ramp.transpose(1, 0, 2))
    elif kind == "checker":
        cell = int(rng.integers(max(2, size // 16), max(3, size // 6)))
        yy, xx = np.mgrid[0:size, 0:size]
        arr = base + (((yy // cell + xx // cell) % 2) * 24 - 12)[..., None]
    else:  # noise
        arr = base + rng.normal(0.0, 14.0, size=(size, size, 3))
    return np.clip(np.broadcast_to(arr, (size, size, 3)), 0, 255).copy()


def fill_pattern(fill: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean [size, size]: where the object's colour shows inside its silhouette."""
    yy, xx = np.mgrid[0:size, 0:size]
    if fill == "striped":
        period = max(4, size // 12)
        angle = rng.uniform(0, math.pi)
        proj = xx * math.cos(angle) + yy * math.sin(angle)
        return (proj // (period / 2)) % 2 == 0
    if fill == "dotted":
        period = max(5, size // 10)
        r = period * 0.3
        return ((yy % period - period / 2) ** 2 + (xx % period - period / 2) ** 2) <= r * r
    return np.ones((size, size), dtype=bool)


def tinted(colour: str, rng: np.random.Generator) -> np.ndarray:
    """The RGB of a named colour with a random tint of +-18 per channel (float64)."""
    return np.array(_COLOURS[colour][0], dtype=np.float64) + rng.integers(-18, 19, size=3)


def add_grain(arr: np.ndarray, rng: np.random.Generator) -> None:
    """Light sensor grain, N(0, 3) per value, in place."""
    arr += rng.normal(0.0, 3.0, size=arr.shape)


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw a scene at ``size`` x ``size`` pixels (RGB)."""
    arr = _background(rng, scene.background, size)
    frac = rng.uniform(0.25, 0.40) if scene.size == "small" else rng.uniform(0.55, 0.80)
    s = max(4, int(frac * size))
    x0, y0 = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    width = max(1, s // 10)
    box = (x0, y0, x0 + s - 1, y0 + s - 1)
    if scene.fill == "outline":
        if scene.shape == "circle":
            draw.ellipse(box, outline=255, width=width)
        elif scene.shape == "square":
            draw.rectangle(box, outline=255, width=width)
        else:
            pts = _shape_points(scene.shape, x0, y0, s - 1)
            draw.line([*pts, pts[0]], fill=255, width=width, joint="curve")
        inside = np.asarray(mask_img) > 0
    else:
        if scene.shape == "circle":
            draw.ellipse(box, fill=255)
        elif scene.shape == "square":
            draw.rectangle(box, fill=255)
        else:
            draw.polygon(_shape_points(scene.shape, x0, y0, s - 1), fill=255)
        inside = (np.asarray(mask_img) > 0) & fill_pattern(scene.fill, size, rng)
    arr[inside] = tinted(scene.colour, rng)
    add_grain(arr, rng)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def example(seed: int, index: int, size: int = 224, **vocab) -> tuple[Image.Image, str, Scene]:
    """The index-th (image, caption, scene) of the world with this seed: a pure function."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, _stable_int("scene"), index])
    scene = sample_scene(rng, **vocab)
    caption = scene.caption(int(rng.integers(len(TEMPLATES))))
    return render(scene, size, rng), caption, scene
