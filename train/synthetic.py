"""Deterministic synthetic image-classification trees for demos and tests (pure PIL + numpy).

``make_shapes_dataset`` draws coloured shapes on noisy light/dark backgrounds into an ImageFolder
tree ``root/<split>/<colour>_<shape>/<i>.png`` (a few ``.jpg``); classes sharing a colour look alike,
so a label hierarchy has something to find. ``write_descriptions`` writes matching CuPL-style
description files (``{class name: [sentence, ...]}``) for the default, AttrVR (des/dist) and
per-cause (shape/colour/texture) roles. The same arguments always give byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from dga.fsutil import atomic_write

DEFAULT_PER_SPLIT: Mapping[str, int] = {"train": 8, "val": 4, "test": 4}
MIN_SENTENCES = 25
MIN_CHARS = 20

# name -> (base RGB, adjective, things of that colour, shade words)
_COLOURS: dict[str, tuple[tuple[int, int, int], str, tuple[str, ...], tuple[str, ...]]] = {
    "red": ((215, 35, 35), "warm", ("a ripe tomato", "a fire engine", "a stop sign"), ("scarlet", "crimson")),
    "green": ((35, 165, 60), "fresh", ("a fresh leaf", "spring grass", "a lime"), ("emerald", "leafy")),
    "blue": ((35, 75, 215), "cool", ("a clear sky", "the deep ocean", "a sapphire"), ("azure", "cobalt")),
    "yellow": ((235, 205, 30), "sunny", ("a lemon", "a sunflower", "a school bus"), ("golden", "lemon")),
    "orange": ((240, 130, 25), "warm", ("an orange", "a pumpkin", "a traffic cone"), ("tangerine", "amber")),
    "purple": ((130, 45, 170), "rich", ("a plum", "lavender flowers", "an amethyst"), ("violet", "lilac")),
    "pink": ((240, 120, 170), "soft", ("a flamingo", "cherry blossom", "bubble gum"), ("rose", "salmon")),
    "cyan": ((30, 200, 210), "bright", ("tropical water", "a turquoise stone", "ice"), ("turquoise", "aqua")),
}

# name -> (adjective, distinctive features, things of that shape)
_SHAPES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "circle": (
        "round",
        ("a round outline", "no corners at all", "a smooth curved edge", "the same width in every direction",
         "one continuous curved border"),
        ("a coin", "a full moon", "a dinner plate"),
    ),
    "square": (
        "boxy",
        ("four equal straight sides", "four right-angled corners", "parallel opposite edges",
         "a flat top and a flat bottom edge", "sharp square corners"),
        ("a floor tile", "a box seen from above", "a chessboard cell"),
    ),
    "triangle": (
        "pointed",
        ("three straight sides", "three sharp corners", "a pointed tip at the top", "a wide flat base",
         "slanted edges that meet at a point"),
        ("a warning sign", "a slice of pizza", "a mountain peak"),
    ),
    "diamond": (
        "angular",
        ("four slanted sides", "a point at the top and at the bottom", "corners to the left and right",
         "a rhombus outline standing on one tip", "edges tilted at forty-five degrees"),
        ("a playing-card diamond", "a kite", "a road sign turned on its corner"),
    ),
    "star": (
        "spiky",
        ("five pointed arms", "sharp tips around the edge", "inner corners between the arms",
         "a jagged, radiating outline", "a centre with spikes sticking out"),
        ("a starfish", "a sheriff badge", "a Christmas tree topper"),
    ),
    "hexagon": (
        "six-sided",
        ("six equal straight sides", "six blunt corners", "a flat top and bottom edge",
         "an outline like a honeycomb cell", "angles wider than a right angle"),
        ("a honeycomb cell", "a nut for a bolt", "a floor tile in a bathroom"),
    ),
}


# --------------------------------------------------------------------------------------------- utils


def _stable_int(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def _colour_info(colour: str) -> tuple[tuple[int, int, int], str, tuple[str, ...], tuple[str, ...]]:
    if colour in _COLOURS:
        return _COLOURS[colour]
    try:
        rgb = ImageColor.getrgb(colour)[:3]
    except ValueError as e:
        raise ValueError(f"unknown colour {colour!r}: use one of {sorted(_COLOURS)} or a PIL colour name") from e
    return (int(rgb[0]), int(rgb[1]), int(rgb[2])), "vivid", (f"something painted {colour}",), (colour, colour)


def _shape_info(shape: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    if shape not in _SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {sorted(_SHAPES)}")
    return _SHAPES[shape]


def class_names(shapes: Sequence[str], colours: Sequence[str]) -> list[str]:
    """``<colour>_<shape>`` for every pair, sorted (the order ImageFolder gives the folders)."""
    return sorted(f"{c}_{s}" for c in colours for s in shapes)


def _split_class(name: str) -> tuple[str, str]:
    colour, _, shape = name.partition("_")
    if not shape:
        raise ValueError(f"class name {name!r} is not of the form <colour>_<shape>")
    return colour, shape



# -------------------------------------------------------------------------------------------- images


def _shape_points(shape: str, x0: float, y0: float, s: float) -> list[tuple[float, float]]:
    cx, cy, r = x0 + s / 2, y0 + s / 2, s / 2
    if shape == "triangle":
        return [(cx, y0), (x0 + s, y0 + s), (x0, y0 + s)]
    if shape == "diamond":
        return [(cx, y0), (x0 + s, cy), (cx, y0 + s), (x0, cy)]
    if shape == "hexagon":
        return [(cx + r * math.cos(math.pi / 3 * k), cy + r * math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + math.pi / 5 * k
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(shape)


def _draw_image(rng: np.random.Generator, colour: str, shape: str, size: int) -> Image.Image:
    dark = bool(rng.integers(0, 2))
    base = rng.integers(15, 70) if dark else rng.integers(185, 245)
    tint = rng.integers(-12, 13, size=3)
    noise = rng.normal(0.0, 12.0, size=(size, size, 3))
    bg = np.clip(base + tint + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, mode="RGB")

    lo, hi = math.ceil(0.35 * size), max(math.ceil(0.35 * size), math.floor(0.70 * size))
    s = int(rng.integers(lo, hi + 1))
    x0 = int(rng.integers(0, size - s + 1))
    y0 = int(rng.integers(0, size - s + 1))
    rgb, _, _, _ = _colour_info(colour)
    jitter = rng.integers(-20, 21, size=3)
    fill = tuple(int(v) for v in np.clip(np.array(rgb) + jitter, 0, 255))

    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((x0, y0, x0 + s - 1, y0 + s - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x0 + s - 1, y0 + s - 1), fill=fill)
    else:
        draw.polygon(_shape_points(shape, x0, y0, s - 1), fill=fill)

    arr = np.asarray(img, dtype=np.float64) + rng.normal(0.0, 4.0, size=(size, size, 3))  # light grain
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def make_shapes_dataset(
    root: str | os.PathLike[str],
    shapes: Sequence[str] = ("circle", "square", "triangle"),
    colours: Sequence[str] = ("red", "green", "blue"),
    per_split: Mapping[str, int] | None = None,
    size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Write ``root/<split>/<colour>_<shape>/<i>.png`` (every fourth image ``<i>.jpg``); return the class names.

    ``per_split`` maps split name -> images per class (default train 8, val 4, test 4). Each image
    has its own generator seeded from (seed, split, class, index), so files are byte-identical for
    the same arguments whatever else changes. Shapes fill 35 % to 70 % of the side, at a random
    position, in a slightly jittered colour, on a light or dark noisy background.
    """
    if size < 8:
        raise ValueError(f"image size {size} is too small; use at least 8 pixels")
    for s in shapes:
        _shape_info(s)
    for c in colours:
        _colour_info(c)
    counts = dict(DEFAULT_PER_SPLIT if per_split is None else per_split)
    names = class_names(shapes, colours)
    if len(set(names)) != len(names):
        raise ValueError(f"shapes {list(shapes)} / colours {list(colours)} repeat a class")
    root = Path(root)
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"split {split!r} asks for {n} images per class")
        for name in names:
            colour, shape = _split_class(name)
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed & 0xFFFFFFFF, _stable_int(split), _stable_int(name), i])
                img = _draw_image(rng, colour, shape, size)
                buf = io.BytesIO()
                if i % 4 == 3:
                    img.save(buf, format="JPEG", quality=92)
                    path = folder / f"{i}.jpg"
                else:
                    img.save(buf, format="PNG", optimize=False)
                    path = folder / f"{i}.png"
                atomic_write(path, buf.getvalue())
    return names


