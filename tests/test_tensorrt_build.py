"""The TensorRT build path, run against a fake ``tensorrt`` module that records every call."""

from __future__ import annotations

import enum
import json
import os
import sys
import types
from pathlib import Path

import pytest

from dga.errors import EngineError
from dga.export import tensorrt_build as tb
from dga.runtime.engine_key import EngineKey, Profile, check_engine, engine_paths, file_sha256

GPU = ("NVIDIA H100 80GB HBM3", "9.0")


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def make_fake_trt(version: str = "10.13.0.35", *, strongly_typed: bool = True, explicit_batch: bool = True,
                  tf32: bool = True, input_shape=(-1, 64, 64, 3), parse_errors=(), build_fails=False,
                  mismatched_cache: bytes | None = None) -> types.SimpleNamespace:
    """A stand-in for ``tensorrt`` with the 10/11 Python API surface build_engine uses."""
    calls: list[tuple] = []
    trt = types.SimpleNamespace(__version__=version, calls=calls, builds=0)

    members = {}
    if explicit_batch:
        members["EXPLICIT_BATCH"] = 0
    if strongly_typed:
        members["STRONGLY_TYPED"] = 1
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**members)
    trt.BuilderFlag = types.SimpleNamespace(**({"TF32": "TF32"} if tf32 else {}), SPARSE_WEIGHTS="SPARSE")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            calls.append(("ILogger.__init__",))

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor("images", input_shape)

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0
            calls.append(("OnnxParser", network, logger))

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            self.num_errors = len(parse_errors)
            return not parse_errors

        def get_error(self, i):
            return parse_errors[i]

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"|tuned"

    class OptProfile:
        def set_shape(self, name, mn, opt, mx):
            calls.append(("set_shape", name, mn, opt, mx))

    class Config:
        def __init__(self):
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            if mismatched_cache is not None and cache.data == mismatched_cache:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger
            calls.append(("Builder",))

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            if build_fails:
                self.logger.log(Severity.ERROR, "no implementation for layer Resize")
                return None
            self.logger.log(Severity.INFO, "tactic sweep done")
            self.logger.log(Severity.VERBOSE, "kernel details")
            trt.builds += 1
            return b"PLAN%d-" % trt.builds + b"x" * 1000

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, Parser
    return trt


def names(trt) -> list[str]:
    return [c[0] for c in trt.calls]


@pytest.fixture
def package(tmp_path):
    onnx = tmp_path / "model.fp16.onnx"
    onnx.write_bytes(b"fake onnx graph")
    return tmp_path, onnx


@pytest.fixture
def use_fake(monkeypatch):
    def install(trt):
        monkeypatch.setattr(tb, "import_tensorrt", lambda: trt)
        monkeypatch.setattr(tb, "gpu_identity", lambda: GPU)
        return trt

    return install


# --- pure decisions ------------------------------------------------------------------------------


def test_trt_major():
    assert tb.trt_major(types.SimpleNamespace(__version__="10.13.3.9")) == 10
    assert tb.trt_major(types.SimpleNamespace(__version__="11.0.0.1")) == 11
    with pytest.raises(EngineError, match="version"):
        tb.trt_major(types.SimpleNamespace(__version__="dev"))
    with pytest.raises(EngineError, match="version"):
        tb.trt_major(types.SimpleNamespace())


def test_network_flags_trt10():
    trt = make_fake_trt("10.13.0.35")
    assert tb.network_flags(trt, "fp16") == 1 << 1  # STRONGLY_TYPED, never EXPLICIT_BATCH
    assert tb.network_flags(trt, "fp32") == 0


def test_network_flags_trt10_without_strong_typing_refuses_fp16():
    trt = make_fake_trt("10.0.0.6", strongly_typed=False)
    with pytest.raises(EngineError, match="strongly typed"):
        tb.network_flags(trt, "fp16")
    assert tb.network_flags(trt, "fp32") == 0


@pytest.mark.parametrize("strongly_typed", [True, False])
def test_network_flags_trt11_are_default(strongly_typed):
    trt = make_fake_trt("11.1.0.4", strongly_typed=strongly_typed, explicit_batch=False)
    assert tb.network_flags(trt, "fp16") == 0
    assert tb.network_flags(trt, "fp32") == 0


def test_network_flags_refuse_old_trt_and_bad_precision():
    with pytest.raises(EngineError, match="too old"):
        tb.network_flags(make_fake_trt("8.6.1"), "fp16")
    with pytest.raises(EngineError, match="precision"):
        tb.network_flags(make_fake_trt(), "int8")


def test_builder_flags_to_clear():
    assert tb.builder_flags_to_clear(make_fake_trt(), "fp32") == ["TF32"]
    assert tb.builder_flags_to_clear(make_fake_trt(), "fp16") == []
    assert tb.builder_flags_to_clear(make_fake_trt(tf32=False), "fp32") == []


