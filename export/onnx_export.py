"""Export a DeployModule to ONNX with torch's supported exporter, name the fusion scopes, add metadata.

torch.onnx.export(dynamo=True) captures the module with torch.export (the batch axis declared in
``dynamic_shapes``), translates it with onnxscript's torchlib and optimises the result (constant
folding, dead-code removal). The model it returns is an in-memory ``onnx_ir.Model``: node names
and metadata are edited there and the file is written once, so a graph above protobuf's 2 GB
limit is never serialised (or re-loaded) as a single proto; its weights go to one external data
file beside it (``model.onnx`` -> ``model.onnx.data``, referenced by a relative location, so the
package directory can be moved).

The exporter names nodes after the FX graph (``node_matmul_3``) and records the module path of
each node in its ``metadata_props`` (``pkg.torch.onnx.name_scopes``); ``name_fusion_scopes``
turns that into readable, legacy-style names (``/encoder/transformer/resblocks.0/attn/MatMul``)
and labels the fusion steps ``dga/UPF``, ``dga/HKP`` and ``dga/PRM`` (DESIGN.md 5).
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import onnx_ir as ir
import torch

from dga.export.deploy_module import DeployModule

OPSET = 18  # >= 17 so LayerNormalization is one op; 18 is the opset torch's exporter translates to natively
DYNAMO_MIN_OPSET = 18  # below it, the legacy TorchScript exporter (see _legacy_export)
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
# Module attribute names -> readable fusion step labels in the graph (DESIGN.md 5). A module
# called more than once (UPF, once per scale) gets numbered labels: dga/UPF, dga/UPF_1, ...
SCOPES = {"upf": "dga/UPF", "hkp": "dga/HKP", "prm": "dga/PRM"}
# The TorchScript exporter's node names carry the scope (/head/upf_1/Softmax for the second call).
LEGACY_SCOPES = {re.compile(rf"/{attr}(_\d+)?/"): label for attr, label in SCOPES.items()}
# Initializers above this many bytes go to external data (protobuf cannot hold a message over
# 2 GiB; the graph itself, names and metadata need some room too).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
PROTOBUF_LIMIT = 2**31  # bytes one serialised protobuf message can hold (less one)
# Tensors up to this size stay inline when external data is used (shape constants and the like).
EXTERNAL_MIN_BYTES = 1024
# The exporter records each node's module path, class chain, FX node and Python stack trace in
# the node's metadata_props (and onnxscript's optimiser the rewrite rules it applied). Once the
# names carry the scope that is redundant, most of the bytes of the graph proto, and the stack
# traces hold absolute source paths (the graph's sha256 would depend on where the code is checked
# out), so it is dropped.
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
EXPORTER_NODE_METADATA = ("namespace",)  # exact keys
EXPORTER_NODE_METADATA_PREFIXES = ("pkg.torch.", "pkg.onnxscript.")


@contextlib.contextmanager
def no_mha_fastpath():
    """nn.MultiheadAttention's fused fast path has no ONNX translation; use the plain ops."""
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


