"""The embedded downstream benchmark ``scene-fills-24`` (issue 5, part 3).

24 fine classes = 6 colours x 4 fills ("red striped", "blue dotted", ...; template "This is a photo
of a {} shape."), grouped by colour into 6 super-classes. Each colour has its own two usual shapes
(red things are circles or stars, blue ones squares or diamonds, ...; 15 % of objects take any of
the 6 shapes), so classes of one colour look alike and a hierarchy built from visual prototypes has
something to find, while the fill (texture) is what separates the classes inside a group. Size,
position and background are nuisances.

Every image is framed: a decorative mat 6-11 % of the side wide, striped, dotted or solid in one of
the six class colours (drawn independently of the class), round an object rendered inside it, as in
a collection of scanned album photos. Pretraining shrank half of its images onto plain frames
(grey, colour or noise) but never showed a patterned one, and the mat's colour and pattern are the
very cues the classes are told apart by: a domain shift of the kind input-space reprogramming is
for. (On a prototype, a plain single-colour frame barely moved zero-shot, 82.7 -> 80.8 %; the
patterned mat takes it to 67.2 %.) Without frames (the first version of this benchmark) VP's
border watermark had nothing to fix: it stayed at zero-shot over every setting tried (82.7 vs
82.7), and even a per-class logit bias fitted on the test set itself reached only 82.8: zero-shot's
errors there are perceptual (small dotted or striped objects read as outlined), not calibration.
With frames on half of the images (prototype) VP fell below zero-shot (75.8 vs 76.8, seeds 1 and
2), so the shift is on every image: one domain, not a mixture.

It is a task the small CLIP was not pretrained on: its captions always named size and shape and
never tied a shape to a colour; here class names leave both out, the shape is a (noisy) cue of the
super-class, and images are rendered at 112-160 px (pretraining saw 64 px renders upsampled). The
description files cover every role the methods read: ``default`` (DGA's T_0), ``des``/``dist``
(AttrVR) and three causes, shape / colour / texture (DVP-cse). Everything is a pure function of the
seed. (A first design, 6 shapes x 4 fills, was dropped: the small CLIP's shape features are too weak
for any method to move off zero-shot there; see the README.)
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from dga.fsutil import atomic_write
from dga.train.scenes import BACKGROUNDS, SHAPES, SIZES, Scene, add_grain, fill_pattern, render, tinted
from dga.train.synthetic import _COLOURS, _SHAPES, _stable_int

NAME = "scene-fills-24"
FILLS = ("solid", "striped", "dotted", "outline")
FILL_WORDS = {"solid": "solid", "striped": "striped", "dotted": "dotted", "outline": "outlined"}
# super-class (colour) -> its two usual shapes
PALETTES = {
    "red": ("circle", "star"), "green": ("triangle", "hexagon"), "blue": ("square", "diamond"),
    "yellow": ("star", "circle"), "purple": ("diamond", "hexagon"), "cyan": ("square", "triangle"),
}
OFF_PALETTE = 0.15  # probability that an object takes any of the 6 shapes
RENDER_SIZES = (112, 160)  # inclusive range of image sides, drawn per image
FRAME_WIDTH = (0.06, 0.11)  # frame width as a fraction of the side (13-25 px at 224: inside VP's 30-px border)
FRAME_PATTERNS = ("solid", "striped", "dotted")
FRAME_BASE = 235.0  # the mat's pale ground, under its pattern
DEFAULT_PER_SPLIT = {"train": 32, "val": 8, "test": 25}
TEMPLATE = "This is a photo of a {} shape."  # class names are "<colour> <fill>"

# fill -> (how it looks, what it resembles, how it differs)
_FILL_INFO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "solid": (("one even colour over the whole inside", "no pattern inside its outline", "a fully filled body",
               "a flat, uniform surface", "no gaps in its colour"),
              ("a sticker", "a paper cut-out", "a coloured tile")),
    "striped": (("parallel stripes across its body", "alternating bands of colour and background",
                 "straight lines running at an angle", "a banded pattern inside the outline",
                 "evenly spaced stripes"),
                ("a zebra pattern", "a striped awning", "a barcode")),
    "dotted": (("small round dots inside its outline", "a grid of coloured spots", "a polka-dot pattern",
                "background showing between the dots", "evenly spaced dots"),
               ("polka-dot fabric", "a ladybird's spots", "a pegboard")),
    "outline": (("only a coloured border", "an empty inside showing the background", "a thin line tracing its edge",
                 "no fill at all inside", "a hollow body"),
                ("a wire frame", "a stencil line", "a chalk outline")),
}


def class_name(colour: str, fill: str) -> str:
    return f"{colour}_{FILL_WORDS[fill]}"


def classes() -> list[tuple[str, str, str]]:
    """(folder name, colour, fill) for every class, sorted by folder name (ImageFolder order)."""
    return sorted((class_name(c, f), c, f) for c in PALETTES for f in FILLS)


def superclass_of(name: str) -> str:
    """The super-class (colour) of a fine class folder name."""
    return name.partition("_")[0]


def draw(colour: str, fill: str, rng: np.random.Generator):
    """One benchmark image of class (colour, fill): a PIL RGB image of a random side in RENDER_SIZES."""
    shapes = SHAPES if rng.random() < OFF_PALETTE else PALETTES[colour]
    scene = Scene(shapes[rng.integers(len(shapes))], colour, fill, SIZES[rng.integers(len(SIZES))],
                  BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    side = int(rng.integers(RENDER_SIZES[0], RENDER_SIZES[1] + 1))
    width = frame_width(side, rng)
    inner = render(scene, side - 2 * width, rng)
    return framed(inner, width, rng)


def frame_width(side: int, rng: np.random.Generator) -> int:
    """The frame's width in pixels for an image of ``side`` px (a fraction in FRAME_WIDTH of it)."""
    return max(2, int(round(rng.uniform(*FRAME_WIDTH) * side)))