# ------------------------------------------------------------------------------------- descriptions


def _dedupe_pad(sentences: list[str], minimum: int, filler: list[str]) -> list[str]:
    out = list(dict.fromkeys(x for x in sentences if len(x) >= MIN_CHARS))  # unique, long enough, in order
    for s in filler:
        if len(out) >= minimum:
            break
        if s not in out:
            out.append(s)
    k = 0
    while len(out) < minimum:  # only reachable for pathological inputs
        out.append(f"{filler[k % len(filler)]} (view {k // len(filler) + 2})")
        k += 1
    return out


def _default_sentences(colour: str, shape: str) -> list[str]:
    _, cadj, cthings, shades = _colour_info(colour)
    sadj, feats, sthings = _shape_info(shape)
    n = f"{colour} {shape}"
    out = [
        f"a photo of a {n}.",
        f"a photo of a {n}, a {sadj} shape.",
        f"a bright {colour} {sadj} object on a plain background.",
        f"a {cadj} {colour} {shape} drawn on a noisy backdrop.",
        f"a simple picture of a {n}.",
        f"a flat {colour} {shape} with a solid fill.",
        f"a {colour} shape that is a {shape}.",
        f"a {shape} painted in {colour}.",
        f"a {shades[0]} {shape} against a light or dark background.",
        f"a {shades[1]} {shape} in a small square image.",
        f"an image showing one {n}.",
        f"a close-up of a single {n}.",
        f"a {n}, coloured like {cthings[0]}.",
        f"a {n} that looks like {sthings[0]}.",
        f"a {colour} {shape} about the colour of {cthings[-1]}.",
        f"a {sadj}, {colour} figure shaped like {sthings[-1]}.",
        f"a graphic of a {n} placed off-centre.",
        f"a {colour} {shape} of medium size in the frame.",
        f"a large {n} filling much of the picture.",
        f"a small {n} on a grainy background.",
    ]
    out += [f"a {n} with {f}." for f in feats]
    out += [f"a {colour} object with {f}." for f in feats[:2]]
    out += [f"a low-resolution drawing of a {n}.", f"a synthetic image of a {colour} {shape}."]
    return out


