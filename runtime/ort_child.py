"""Run an ONNX graph with ONNX Runtime in a child process: ``python -m dga.runtime.ort_child``.

ONNX Runtime 1.32 on the CPU can crash the whole process (segfault) on a valid fp16 graph at
its default optimisation level; running it here keeps a crash from killing the exporter.
Arguments: model.onnx inputs.npy outputs.npy optimisation-level (basic|extended|all).
"""

from __future__ import annotations

import sys

import numpy as np


def make_session(path: str, level: str = "all", providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(path, opts, providers=providers or ["CPUExecutionProvider"])


def main(argv: list[str]) -> int:
    model, inputs, outputs, level = argv
    session = make_session(model, level)
    images = np.load(inputs)
    np.save(outputs, session.run(["logits"], {"images": images})[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