def test_profile_shapes_follow_the_network_input():
    shapes = tb.profile_shapes((-1, 224, 224, 3), Profile(1, 64, 256))
    assert shapes == ((1, 224, 224, 3), (64, 224, 224, 3), (256, 224, 224, 3))
    assert tb.profile_shapes((-1, 336, 336, 3), Profile(2, 2, 8))[2] == (8, 336, 336, 3)
    with pytest.raises(EngineError, match="fixed batch of 8"):
        tb.profile_shapes((8, 224, 224, 3), Profile(1, 1, 8))
    with pytest.raises(EngineError, match=r"not \[batch, S, S, 3\]"):
        tb.profile_shapes((-1, 3, 224, 224), Profile(1, 1, 8))


def test_workspace_bytes():
    assert tb.workspace_bytes(4) == 4 << 30
    assert tb.workspace_bytes(0.5) == 1 << 29
    for bad in (0, -1, True, "4"):
        with pytest.raises(EngineError, match="workspace"):
            tb.workspace_bytes(bad)


# --- without TensorRT or a GPU -------------------------------------------------------------------


def test_import_tensorrt_missing_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(EngineError) as info:
        tb.import_tensorrt()
    message = str(info.value)
    assert message == ("TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU); "
                       "the ONNX package is complete without it.")
    assert message.count(". ") == 0 and message.endswith(".")


def test_build_engine_without_tensorrt_touches_nothing(monkeypatch, package):
    package_dir, onnx = package
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError, match="^TensorRT is not installed"):
        tb.build_engine(onnx, package_dir, Profile(1, 4, 8), "fp16")
    assert not (package_dir / "engines").exists()


def test_gpu_identity(monkeypatch):
    cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    with pytest.raises(EngineError, match="no CUDA GPU"):
        tb.gpu_identity()
    cuda.is_available = lambda: True
    cuda.get_device_name = lambda i: "NVIDIA H200"
    cuda.get_device_capability = lambda i: (9, 0)
    assert tb.gpu_identity() == ("NVIDIA H200", "9.0")


# --- build_engine end to end against the fake ------------------------------------------------------


def test_build_engine_builds_then_hits(package, use_fake, monkeypatch):
    package_dir, onnx = package
    trt = use_fake(make_fake_trt())
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    profile = Profile(1, 16, 32)
    plan = tb.build_engine(onnx, package_dir, profile, "fp16", workspace_gib=2)

    key = EngineKey(file_sha256(onnx), trt.__version__, GPU[0], GPU[1], profile, "fp16")
    plan_path, sidecar_path = engine_paths(package_dir, key)
    assert plan == plan_path and plan.read_bytes().startswith(b"PLAN1-")
    assert json.loads(sidecar_path.read_text())["key"] == key.to_dict()
    assert check_engine(package_dir, key, verify_plan=True).status == "hit"

    assert ("create_network", 1 << 1) in trt.calls
    assert ("parse_from_file", str(onnx)) in trt.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in trt.calls
    assert ("set_shape", "images", (1, 64, 64, 3), (16, 64, 64, 3), (32, 64, 64, 3)) in trt.calls
    assert "clear_flag" not in names(trt) and "set_flag" not in names(trt)
    assert ("set_timing_cache", b"", False) in trt.calls

    # Atomic writes: every file arrives by os.replace from a temp file in the same folder,
    # the plan before its sidecar.
    engines = package_dir / "engines"
    targets = [Path(dst) for _, dst in replaced]
    assert all(Path(src).parent == engines and Path(src).name.endswith(".tmp") for src, _ in replaced)
    assert targets.index(plan_path) < targets.index(sidecar_path)
    assert engines / "timing.cache" in targets
    assert (engines / "timing.cache").read_bytes() == b"|tuned"
    assert not list(engines.glob("*.tmp")) and not list(engines.glob(".*"))

    build_log = engines / f"build-{key.stem()}.log"
    text = build_log.read_text()
    assert "[INFO] tactic sweep done" in text and "[VERBOSE] kernel details" in text

    # Second call: a hit, nothing is built.
    trt.calls.clear()
    assert tb.build_engine(onnx, package_dir, profile, "fp16", workspace_gib=2) == plan_path
    assert "Builder" not in names(trt) and "build_serialized_network" not in names(trt)
    assert plan_path.read_bytes().startswith(b"PLAN1-")


def test_force_rebuilds_and_reuses_the_timing_cache(package, use_fake):
    package_dir, onnx = package
    trt = use_fake(make_fake_trt())
    profile = Profile(1, 4, 8)
    plan = tb.build_engine(onnx, package_dir, profile, "fp16")
    trt.calls.clear()
    assert tb.build_engine(onnx, package_dir, profile, "fp16", force=True) == plan
    assert "build_serialized_network" in names(trt)
    assert plan.read_bytes().startswith(b"PLAN2-")
    assert ("set_timing_cache", b"|tuned", False) in trt.calls
    assert (package_dir / "engines" / "timing.cache").read_bytes() == b"|tuned|tuned"