def _des_sentences(colour: str, shape: str) -> list[str]:
    _, cadj, cthings, shades = _colour_info(colour)
    sadj, feats, sthings = _shape_info(shape)
    n = f"{colour} {shape}"
    out = [f"the {n} has {f}." for f in feats]
    out += [f"the {shape} is {colour}, a {cadj} colour.", f"its colour is {colour}, close to {shades[0]}."]
    out += [f"its colour resembles {t}." for t in cthings]
    out += [f"its outline resembles {t}." for t in sthings]
    out += [
        f"the {n} is filled with one solid colour.",
        f"the {n} has crisp, hard edges.",
        f"the {n} sits on a noisy light or dark background.",
        f"the {n} is {sadj} in outline.",
        f"the {n} covers a third to two thirds of the image width.",
        f"the {n} has a flat surface without shading.",
        f"the {n} has a {shades[1]} tint that varies slightly.",
        f"the {n} is a two-dimensional drawn figure.",
        f"the {n} has no text or pattern on it.",
        f"the {n} is the only object in the picture.",
        f"the {n} may appear anywhere in the frame.",
        f"the {n} shows clear contrast with its background.",
    ]
    return out


def _dist_sentences(colour: str, shape: str, classnames: Sequence[str]) -> list[str]:
    sadj, feats, _ = _shape_info(shape)
    n = f"{colour} {shape}"
    out: list[str] = []
    unrelated: list[str] = []  # classes differing in both colour and shape: least informative, capped
    for other in classnames:
        oc, os_ = _split_class(other)
        if (oc, os_) == (colour, shape):
            continue
        if os_ == shape:
            out.append(f"unlike the {oc} {shape}, this one is {colour}.")
            out.append(f"it has the same outline as the {oc} {shape}, but its colour is {colour}.")
        elif oc == colour:
            out.append(f"unlike the {colour} {os_}, this one is a {shape}.")
            out.append(f"it shares the {colour} colour of the {colour} {os_}, but it has {feats[0]}.")
        elif len(unrelated) < 6:
            unrelated.append(f"unlike the {oc} {os_}, this is a {colour} {shape}.")
    out += unrelated
    out += [
        f"its {colour} colour sets the {shape} apart from shapes of other colours.",
        f"its {sadj} outline sets it apart from other {colour} shapes.",
        f"what distinguishes the {n} is {feats[1]}.",
        f"the {n} can be told apart by {feats[2]}.",
        f"only the {n} combines {feats[0]} with a {colour} fill.",
        f"a {colour} {shape} is identified by colour and outline together.",
        f"colour alone does not identify the {n}: other {colour} shapes exist.",
        f"outline alone does not identify the {n}: other {shape}s come in other colours.",
        f"the {n} differs from the others in {feats[3]}.",
        f"compared with the other classes, the {n} shows {feats[4]}.",
    ]
    return out


