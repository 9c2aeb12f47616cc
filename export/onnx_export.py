"""Trace a DeployModule to ONNX (torch's maintained exporter), name the fusion scopes, add metadata."""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path

import onnx
import torch

from dga.export.deploy_module import DeployModule

OPSET = 18  # >= 17 so LayerNormalization is one op
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
# Module scopes -> readable fusion step names in the graph (DESIGN.md 5).
# A module called twice gets a numbered scope (/upf_1/), hence the optional suffix.
SCOPES = {re.compile(r"/upf(_\d+)?/"): "dga/UPF", re.compile(r"/hkp(_\d+)?/"): "dga/HKP",
          re.compile(r"/prm(_\d+)?/"): "dga/PRM"}


@contextlib.contextmanager
def no_mha_fastpath():
    """nn.MultiheadAttention's fused fast path has no ONNX symbolic; use the plain ops."""
    backends = getattr(torch.backends, "mha", None)
    if backends is None or not hasattr(backends, "set_fastpath_enabled"):
        yield
        return
    before = backends.get_fastpath_enabled()
    backends.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backends.set_fastpath_enabled(before)


def export_onnx(module: DeployModule, path: Path, metadata: dict[str, object], opset: int = OPSET,
                example_batch: int = 2) -> Path:
    """Write ``module`` as ONNX with a dynamic batch axis; returns the path."""
    module = module.eval()
    dummy = torch.randint(0, 256, (example_batch, module.s0, module.s0, 3), dtype=torch.uint8)
    dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with torch.no_grad(), no_mha_fastpath(), warnings.catch_warnings():
        # The tracer's notes on constant folding and Python constants are expected here.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(path))
    name_fusion_scopes(model)
    set_metadata(model, metadata)
    onnx.save(model, str(path))
    return path


def name_fusion_scopes(model: onnx.ModelProto) -> int:
    """Rename nodes of the UPF/HKP/PRM modules to dga/UPF/..., dga/HKP/..., dga/PRM/...; count them."""
    n = 0
    taken = {node.name for node in model.graph.node}
    for node in model.graph.node:
        for scope, label in SCOPES.items():
            match = scope.search(node.name)
            if match:
                # dga/UPF/Softmax for the first call, dga/UPF_1/Softmax for the next scale, ...
                new = f"{label}{match.group(1) or ''}/{node.name[match.end():]}"
                while new in taken:
                    new += "_"
                taken.add(new)
                node.name = new
                n += 1
                break
    return n


def set_metadata(model: onnx.ModelProto, metadata: dict[str, object]) -> None:
    """Store deployment facts in metadata_props (JSON-encoded where not a string)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