def external_data_path(path: Path) -> Path:
    """Where the weights of ``path`` go when they are stored as ONNX external data."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def export_onnx(module: DeployModule, path: Path, metadata: dict[str, object], opset: int = OPSET,
                example_batch: int = 2, external_data: bool | None = None) -> Path:
    """Write ``module`` as ONNX with a dynamic batch axis; returns the path.

    ``external_data``: None (default) stores the weights in ``<path>.data`` only when they would
    not fit in one protobuf (above EXTERNAL_DATA_THRESHOLD bytes); True always does; False never
    does. Without external data no ``<path>.data`` is left beside the graph.
    """
    path = Path(path)
    module = module.eval()
    dummy = torch.randint(0, 256, (example_batch, module.s0, module.s0, 3), dtype=torch.uint8)
    if opset < DYNAMO_MIN_OPSET:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as tmp:
            model = _legacy_export(module, dummy, Path(tmp) / path.name, opset)
            _finish(model, path, metadata, external_data)  # reads the weights from tmp: before it goes
        return path
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad(), no_mha_fastpath():
        program = torch.onnx.export(module, (dummy,), None, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, optimize=True,
                                    verbose=False)
    _finish(program.model, path, metadata, external_data)
    return path


def _legacy_export(module: DeployModule, dummy: torch.Tensor, path: Path, opset: int) -> ir.Model:
    """The TorchScript exporter, kept for one case only: opsets below 18 (DESIGN.md 5 allows 17).

    torch's supported exporter translates to opset 18 and then runs a version converter, which
    cannot take this graph down to 17: it logs that it failed and leaves the model at opset 18
    (checked in tests/test_onnx_export.py), and ONNX's own converter writes an invalid graph
    (ReduceL2 with an attribute opset 17 does not have). The TorchScript exporter is deprecated
    since torch 2.9 and says so (its DeprecationWarning is left visible on purpose); drop this path
    when torch drops it or when opset 17 no longer matters (TensorRT 10 and ONNX Runtime read 18).
    """
    dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with torch.no_grad(), no_mha_fastpath(), warnings.catch_warnings():
        # The tracer's notes on constant folding and Python constants are expected here.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    return ir.load(path)  # external tensors (a model over 2 GB) are read lazily, from path's folder


def _finish(model: ir.Model, path: Path, metadata: dict[str, object], external_data: bool | None) -> None:
    """Name the scopes, set the metadata and write the model once, with or without external data."""
    name_fusion_scopes(model)
    drop_exporter_node_metadata(model)
    set_metadata(model, metadata)
    data = external_data_path(path)
    weights = initializer_bytes(model)
    if external_data is None:
        external_data = weights > EXTERNAL_DATA_THRESHOLD
    elif not external_data and weights >= PROTOBUF_LIMIT:
        raise ValueError(f"{path.name}: {weights / 2**30:.2f} GiB of weights do not fit in one protobuf "
                         "(2 GiB); export with external_data=None or True")
    if data.exists():
        data.unlink()  # never leave a stale companion: it would belong to an earlier graph
    if external_data:
        # A relative location (the bare file name): ONNX Runtime, onnx.load and onnx.checker resolve
        # it against the graph's own folder, wherever that folder is moved.
        ir.save(model, path, external_data=data.name, size_threshold_bytes=EXTERNAL_MIN_BYTES)
    else:
        ir.save(model, path)


def initializer_bytes(model: ir.Model) -> int:
    """Bytes of all tensors the model carries (initializers and tensor-valued node attributes)."""
    total = 0
    for graph in model.graphs():
        total += sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    total += attr.value.nbytes
                elif attr.type == ir.AttributeType.TENSORS and attr.value:
                    total += sum(t.nbytes for t in attr.value)
    return total


def _module_scopes(node: ir.Node) -> list[str] | None:
    """Module paths around ``node`` from outermost to innermost (["encoder", "encoder.ln_pre"]), or None."""
    raw = node.metadata_props.get(NAME_SCOPES_KEY)
    if raw is None:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or len(scopes) < 2:
        return None
    # [root module "", module paths..., FX node name]. Nodes torch.export adds outside any module
    # (shape checks on the inputs) have another root: they belong to the top level.
    return [str(s) for s in scopes[1:-1]] if scopes[0] == "" else []


def _segments(paths: list[str]) -> list[str]:
    """Each module path relative to its parent: ["encoder", "encoder.ln_pre"] -> ["encoder", "ln_pre"]."""
    out, parent = [], ""
    for p in paths:
        out.append(p[len(parent) + 1:] if parent and p.startswith(parent + ".") else p)
        parent = p
    return out


def _call_index(nodes: list[ir.Node]) -> dict[int, int]:
    """Group the nodes of one module scope into calls: id(node) -> call number (0, 1, ...).

    The exporter records the module path but not which call of the module a node belongs to, so
    calls are told apart by data flow: the nodes of one call form one connected piece of the
    graph (each call computes its output from its own inputs), numbered in graph order.
    """
    index = {id(n): i for i, n in enumerate(nodes)}
    parent = list(range(len(nodes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, node in enumerate(nodes):
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) in index:
                a, b = find(i), find(index[id(producer)])
                if a != b:
                    parent[max(a, b)] = min(a, b)
    roots = sorted({find(i) for i in range(len(nodes))})
    number = {r: k for k, r in enumerate(roots)}
    return {id(n): number[find(i)] for i, n in enumerate(nodes)}


def name_fusion_scopes(model: ir.Model) -> int:
    """Give every node a readable scope name; label the UPF/HKP/PRM nodes dga/UPF/..., dga/HKP/..., dga/PRM/....

    Returns how many nodes got a fusion label. ``model`` is the exporter's ``onnx_ir.Model``: from
    torch's exporter, whose nodes record their module path in metadata_props, or loaded from the
    TorchScript exporter's file, whose node names are already scope paths (/head/upf_1/Softmax).
    """
    planned: list[tuple[ir.Node, str, str | None]] = []  # (node, name without fusion label, fusion key)
    groups: dict[str, list[ir.Node]] = defaultdict(list)
    labelled = 0
    for node in model.graph:
        scopes = _module_scopes(node)
        if scopes is None:  # no module path recorded: a TorchScript-exported node (or one made later)
            for scope, label in LEGACY_SCOPES.items():
                match = scope.search(node.name or "")
                if match:  # /head/upf_1/Softmax -> dga/UPF_1/Softmax
                    planned.append((node, f"{label}{match.group(1) or ''}/{node.name[match.end():]}", None))
                    labelled += 1
                    break
            continue
        segments = _segments(scopes)
        for depth, segment in enumerate(segments):
            attr = segment.rsplit(".", 1)[-1]
            if attr in SCOPES:
                key = scopes[depth]  # the module path, e.g. head.upf
                rest = "/".join([*segments[depth + 1:], node.op_type])
                planned.append((node, rest, key))
                groups[key].append(node)
                break
        else:
            planned.append((node, "/" + "/".join([*segments, node.op_type]), None))
    calls = {key: _call_index(nodes) for key, nodes in groups.items()}

    taken = {node.name for node in model.graph}
    counts: dict[str, int] = defaultdict(int)
    for node, name, key in planned:
        if key is not None:
            label = SCOPES[key.rsplit(".", 1)[-1]]
            k = calls[key][id(node)]
            name = f"{label}{f'_{k}' if k else ''}/{name}"  # dga/UPF/Softmax, dga/UPF_1/Softmax, ...
            labelled += 1
        taken.discard(node.name)
        new = name
        while new in taken:  # /encoder/.../MatMul, /encoder/.../MatMul_1, ...
            counts[name] += 1
            new = f"{name}_{counts[name]}"
        taken.add(new)
        node.name = new
    return labelled


def drop_exporter_node_metadata(model: ir.Model) -> None:
    """Remove the exporter's and optimiser's per-node debugging metadata (see EXPORTER_NODE_METADATA)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key in [k for k in node.metadata_props
                    if k in EXPORTER_NODE_METADATA or k.startswith(EXPORTER_NODE_METADATA_PREFIXES)]:
            del node.metadata_props[key]


def encode_metadata(metadata: dict[str, object]) -> dict[str, str]:
    """metadata_props entries: strings as they are, everything else JSON-encoded."""
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}


def set_metadata(model: ir.Model, metadata: dict[str, object]) -> None:
    """Store deployment facts in the model's metadata_props (``encode_metadata``)."""
    model.metadata_props.clear()
    model.metadata_props.update(encode_metadata(metadata))