def _cause_shape(shape: str) -> list[str]:
    sadj, feats, sthings = _shape_info(shape)
    out = [f"a {shape} with {f}." for f in feats]
    out += [f"an object with {f}." for f in feats]
    out += [f"a {shape} shaped like {t}." for t in sthings]
    out += [
        f"a photo of a single {shape}.",
        f"a {sadj} {shape} in the picture.",
        f"the outline of a {shape}.",
        f"a simple {sadj} figure, a {shape}.",
        f"a geometric {shape} drawn flat.",
        f"the silhouette of a {shape}.",
        f"a {shape}, recognisable by its outline.",
        f"a figure whose form is a {shape}.",
        f"a solid {shape} seen straight on.",
        f"a {shape} of medium size in the frame.",
        f"a small {sadj} shape, a {shape}.",
        f"a large {shape} taking up much of the picture.",
    ]
    return out


def _cause_colour(colour: str) -> list[str]:
    _, cadj, cthings, shades = _colour_info(colour)
    out = [f"something coloured like {t}." for t in cthings]
    out += [f"an object the colour of {t}." for t in cthings]
    out += [
        f"a photo of something {colour}.",
        f"a plain {colour} object in the picture.",
        f"a bright {colour} fill on the object.",
        f"a {cadj} {colour} colour on the object.",
        f"a patch of {shades[0]} colour.",
        f"a {shades[1]} coloured object.",
        f"a surface painted solid {colour}.",
        f"a simple figure drawn in {colour}.",
        f"an item whose colour is {colour}.",
        f"a {colour} hue standing out from the background.",
        f"a vivid {colour} region in the image.",
        f"a {colour} tone, slightly varying in shade.",
        f"the colour {colour}, clearly visible.",
        f"a saturated {colour} object.",
        f"a {colour} thing on a grey background.",
        f"mostly {colour} pixels in the middle of the object.",
        f"a {cadj} shade of {colour}.",
        f"an object coloured {shades[0]} or {shades[1]}.",
        f"a {colour} form against a light or dark backdrop.",
    ]
    return out


