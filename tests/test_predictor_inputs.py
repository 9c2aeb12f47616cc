"""The Predictor's input contract: what it accepts, what it refuses, and never a silent cast."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dga.errors import DgaError, InputError


@pytest.fixture(scope="module")
def predictor(tiny_package):
    from dga.runtime.predictor import Predictor

    p = Predictor.from_package(tiny_package, backend="onnxruntime", batch_size=8)
    yield p
    p.close()


@pytest.fixture(scope="module")
def golden(tiny_package):
    from dga.runtime.package import DeployPackage

    return DeployPackage.load(tiny_package).reference()


def test_empty_batch_gives_empty_outputs(predictor):
    s0, c = predictor.package.s0, len(predictor.classnames)
    calls = len(predictor.batch_latencies)
    for empty in (np.zeros((0, s0, s0, 3), np.uint8), []):
        pred = predictor.predict(empty)
        assert pred.logits.shape == pred.probs.shape == (0, c) and pred.logits.dtype == np.float32
        assert pred.labels() == [] and pred.topk(3) == []
    assert len(predictor.batch_latencies) == calls  # the engine was not called


def test_uint8_batch_reproduces_the_golden_logits(predictor, golden):
    pred = predictor.predict(golden.images)
    np.testing.assert_allclose(pred.logits, golden.logits, atol=1e-3)
    # A batch above the package's maximum (8 here) is split into engine calls of at most 8.
    big = np.concatenate([golden.images, golden.images[:3]])  # 19 images
    calls = len(predictor.batch_latencies)
    pred = predictor.predict(big)
    assert len(predictor.batch_latencies) - calls == 3  # 8 + 8 + 3
    np.testing.assert_allclose(pred.logits[16:], golden.logits[:3], atol=1e-3)
    # Non-contiguous input (every other image) is copied, not refused, and gives the same numbers.
    np.testing.assert_allclose(predictor.predict(golden.images[::2]).logits, golden.logits[::2], atol=1e-3)


def test_floats_need_an_explicit_scale(predictor, golden):
    x = golden.images[:4]
    with pytest.raises(InputError, match="scale='unit'"):
        predictor.predict(x.astype(np.float32) / 255)
    # unit: v / 255 rounds back to v exactly; byte: v as float is v.
    unit = predictor.predict(x.astype(np.float32) / 255, scale="unit")
    byte = predictor.predict(x.astype(np.float64), scale="byte")
    np.testing.assert_array_equal(unit.logits, predictor.predict(x).logits)
    np.testing.assert_array_equal(byte.logits, predictor.predict(x).logits)
    assert np.array_equal(predictor.prepare(np.full((1, *x.shape[1:]), 0.5, np.float32), scale="unit"),
                          np.full((1, *x.shape[1:]), 128, np.uint8))  # 0.5 * 255 = 127.5 -> 128
    wrong = x.astype(np.float32)
    wrong[0, 0, 0] = [0.0, 255.0, 3.0]
    with pytest.raises(InputError, match=r"values in \[0, 1\], but these images hold \[0, 255\]"):
        predictor.predict(wrong, scale="unit")  # [0, 255] floats said to be [0, 1]
    with pytest.raises(InputError, match="scale 'percent' must be one of unit, byte"):
        predictor.predict(x.astype(np.float32), scale="percent")


@pytest.mark.parametrize("make,needle", [
    (lambda s: np.zeros((2, 224, 224, 3), np.uint8), r"shape \(2, 224, 224, 3\) do not fit this package: "
                                                     r"expected \[B, 192, 192, 3\]"),
    (lambda s: np.zeros((2, s, s, 4), np.uint8), r"shape \(2, 192, 192, 4\)"),
    (lambda s: np.zeros((2, 3, s, s), np.uint8), r"shape \(2, 3, 192, 192\)"),
    (lambda s: np.zeros((2, s, s, 3), np.int16), "dtype int16 are not accepted: expected uint8"),
    (lambda s: np.zeros((2, s, s, 3), bool), "dtype bool are not accepted"),
    (lambda s: [np.zeros((50, 60), np.uint8)], r"image 0 has shape \(50, 60\): expected H x W x 3"),
    (lambda s: [np.zeros((50, 60, 3), np.uint16)], "image 0 has dtype uint16"),
    (lambda s: [Image.new("RGB", (40, 40)), 7], "image 1 is a int: expected a PIL image, a path or an array"),
])
def test_wrong_inputs_are_refused_with_one_sentence(predictor, make, needle):
    assert predictor.package.s0 == 192
    with pytest.raises(InputError, match=needle) as info:
        predictor.predict(make(predictor.package.s0))
    assert "\n" not in str(info.value)


def test_images_of_any_size_and_paths_go_through_the_eval_transform(predictor, tmp_path):
    from dga.runtime.preprocess import eval_image

    rng = np.random.default_rng(3)
    pil = [Image.fromarray(rng.integers(0, 256, (120 + 20 * i, 150, 3), dtype=np.uint8)) for i in range(3)]
    expected = np.stack([eval_image(im, 192) for im in pil])
    np.testing.assert_array_equal(predictor.prepare(pil), expected)
    np.testing.assert_array_equal(predictor.prepare([np.asarray(im) for im in pil]), expected)
    paths = []
    for i, im in enumerate(pil):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    np.testing.assert_array_equal(predictor.prepare(paths), expected)  # lossless PNG: the same pixels
    np.testing.assert_array_equal(predictor.prepare(str(paths[0])), expected[:1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DgaError, match="bad.png"):
        predictor.predict([paths[0], tmp_path / "bad.png"])
