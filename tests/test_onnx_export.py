"""export_onnx itself: torch's supported exporter, ONNX external data, the opset-17 fallback.

One untrained DGA bundle on the tiny random backbone; each test exports the fp32 deployment
module (a few seconds each). Numbers are checked against the torch module, not the exporter.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import make_random_bundle


@pytest.fixture(scope="module")
def deploy(backbone, shapes_data, tmp_path_factory):
    """(fp32 DeployModule of a random DGA bundle, uint8 images, its torch logits)."""
    from dga.export.deploy_module import DeployModule
    from dga.train.bundle import load_bundle
    from dga.train.synthetic import sample_images

    path = make_random_bundle(backbone, shapes_data, "dga", tmp_path_factory.mktemp("bundle") / "m.dga", 31)
    module = DeployModule(load_bundle(path).model, "fp32").eval()
    images = sample_images(7, module.s0, seed=3)
    with torch.no_grad():
        logits = module(torch.from_numpy(images))[0].numpy()
    return module, images, logits


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images})[0]


def _exporter_warnings(caught) -> list[str]:
    return [f"{w.category.__name__}: {w.message}" for w in caught
            if issubclass(w.category, DeprecationWarning | FutureWarning)]


def test_external_data_forced_on_a_tiny_graph(deploy, tmp_path):
    from dga.export.onnx_export import export_onnx

    module, images, reference = deploy
    metadata = {"format": "dga-deploy", "classnames": ["a", "b"]}
    inline_dir, external_dir = tmp_path / "inline", tmp_path / "external"
    inline_dir.mkdir()
    external_dir.mkdir()
    inline = export_onnx(module, inline_dir / "model.onnx", metadata, external_data=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        external = export_onnx(module, external_dir / "model.onnx", metadata, external_data=True)
    assert _exporter_warnings(caught) == [], "the supported exporter should not warn about deprecation"
    assert inline == inline_dir / "model.onnx" and external == external_dir / "model.onnx"
    assert sorted(p.name for p in inline_dir.iterdir()) == ["model.onnx"]
    assert sorted(p.name for p in external_dir.iterdir()) == ["model.onnx", "model.onnx.data"]

    # The weights live in the one companion file, referenced by a bare (relative) file name.
    proto = onnx.load(str(external), load_external_data=False)
    big = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert big, "no initializer was stored externally"
    locations = {next(e.value for e in t.external_data if e.key == "location") for t in big}
    assert locations == {"model.onnx.data"}
    data_bytes = (external_dir / "model.onnx.data").stat().st_size
    assert external.stat().st_size < data_bytes < inline.stat().st_size
    # The patch embedding's weights, at least, are external: [width, 3, patch, patch] fp32.
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert conv.input[1] in {t.name for t in big}

    # The metadata is set, in both.
    for path in (inline, external):
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert meta == {"format": "dga-deploy", "classnames": '["a", "b"]'}

    # Move the folder: the graph still finds its weights (checker, ONNX Runtime, onnx.load).
    moved = shutil.move(str(external_dir), str(tmp_path / "elsewhere" / "pkg"))
    moved = Path(moved) / "model.onnx"
    onnx.checker.check_model(str(moved))
    loaded = onnx.load(str(moved))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    from_external, from_inline = _run(moved, images), _run(inline, images)
    np.testing.assert_array_equal(from_external, from_inline)
    assert np.abs(from_external - reference).max() <= 1e-4
    assert np.abs(_run(moved, images[:1]) - reference[:1]).max() <= 1e-4  # dynamic batch, also here


def test_external_data_automatic(deploy, tmp_path, monkeypatch):
    from dga.export import onnx_export

    module, images, reference = deploy
    path = tmp_path / "model.fp16.onnx"
    stale = tmp_path / "model.fp16.onnx.data"
    stale.write_bytes(b"left over from an earlier, larger export")
    # A tiny graph is far below the threshold: no external data, and no stale companion left.
    onnx_export.export_onnx(module, path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx"]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL
               for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    # Past the threshold, the same call writes external data on its own.
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    onnx_export.export_onnx(module, path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx", "model.fp16.onnx.data"]
    onnx.checker.check_model(str(path))
    assert np.abs(_run(path, images) - reference).max() <= 1e-4
    # Forcing external data off for weights protobuf cannot hold fails before anything is written.
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1000)
    with pytest.raises(ValueError, match="do not fit in one protobuf"):
        onnx_export.export_onnx(module, tmp_path / "big.onnx", {}, external_data=False)
    assert not (tmp_path / "big.onnx").exists() and not (tmp_path / "big.onnx.data").exists()


def test_opset_17_is_written_by_the_legacy_exporter(deploy, tmp_path):
    """Why the TorchScript exporter is kept for opset 17 (DESIGN.md 5 allows 17), and only for it."""
    from dga.export.onnx_export import INPUT_NAME, export_onnx, no_mha_fastpath

    module, images, reference = deploy
    dummy = torch.from_numpy(images[:2])
    # torch's supported exporter cannot write opset 17 for this graph: its version converter fails
    # (it logs so) and the model stays at opset 18. If this starts to fail, torch can now do it:
    # drop the legacy path in export_onnx.
    with torch.no_grad(), no_mha_fastpath():
        program = torch.onnx.export(module, (dummy,), None, input_names=[INPUT_NAME], opset_version=17,
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True,
                                    verbose=False)
    assert program.model.opset_imports[""] == 18

    # So export_onnx takes the legacy path for it, which warns that it is deprecated.
    with pytest.warns(DeprecationWarning) as record:
        path = export_onnx(module, tmp_path / "model.onnx", {"opset": 17}, opset=17, example_batch=1)
    assert any("legacy TorchScript" in str(w.message) for w in record), [str(w.message) for w in record]
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    onnx.checker.check_model(str(path))
    assert {p.key: p.value for p in proto.metadata_props} == {"opset": "17"}
    names = [n.name for n in proto.graph.node]
    assert {n.split("/")[1] for n in names if n.startswith("dga/UPF")} == {"UPF", "UPF_1"}
    assert any(n.startswith("dga/HKP/") for n in names)
    assert [n.op_type for n in proto.graph.node].count("LayerNormalization") == 6  # 2 blocks x 2 + pre + post
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # its temporary folder is gone
    assert np.abs(_run(path, images) - reference).max() <= 1e-4
    assert np.abs(_run(path, images[:1]) - reference[:1]).max() <= 1e-4


def test_default_export_is_opset_18_on_the_supported_path(deploy, tmp_path):
    from dga.export.onnx_export import OPSET, export_onnx

    module, images, reference = deploy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(module, tmp_path / "model.onnx", {"k": "v"}, example_batch=3)
    assert _exporter_warnings(caught) == []
    proto = onnx.load(str(path))
    assert OPSET >= 18 and {o.domain: o.version for o in proto.opset_import}[""] == OPSET
    # The exporter's per-node debugging metadata (stack traces with absolute paths) is not shipped.
    assert not [p.key for n in proto.graph.node for p in n.metadata_props]
    import dga.export.deploy_module as source

    assert str(Path(source.__file__).parent).encode() not in path.read_bytes()
    for batch in (1, 2, 7):
        assert np.abs(_run(path, images[:batch]) - reference[:batch]).max() <= 1e-4