def _cause_texture(colour: str, shape: str) -> list[str]:
    n = f"{colour} {shape}"
    return [
        f"the {n} has a smooth, flat surface.",
        f"the {n} is evenly filled with no pattern.",
        f"the {n} shows only a faint grain.",
        f"the {n} has no stripes, spots or gradients.",
        f"the {n} has crisp edges against its surroundings.",
        f"the {n} lies on a grainy, noisy background.",
        f"the {n} has a matte look without highlights.",
        f"the {n} is drawn as a solid flat region.",
        f"the {n} has a uniform texture throughout.",
        f"the {n} looks like flat vector art.",
        f"the background around the {n} is speckled with noise.",
        f"the {n} has a plain, untextured fill.",
        f"the {n} shows slight pixel noise over its fill.",
        f"the {n} has no shading or depth cues.",
        f"the {n} is sharp-edged, not blurred.",
        f"the {n} has no outline stroke, only a fill.",
        f"the surface of the {n} is smooth like paper.",
        f"the {n} sits on a mottled background texture.",
        f"the {n} has a clean, solid appearance.",
        f"the {n} shows fine grain from image noise.",
        f"the {n} has the texture of a flat sticker.",
        f"the {n} contrasts with the rough noisy backdrop.",
        f"the {n} has no visible brush strokes.",
        f"the {n} is rendered without any pattern.",
        f"the {n} has a homogeneous surface.",
        f"the {n} has slightly compressed, blocky pixels in some images.",
    ]


def _filler(role: str, colour: str, shape: str) -> list[str]:
    """Extra sentences used only if a builder came up short; they respect the role's cause."""
    n = {"cause0": shape, "cause1": f"{colour} object"}.get(role, f"{colour} {shape}")
    return [f"another picture of a {n}.", f"one more example of a {n}.", f"a further view of a {n}."]


def write_descriptions(root: str | os.PathLike[str], classnames: Sequence[str]) -> dict[str, Path]:
    """Write CuPL-style description files for ``<colour>_<shape>`` classes into ``root``.

    Files: ``descriptions.json`` (role ``default``), ``desattr.json`` (``des``: attributes of the
    class), ``distattr.json`` (``dist``: what tells it apart from the others), ``cause_shape.json``,
    ``cause_colour.json``, ``cause_texture.json`` (``cause0..2``: one cause each; shape sentences
    never name the colour and colour sentences never name the shape). Keys are the class names as
    given; every class gets at least 25 sentences of at least 20 characters. Returns role -> path.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    parsed = {name: _split_class(name) for name in classnames}
    builders = {
        "default": ("descriptions.json", lambda c, s: _default_sentences(c, s)),
        "des": ("desattr.json", lambda c, s: _des_sentences(c, s)),
        "dist": ("distattr.json", lambda c, s: _dist_sentences(c, s, list(classnames))),
        "cause0": ("cause_shape.json", lambda c, s: _cause_shape(s)),
        "cause1": ("cause_colour.json", lambda c, s: _cause_colour(c)),
        "cause2": ("cause_texture.json", lambda c, s: _cause_texture(c, s)),
    }
    paths: dict[str, Path] = {}
    for role, (fname, build) in builders.items():
        data: dict[str, list[str]] = {}
        for name, (c, s) in parsed.items():
            data[name] = _dedupe_pad(build(c, s), MIN_SENTENCES, _filler(role, c, s))
        path = root / fname
        text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
        atomic_write(path, text.encode("utf-8"))
        paths[role] = path
    return paths


def sample_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n generated shape images as uint8 [n, size, size, 3] (export self-checks, benchmarks)."""
    shapes, colours = tuple(_SHAPES_FOR_SAMPLES), tuple(_COLOURS_FOR_SAMPLES)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 7, i])
        img = _draw_image(rng, colours[i % len(colours)], shapes[(i // len(colours)) % len(shapes)], size)
        out[i] = np.asarray(img, dtype=np.uint8)
    return out


_SHAPES_FOR_SAMPLES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
_COLOURS_FOR_SAMPLES = ("red", "green", "blue")