def framed(inner: Image.Image, width: int, rng: np.random.Generator) -> Image.Image:
    """``inner`` (PIL RGB) inside a ``width``-px frame: a pattern in one of the class colours on a pale mat."""
    side = inner.size[0] + 2 * width
    rgb = tinted(list(PALETTES)[rng.integers(len(PALETTES))], rng)
    arr = np.full((side, side, 3), FRAME_BASE)
    arr[fill_pattern(FRAME_PATTERNS[rng.integers(len(FRAME_PATTERNS))], side, rng)] = rgb
    add_grain(arr, rng)  # the same grain as the scene
    arr[width:side - width, width:side - width] = np.asarray(inner, dtype=np.float64)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def make_benchmark(root: str | os.PathLike[str], per_split: dict[str, int] | None = None, seed: int = 0,
                   descriptions: bool = True) -> list[str]:
    """Write ``root/<split>/<class>/<i>.jpg|png`` (+ description files); return the class names.

    Every fifth image is a PNG, the rest JPEG (quality 90). Each image has its own generator seeded
    from (seed, split, class, index): files are byte-identical for the same arguments.
    """
    root = Path(root)
    counts = dict(DEFAULT_PER_SPLIT if per_split is None else per_split)
    names = [c[0] for c in classes()]
    for split, n in counts.items():
        for name, colour, fill in classes():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed & 0xFFFFFFFF, _stable_int(NAME, split), _stable_int(name), i])
                img = draw(colour, fill, rng)
                buf = io.BytesIO()
                png = i % 5 == 4
                img.save(buf, format="PNG" if png else "JPEG", **({} if png else {"quality": 90}))
                atomic_write(folder / f"{i}.{'png' if png else 'jpg'}", buf.getvalue())
    if descriptions:
        write_descriptions(root)
    return names


# ------------------------------------------------------------------------------------- descriptions


def _default(colour: str, fill: str) -> list[str]:
    fw, (sa, sb) = FILL_WORDS[fill], PALETTES[colour]
    looks, likes = _FILL_INFO[fill]
    _, cadj, things, shades = _COLOURS[colour]
    n = f"{colour} {fw} shape"
    out = [f"a photo of a {n}.", f"a {n}, usually a {sa} or a {sb}.", f"a {colour} {fw} {sa} on a background.",
           f"a {colour} {fw} {sb} on a background.", f"a picture of a single {n}.", f"a {cadj} {colour} {fw} object."]
    out += [f"a {colour} shape with {x}." for x in looks]
    out += [f"a {fw} shape coloured like {x}." for x in things]
    out += [f"a {shades[0]} {fw} shape.", f"a {shades[1]} {fw} figure."]
    out += [f"a {colour} shape patterned like {x}." for x in likes]
    out += [f"a small {n} on a plain or noisy background.", f"a large {n} filling much of the picture."]
    return out


def _des(colour: str, fill: str) -> list[str]:
    fw, (sa, sb) = FILL_WORDS[fill], PALETTES[colour]
    looks, likes = _FILL_INFO[fill]
    _, cadj, things, shades = _COLOURS[colour]
    n = f"{colour} {fw} shape"
    out = [f"the {n} shows {x}." for x in looks]
    out += [f"its colour resembles {x}." for x in things]
    out += [f"its pattern resembles {x}." for x in likes]
    out += [f"the {n} is {colour}, a {cadj} colour.", f"its colour is {colour}, close to {shades[0]}.",
            f"its tint can lean towards {shades[1]}.", f"the {n} is most often a {sa}.",
            f"the {n} is often a {sb}.", f"its outline is usually a {sa} or a {sb}.",
            f"the {n} can be small or large.", f"the {n} may appear anywhere in the frame.",
            f"the {n} sits on a plain, checked, graded or noisy background."]
    return out


