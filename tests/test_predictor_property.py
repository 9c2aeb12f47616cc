"""Property-based tests of the Predictor (hypothesis): random shapes, dtypes, batch sizes 0-130 and random
bytes as files. It never fails outside its documented errors (``dga.errors.DgaError``: InputError for a
refused input, DecodeError for a file that cannot be decoded); its outputs are always ``[B, C]`` and
finite, probabilities sum to 1, and no engine call exceeds the package's maximum batch."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from dga.errors import DgaError, InputError

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_,
          np.complex64]
SCALES = [None, "unit", "byte", "percent"]
BATCHES = st.one_of(st.sampled_from([0, 1, 7, 8, 9, 16, 17, 129, 130]), st.integers(0, 130))


class SpyRunner:
    """The real runner, recording the size of every engine call."""

    def __init__(self, runner):
        self.runner, self.calls = runner, []
        self.name, self.precision, self.max_batch, self.on_cpu = runner.name, runner.precision, runner.max_batch, True

    def infer(self, images):
        self.calls.append(len(images))
        return self.runner.infer(images)

    def close(self):
        self.runner.close()


@pytest.fixture(scope="module")
def predictor(tiny_package):
    from dga.runtime.backends import open_runner
    from dga.runtime.package import DeployPackage
    from dga.runtime.predictor import Predictor

    package = DeployPackage.load(tiny_package)
    p = Predictor(package, SpyRunner(open_runner(package, "onnxruntime", "fp32")), topk=3, batch_size=64)
    yield p
    p.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A fresh path for each generated file."""
    root = tmp_path_factory.mktemp("property_files")
    counter = itertools.count()
    return lambda suffix: root / f"{next(counter)}{suffix}"


def check_outputs(predictor, preds, b: int) -> None:
    c = len(predictor.classnames)
    assert preds.logits.shape == (b, c) and preds.probs.shape == (b, c)
    assert preds.logits.dtype == np.float32 and preds.probs.dtype == np.float32
    assert np.isfinite(preds.logits).all() and np.isfinite(preds.probs).all()
    assert (preds.probs >= 0).all()
    np.testing.assert_allclose(preds.probs.sum(1), np.ones(b), atol=1e-5)
    assert len(preds.labels()) == b and all(len(row) == min(3, c) for row in preds.topk(3))


def predict_or_refuse(predictor, images, scale, b: int):
    """The prediction for ``b`` images, or the documented refusal; the engine calls are checked."""
    calls = predictor.runner.calls
    calls.clear()
    try:
        preds = predictor.predict(images, scale=scale)
    except DgaError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert calls == []  # refused before any engine call
        return None
    check_outputs(predictor, preds, b)
    assert sum(calls) == b and all(1 <= n <= predictor.package.max_batch for n in calls)
    return preds


@st.composite
def shaped_batches(draw):
    """[B, S0, S0, 3] arrays of any dtype and range, as a caller might hand them over (B up to 130)."""
    return (draw(BATCHES), draw(st.sampled_from(DTYPES)), draw(st.sampled_from(["unit", "byte", "wide", "nan"])),
            draw(st.sampled_from(SCALES)), draw(st.integers(0, 2**32 - 1)))


def make_batch(b, dtype, values, s0, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, (b, s0, s0, 3), dtype=np.uint8)
    x = rng.random((b, s0, s0, 3)) * {"unit": 1.0, "byte": 255.0, "wide": 600.0, "nan": 1.0}[values]
    if values == "wide":
        x -= 100.0
    if values == "nan" and x.size:
        x.flat[rng.integers(x.size)] = np.nan
    if not np.issubdtype(dtype, np.inexact):
        x = np.nan_to_num(x)  # an integer or bool array cannot hold NaN
    return x.astype(dtype)


@SETTINGS
@given(spec=shaped_batches())
def test_shaped_batches(predictor, spec):
    b, dtype, values, scale, seed = spec
    s0 = predictor.package.s0
    x = make_batch(b, dtype, values, s0, seed)
    dtype = np.dtype(dtype)
    floating = np.issubdtype(dtype, np.floating)
    top = {"unit": 1.0, "byte": 255.0}.get(scale)
    in_range = x.size == 0 or (np.isfinite(x).all() and x.min() >= 0 and top is not None and x.max() <= top)
    expected_ok = dtype == np.uint8 or (floating and scale in ("unit", "byte") and in_range)
    preds = predict_or_refuse(predictor, x, scale, b)
    assert (preds is not None) == expected_ok, (b, dtype, values, scale)
    if preds is not None and floating:
        # Rounded to uint8 as by hand: values * (255 for unit, 1 for byte), to nearest, clipped.
        by_hand = np.clip(np.rint(x.astype(np.float64) * (255.0 if scale == "unit" else 1.0)), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(predictor.prepare(x, scale), by_hand)


@SETTINGS
@given(x=hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6)),
       scale=st.sampled_from(SCALES))
