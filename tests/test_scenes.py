"""The procedural image-caption world: determinism, captions, and that attributes are visible."""

from __future__ import annotations

import numpy as np

from dga.train.scenes import COLOURS, FILLS, SHAPES, SIZES, Scene, example, render


def test_examples_are_a_pure_function_of_seed_and_index():
    a_img, a_cap, a_scene = example(7, 123, size=64)
    b_img, b_cap, b_scene = example(7, 123, size=64)
    assert a_cap == b_cap and a_scene == b_scene
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
    c_img, c_cap, _ = example(8, 123, size=64)
    assert not np.array_equal(np.asarray(a_img), np.asarray(c_img)) or a_cap != c_cap


def test_captions_name_every_attribute():
    scene = Scene("triangle", "red", "striped", "small", "noise")
    assert scene.caption(0) == "a photo of a small red striped triangle."
    for t in range(4):
        cap = scene.caption(t)
        assert all(word in cap for word in ("small", "red", "striped", "triangle"))
    assert Scene("circle", "blue", "outline", "large", "plain").caption(1) == "a large blue outlined circle."
    assert Scene("circle", "orange", "outline", "large", "plain").caption(3) == "an outlined circle in orange, large."
    orange_star = Scene("star", "orange", "dotted", "small", "plain")
    assert orange_star.caption(2) == "a picture of an orange star, dotted and small."


def test_vocabulary_is_covered_over_many_examples():
    scenes = [example(0, i, size=32)[2] for i in range(400)]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.fill for s in scenes} == set(FILLS)
    assert {s.size for s in scenes} == set(SIZES)


def _object_pixels(scene: Scene) -> int:
    rng = np.random.default_rng(0)
    arr = np.asarray(render(scene, 96, rng)).astype(int)
    target = {"red": (215, 35, 35)}[scene.colour]
    return int((np.abs(arr - np.array(target)).max(axis=2) < 40).sum())


def test_fill_and_size_change_how_much_colour_shows():
    solid_large = _object_pixels(Scene("square", "red", "solid", "large", "plain"))
    solid_small = _object_pixels(Scene("square", "red", "solid", "small", "plain"))
    striped = _object_pixels(Scene("square", "red", "striped", "large", "plain"))
    outline = _object_pixels(Scene("square", "red", "outline", "large", "plain"))
    assert solid_large > 2 * solid_small
    assert 0.25 * solid_large < striped < 0.75 * solid_large
    assert outline < 0.5 * solid_large