def _dist(colour: str, fill: str) -> list[str]:
    fw = FILL_WORDS[fill]
    looks, _ = _FILL_INFO[fill]
    n = f"{colour} {fw} shape"
    out = []
    for f2 in FILLS:
        if f2 != fill:
            out.append(f"unlike the {colour} {FILL_WORDS[f2]} shape, this {colour} one shows {looks[0]}.")
            out.append(f"it has the colour of the {colour} {FILL_WORDS[f2]} shape but a {fw} body.")
    for c2 in PALETTES:
        if c2 != colour:
            out.append(f"unlike the {c2} {fw} shape, this {fw} shape is {colour}.")
    out += [f"what distinguishes the {n} is {looks[1]}.", f"only the {n} combines {colour} with {looks[2]}.",
            f"its outline hints at {colour}: usually a {' or a '.join(PALETTES[colour])}.",
            f"pattern alone does not identify it: other {fw} shapes exist.",
            f"colour alone does not identify it: other {colour} shapes have other patterns.",
            f"the {n} is told apart by colour and pattern together.",
            f"among the {colour} shapes, only this one is {fw}.", f"among the {fw} shapes, only this one is {colour}.",
            f"the {n} is neither another colour nor another pattern."]
    return out


# Cause descriptions as an LLM asked "describe the <cause> of a <class>" writes them: every sentence
# names the class it describes, then says something about that one cause only. (A first version
# left the class out, so the colour file of "red striped" equalled that of "red dotted": DVP-cse's
# PRM, which weighs descriptions by how high the true class scores on them, then put 72 % of its
# weight on colour sentences that cannot tell fills apart, and fell 20 points below zero-shot.)


def _cause_shape(colour: str, fill: str) -> list[str]:
    n = f"{colour} {FILL_WORDS[fill]} shape"
    out = []
    for shape in PALETTES[colour]:
        sadj, feats, things = _SHAPES[shape]
        out += [f"the {n} can be a {shape} with {x}." for x in feats]
        out += [f"the {n} is often shaped like {things[0]}.", f"the outline of the {n} may be a {shape}.",
                f"the {n} is a {sadj} figure, often a {shape}.", f"the silhouette of the {n}: a {shape}."]
    sa, sb = PALETTES[colour]
    out += [f"the {n} is a {sa} or a {sb}, seen straight on.", f"the {n} is a geometric figure: a {sa} or a {sb}."]
    return out


def _cause_colour(colour: str, fill: str) -> list[str]:
    n = f"{colour} {FILL_WORDS[fill]} shape"
    _, cadj, things, shades = _COLOURS[colour]
    out = [f"the {n} is coloured like {x}." for x in things] + [f"the {n} has the colour of {x}." for x in things]
    out += [f"a photo of the {n}, which is {colour}.", f"the {n} is plainly {colour} in the picture.",
            f"the {n} has a {cadj} {colour} colour.", f"the {n} is a patch of {shades[0]} colour.",
            f"the {n} looks {shades[1]} in colour.", f"the {n} is drawn in {colour}.",
            f"the colour of the {n} is {colour}.", f"the {colour} hue of the {n} stands out from the background.",
            f"the {n} is a vivid {colour} region in the image.", f"the {n} has a {colour} tone, varying in shade.",
            f"the colour {colour} of the {n} is clearly visible.", f"the {n} is a saturated {colour}.",
            f"the {n} is a {cadj} shade of {colour}.", f"the {n} is coloured {shades[0]} or {shades[1]}."]
    return out


def _cause_texture(colour: str, fill: str) -> list[str]:
    fw = FILL_WORDS[fill]
    n = f"{colour} {fw} shape"
    looks, likes = _FILL_INFO[fill]
    out = [f"the {n} has {x}." for x in looks] + [f"the {n} shows {x}." for x in looks]
    out += [f"the pattern of the {n} is like {x}." for x in likes]
    out += [f"the surface of the {n} is patterned like {x}." for x in likes]
    out += [f"the {n} has a {fw} fill in the picture.", f"the {n} is {fw} on a background.",
            f"the texture of the {n} is {fw}.", f"the {fw} pattern of the {n} is clearly visible.",
            f"a close-up of the {fw} surface of the {n}.", f"the {n} has a {fw} design, drawn flat.",
            f"the fill of the {n} is {fw}."]
    return out


def write_descriptions(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the six description files into ``root``; return role -> path (roles of ``--descriptions``,
    ``--des``, ``--dist`` and ``--cause`` in that order: shape, colour, texture)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    builders = {
        "default": ("descriptions.json", _default),
        "des": ("desattr.json", _des),
        "dist": ("distattr.json", _dist),
        "cause0": ("cause_shape.json", _cause_shape),
        "cause1": ("cause_colour.json", _cause_colour),
        "cause2": ("cause_texture.json", _cause_texture),
    }
    paths = {}
    for role, (fname, build) in builders.items():
        data = {name: list(dict.fromkeys(build(c, f))) for name, c, f in classes()}
        atomic_write(root / fname, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
        paths[role] = root / fname
    return paths