def test_stale_engine_is_rebuilt(package, use_fake, caplog):
    package_dir, onnx = package
    trt = use_fake(make_fake_trt())
    profile = Profile(1, 4, 8)
    plan = tb.build_engine(onnx, package_dir, profile, "fp16")
    plan.with_suffix(".json").write_text('{"sidecar_format": 1, "key": {')  # truncated sidecar
    with caplog.at_level("WARNING", logger=tb.__name__):
        assert tb.build_engine(onnx, package_dir, profile, "fp16") == plan
    assert trt.builds == 2 and "rebuilding engine" in caplog.text
    assert check_engine(package_dir, tb_key(onnx, trt, profile, "fp16")).status == "hit"


def test_changed_onnx_builds_a_new_engine(package, use_fake):
    package_dir, onnx = package
    trt = use_fake(make_fake_trt())
    first = tb.build_engine(onnx, package_dir, Profile(1, 4, 8), "fp16")
    onnx.write_bytes(b"re-exported graph")
    second = tb.build_engine(onnx, package_dir, Profile(1, 4, 8), "fp16")
    assert first != second and trt.builds == 2 and first.is_file()


def tb_key(onnx, trt, profile, precision) -> EngineKey:
    return EngineKey(file_sha256(onnx), trt.__version__, GPU[0], GPU[1], profile, precision)


def test_fp32_on_trt10_clears_tf32_without_flags(package, use_fake):
    package_dir, onnx = package
    trt = use_fake(make_fake_trt("10.13.0.35"))
    tb.build_engine(onnx, package_dir, Profile(1, 1, 2), "fp32")
    assert ("create_network", 0) in trt.calls and ("clear_flag", "TF32") in trt.calls


def test_trt11_fp16_uses_default_network_and_no_precision_flags(package, use_fake):
    package_dir, onnx = package
    trt = use_fake(make_fake_trt("11.0.0.1", explicit_batch=False, strongly_typed=False))
    tb.build_engine(onnx, package_dir, Profile(1, 2, 4), "fp16")
    assert ("create_network", 0) in trt.calls
    assert "set_flag" not in names(trt) and "clear_flag" not in names(trt)


def test_mismatched_timing_cache_starts_empty(package, use_fake):
    package_dir, onnx = package
    engines = package_dir / "engines"
    engines.mkdir()
    (engines / "timing.cache").write_bytes(b"from-an-A100")
    trt = use_fake(make_fake_trt(mismatched_cache=b"from-an-A100"))
    tb.build_engine(onnx, package_dir, Profile(1, 2, 4), "fp16")
    sets = [c for c in trt.calls if c[0] == "set_timing_cache"]
    assert sets == [("set_timing_cache", b"from-an-A100", False), ("set_timing_cache", b"", False)]
    assert (engines / "timing.cache").read_bytes() == b"|tuned"


def test_parser_errors_are_one_sentence(package, use_fake):
    package_dir, onnx = package
    use_fake(make_fake_trt(parse_errors=("In node 7 (Resize): UNSUPPORTED_NODE: cubic mode", "second")))
    with pytest.raises(EngineError) as info:
        tb.build_engine(onnx, package_dir, Profile(1, 2, 4), "fp16")
    message = str(info.value)
    assert message.startswith("TensorRT could not parse model.fp16.onnx: In node 7 (Resize)")
    assert "2 error(s)" in message and "second" not in message
    assert not list((package_dir / "engines").glob("*.plan"))


def test_failed_build_reports_last_error_and_writes_no_plan(package, use_fake):
    package_dir, onnx = package
    use_fake(make_fake_trt(build_fails=True))
    with pytest.raises(EngineError, match="failed to build an engine .*no implementation for layer Resize"):
        tb.build_engine(onnx, package_dir, Profile(1, 2, 4), "fp16")
    engines = package_dir / "engines"
    assert not list(engines.glob("*.plan")) and not list(engines.glob("*.json"))
    assert "[ERROR] no implementation" in next(engines.glob("build-*.log")).read_text()


def test_fixed_batch_onnx_is_refused(package, use_fake):
    package_dir, onnx = package
    use_fake(make_fake_trt(input_shape=(1, 64, 64, 3)))
    with pytest.raises(EngineError, match="dynamic batch axis"):
        tb.build_engine(onnx, package_dir, Profile(1, 2, 4), "fp16")


def test_missing_onnx_file(tmp_path, use_fake):
    use_fake(make_fake_trt())
    with pytest.raises(EngineError, match="does not exist"):
        tb.build_engine(tmp_path / "nope.onnx", tmp_path, Profile(1, 2, 4), "fp16")


def test_custom_log_and_cache_paths(package, use_fake):
    package_dir, onnx = package
    use_fake(make_fake_trt())
    log_path, cache = package_dir / "logs" / "build.log", package_dir / "shared.cache"
    tb.build_engine(onnx, package_dir, Profile(1, 2, 4), "fp16", timing_cache=cache, log_path=log_path)
    assert cache.read_bytes() == b"|tuned" and "[INFO]" in log_path.read_text()
