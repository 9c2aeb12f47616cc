"""The CPU runner's chunk (images per ONNX Runtime call): chosen by measurement, cached, overridable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dga.errors import ConfigError
from dga.runtime.backends import onnxruntime as ortb


class FakeGraph:
    """``call(n)`` of probe_chunk: seconds from a table, every call recorded."""

    def __init__(self, seconds):
        self.seconds, self.calls = seconds, []

    def __call__(self, n: int) -> float:
        self.calls.append(n)
        return self.seconds(n)


def test_probe_sizes():
    assert ortb.probe_sizes(1) == [1]
    assert ortb.probe_sizes(8) == [1, 2, 4, 8]
    assert ortb.probe_sizes(10) == [1, 2, 4, 8, 10]  # the package's largest batch: the whole-batch candidate


def test_choose_chunk_by_hand():
    # ViT-B/16 size: the cost per image rises with the images per call -> one image per call
    assert ortb.choose_chunk({1: 1.8, 2: 2.0, 4: 2.4}) == 1
    # a small graph: fastest per image at 4, slower again at 8 -> slices of 4
    assert ortb.choose_chunk({1: 0.020, 2: 0.015, 4: 0.012, 8: 0.013}) == 4
    # still falling at the largest size timed: no slicing (never slower than the whole batch)
    assert ortb.choose_chunk({1: 3.0, 2: 2.0, 4: 1.0}) is None
    # a tie goes to the larger slice (fewer calls), and so does a difference under 3 %:
    # 1.95 and 1.97 ms are within 3 % of 1.93 (up to 1.988), so 8, the largest: no slicing
    assert ortb.choose_chunk({1: 1.0, 2: 1.0, 4: 1.2}) == 2
    assert ortb.choose_chunk({1: 3.96, 2: 1.95, 4: 1.93, 8: 1.97}) is None
    assert ortb.choose_chunk({1: 3.96, 2: 1.95, 4: 1.93, 8: 2.00}) == 4


def test_probe_at_vit_b_size_stops_where_the_curve_turns():
    """1.8 s for one image, 3.8 s for 2, 9.6 s for 4, 24 s for 8: budget 30 s.

    A cold and a timed one-image call (3.6 s). Size 2: predicted warm-up + timed call at 1.8 s per
    image = 7.2 s (10.8 <= 30): run, 1.9 s per image, 5.6 % slower than 1.8 (over the 3 %
    tolerance, under the 10 % that ends a probe at once). Size 4: predicted 14.4 s (11.2 + 14.4 =
    25.6 <= 30): run, 2.4 s per image, the second slower size in a row: stop. Calls 1, 1, 2, 2,
    4, 4; spent 1.8 + 1.8 + 3.8 + 3.8 + 9.6 + 9.6 = 30.4 s.
    """
    graph = FakeGraph(lambda n: {1: 1.8, 2: 3.8, 4: 9.6, 8: 24.0}.get(n, 3.0 * n))
    probe = ortb.probe_chunk(graph, max_batch=64, budget_s=30.0)
    assert graph.calls == [1, 1, 2, 2, 4, 4]
    assert probe.per_image_s == pytest.approx({1: 1.8, 2: 1.9, 4: 2.4})
    assert probe.spent_s == pytest.approx(30.4)
    assert probe.skipped == [8, 16, 32, 64]
    assert probe.chunk == 1


def test_probe_ends_at_one_clear_rise_on_a_long_call():
    """1.8 s per image at 1, 2.1 s at 2 (a 4.2 s call, 16.7 % slower): no need to time 4."""
    graph = FakeGraph(lambda n: {1: 1.8, 2: 4.2}.get(n, 2.5 * n))
    probe = ortb.probe_chunk(graph, max_batch=8, budget_s=30.0)
    assert graph.calls == [1, 1, 2, 2] and probe.skipped == [4, 8] and probe.chunk == 1


def test_probe_stops_at_the_budget():
    """2 s per image flat: size 2 predicted 8 s (4 + 8 = 12 <= 13): run (12 s spent); size 4
    predicted 16 s: past the budget, not run. Equal per-image times: the larger slice, which is the
    largest timed: no slicing."""
    graph = FakeGraph(lambda n: 2.0 * n)
    probe = ortb.probe_chunk(graph, max_batch=16, budget_s=13.0)
    assert graph.calls == [1, 1, 2, 2] and probe.spent_s == pytest.approx(12.0)
    assert probe.skipped == [4, 8, 16] and probe.chunk is None


def test_probe_of_a_cheap_graph_times_every_size_three_times():
    """4 ms per call plus 1 ms per image: cheaper per image the more images a call gets (5, 3, 2,
    1.5 ms at 1, 2, 4, 8): the whole batch, no slicing. Calls under 50 ms are timed 3 times, each
    size after a warm-up call."""
    graph = FakeGraph(lambda n: 0.004 + 0.001 * n)
    probe = ortb.probe_chunk(graph, max_batch=8, budget_s=30.0)
    assert graph.calls == [1, 1, 1, 1] + [2] * 4 + [4] * 4 + [8] * 4
    assert probe.per_image_s == pytest.approx({1: 0.005, 2: 0.003, 4: 0.002, 8: 0.0015})
    assert probe.chunk is None and probe.skipped == []


def test_probe_with_no_room_keeps_one_image():
    graph = FakeGraph(lambda n: 10.0 * n)
    probe = ortb.probe_chunk(graph, max_batch=8, budget_s=5.0)
    assert graph.calls == [1, 1] and probe.per_image_s == {1: 10.0}
    assert probe.chunk is None  # nothing to compare with: no slicing


def test_parse_chunk():
    assert ortb.parse_chunk("auto", "x") == "auto"
    assert ortb.parse_chunk(None, "x") is None and ortb.parse_chunk("whole", "x") is None
    assert ortb.parse_chunk(3, "x") == 3 and ortb.parse_chunk("12", "x") == 12
    for bad in (0, -2, "three", "0"):
        with pytest.raises(ConfigError, match="must be auto, whole or a positive number"):
            ortb.parse_chunk(bad, "cpu_chunk")


def test_cache_file_keyed_trimmed_and_robust(tmp_path, monkeypatch):
    cache = ortb.ChunkCache(tmp_path / "c" / "ort-chunk.json")
    assert cache.get("a") is None  # no file yet
    cache.put("a", {"chunk": 1, "measured": "2000-01-01T00:00:01+00:00"})
    cache.put("b", {"chunk": None, "measured": "2000-01-01T00:00:02+00:00"})
    assert cache.get("a")["chunk"] == 1 and cache.get("b")["chunk"] is None
    monkeypatch.setattr(ortb, "CHUNK_CACHE_ENTRIES", 2)
    cache.put("c", {"chunk": 4, "measured": "2000-01-01T00:00:03+00:00"})
    assert set(json.loads(cache.path.read_text())) == {"b", "c"}  # the oldest measurement went
    cache.put("d", {"chunk": 0, "measured": "2000-01-01T00:00:04+00:00"})
    assert cache.get("d") is None  # not a valid chunk: measured again
    cache.path.write_text("{not json")
    assert cache.entries() == {}
    cache.put("e", {"chunk": 2, "measured": "2000-01-01T00:00:05+00:00"})
    assert json.loads(cache.path.read_text()) == {"e": {"chunk": 2, "measured": "2000-01-01T00:00:05+00:00"}}


def test_cache_key_names_graph_precision_threads_and_host():
    key = ortb.chunk_cache_key("abc123", "fp32", None)
    assert key.startswith("abc123|fp32|threads=default|cpus=")
    assert ortb.cpu_model() in key and "onnxruntime=" in key
    assert ortb.chunk_cache_key("abc124", "fp32", None) != key
    assert ortb.chunk_cache_key("abc123", "int8", None) != key
    assert ortb.chunk_cache_key("abc123", "fp32", 1) != key


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ortb.CHUNK_ENV, raising=False)
    return tmp_path / "xdg" / "dga" / "ort-chunk.json"


def _runner(package, **kw):
    from dga.runtime.package import DeployPackage

    return ortb.OnnxRuntimeRunner(DeployPackage.load(package), "fp32", providers=["CPUExecutionProvider"], **kw)


def test_runner_measures_once_then_reuses_the_cache(tiny_package, cache_home, monkeypatch):
    first = _runner(tiny_package)
    assert first.chunk_choice["source"] == "measured" and cache_home.is_file()
    entries = json.loads(cache_home.read_text())
    assert len(entries) == 1
    (key, entry), = entries.items()
    assert key.startswith(first.package.graph_digest("fp32") + "|fp32|")
    assert entry["chunk"] == first.chunk and set(entry["per_image_ms"]) <= {"1", "2", "4", "8"}

    def no_probe(*args, **kwargs):
        raise AssertionError("measured again although the cache holds this graph")

    monkeypatch.setattr(ortb, "probe_chunk", no_probe)
    again = _runner(tiny_package)
    assert again.chunk_choice["source"] == "cache" and again.chunk == first.chunk
    monkeypatch.undo()  # another thread count is another key: measured and added
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home.parents[1]))
    _runner(tiny_package, threads=1)
    assert len(json.loads(cache_home.read_text())) == 2


def test_runner_overrides(tiny_package, cache_home, monkeypatch):
    fixed = _runner(tiny_package, cpu_chunk=3)
    assert fixed.chunk == 3 and fixed.chunk_choice == {"source": "argument"}
    assert _runner(tiny_package, cpu_chunk="whole").chunk is None
    monkeypatch.setenv(ortb.CHUNK_ENV, "2")
    env = _runner(tiny_package)
    assert env.chunk == 2 and env.chunk_choice == {"source": "environment"}
    assert _runner(tiny_package, cpu_chunk=5).chunk == 5  # an argument beats the environment
    monkeypatch.setenv(ortb.CHUNK_ENV, "whole")
    assert _runner(tiny_package).chunk is None
    monkeypatch.setenv(ortb.CHUNK_ENV, "fast")
    with pytest.raises(ConfigError, match="DGA_ORT_CPU_CHUNK"):
        _runner(tiny_package)
    assert not cache_home.exists()  # nothing was measured


def test_whole_batch_gives_the_sliced_numbers(tiny_package, cache_home):
    from dga.train.synthetic import sample_images

    whole, sliced = _runner(tiny_package, cpu_chunk="whole"), _runner(tiny_package, cpu_chunk=3)
    x = sample_images(7, whole.package.s0, seed=3)
    for a, b in zip(whole.infer(x), sliced.infer(x), strict=True):
        assert a.shape == (7, len(whole.package.classnames))
        np.testing.assert_allclose(a, b, atol=1e-5)
    empty = whole.infer(x[:0])
    assert empty[0].shape == (0, len(whole.package.classnames))