def test_arrays_of_any_shape(predictor, x, scale):
    """Any small array: a 4-D one is a batch (refused unless [B, S0, S0, 3]); a 3-D one is one image."""
    b = x.shape[0] if x.ndim == 4 else 1
    preds = predict_or_refuse(predictor, x, scale, b)
    s0 = predictor.package.s0
    if x.ndim == 4 and x.shape[1:] != (s0, s0, 3) or x.ndim not in (3, 4):
        assert preds is None  # never resized or reinterpreted silently


def _encoded(rng, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (int(rng.integers(1, 48)), int(rng.integers(1, 48)), 3),
                                 dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@st.composite
def file_bytes(draw):
    """Random bytes, or a real PNG/JPEG/GIF cut at a random point, with a name suffix."""
    kind = draw(st.sampled_from(["random", "png", "jpeg", "gif", "empty"]))
    if kind == "random":
        return draw(st.binary(max_size=600)), draw(st.sampled_from([".jpg", ".png", ".bin"]))
    if kind == "empty":
        return b"", ".jpg"
    data = _encoded(np.random.default_rng(draw(st.integers(0, 2**16))), kind.upper())
    cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    return data[:cut], "." + kind


MODES = ["RGB", "L", "RGBA", "LA", "P", "1", "I", "I;16", "F", "CMYK"]


@st.composite
def images(draw, files):
    """One thing handed to predict(): a PIL image, an HxWxC array, a path, or not an image at all."""
    kind = draw(st.sampled_from(["pil", "array", "path", "missing", "object"]))
    if kind == "pil":
        mode = draw(st.sampled_from(MODES))
        return Image.new(mode, (draw(st.integers(0, 40)), draw(st.integers(0, 40))), color=draw(st.integers(0, 255)))
    if kind == "array":
        return draw(hnp.arrays(st.sampled_from([np.uint8, np.float32, np.int16]),
                               st.tuples(st.integers(0, 30), st.integers(0, 30), st.sampled_from([1, 2, 3, 4]))))
    if kind == "object":
        return draw(st.sampled_from([None, 3, 2.5, b"\xff\xd8", ["nested"], {"a": 1}]))
    path = files(".png")
    if kind == "path":
        data, suffix = draw(file_bytes())
        path = files(suffix)
        path.write_bytes(data)
    return str(path) if draw(st.booleans()) else path


@SETTINGS
@given(data=st.data(), scale=st.sampled_from([None, "unit", "byte"]))
def test_lists_of_images_and_objects(predictor, files, data, scale):
    items = data.draw(st.lists(images(files), max_size=4))
    preds = predict_or_refuse(predictor, items, scale, len(items))
    if preds is None:
        return
    one = data.draw(st.sampled_from(items)) if items else None
    if one is not None and isinstance(one, Image.Image | np.ndarray):  # a single image is a batch of one
        check_outputs(predictor, predictor.predict(one, scale=scale), 1)


@SETTINGS
@given(data=st.data(), scale=st.sampled_from([None, "unit"]))
def test_not_images_at_all(predictor, data, scale):
    """Neither an image nor a list of them: InputError, never a TypeError (nor an empty answer)."""
    thing = data.draw(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.booleans(),
                                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                                st.sets(st.integers(), max_size=2)))
    before = len(predictor.runner.calls)
    with pytest.raises(InputError, match="are not accepted: expected an array, a PIL image, a path or a list"):
        predictor.predict(thing, scale=scale)
    assert len(predictor.runner.calls) == before


@SETTINGS
@given(data=st.data())
def test_predict_paths_gives_one_result_per_file(predictor, files, data):
    """Random bytes as files: one Result per path, in order; a prediction or a one-sentence error."""
    from dga.runtime.decode import REASONS

    entries = data.draw(st.lists(file_bytes(), max_size=12))
    paths = []
    for content, suffix in entries:
        path = files(suffix)
        path.write_bytes(content)
        paths.append(str(path))
    results = predictor.predict_paths(paths)
    assert [r.path for r in results] == paths
    c = len(predictor.classnames)
    for r in results:
        if r.ok:
            probs = [p for _, p in r.topk]
            assert len(r.topk) == min(3, c) and probs == sorted(probs, reverse=True)
            assert all(np.isfinite(p) and 0 <= p <= 1 for p in probs)
            assert len({label for label, _ in r.topk}) == len(r.topk)
        else:
            assert r.error in REASONS and r.message and "\n" not in r.message and not r.topk


def test_documented_errors_are_dga_errors():
    from dga.runtime.decode import DecodeError

    assert issubclass(InputError, DgaError) and issubclass(DecodeError, DgaError)
