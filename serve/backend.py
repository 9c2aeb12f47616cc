"""The Triton python-backend model (``dga`` in a repository written by ``dga.serve.triton``).

Each request carries one of two inputs: ``image_bytes`` (TYPE_STRING [B, 1], encoded image files,
decoded and preprocessed by ``decode_bytes`` exactly as dga-infer does) or ``images`` (TYPE_UINT8
[B, S0, S0, 3], already preprocessed). The images of every request of one ``execute`` call (Triton's
dynamic batcher groups them) go through the Predictor together; a request whose input is missing
or undecodable gets its own error response and the others are answered as usual.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dga.runtime.decode import DecodeError, decode_bytes
from dga.runtime.package import DeployPackage

BYTES_INPUT = "image_bytes"


def request_images(arrays: dict[str, np.ndarray | None], s0: int) -> np.ndarray:
    """One request's inputs (name -> numpy array or None) -> uint8 [B, S0, S0, 3]; ValueError for a bad one."""
    given = {k: v for k, v in arrays.items() if v is not None}
    if len(given) != 1:
        raise ValueError(f"a request gives exactly one of the inputs {', '.join(arrays)} (it gave "
                         f"{', '.join(given) or 'none'})")
    name, value = next(iter(given.items()))
    if name != BYTES_INPUT:
        return np.ascontiguousarray(value, dtype=np.uint8)  # Triton has checked dtype and dims
    images = []
    for i, item in enumerate(value.reshape(-1)):
        data = item if isinstance(item, bytes) else item.encode() if isinstance(item, str) else None
        if data is None:
            raise ValueError(f"image_bytes[{i}] is not a string of bytes ({type(item).__name__})")
        try:
            images.append(decode_bytes(data, s0, name=f"image_bytes[{i}]"))
        except DecodeError as exc:
            raise ValueError(f"{exc.reason}: {exc}") from None
    return np.stack(images) if images else np.zeros((0, s0, s0, 3), np.uint8)


class TritonPythonModel:
    """Triton calls ``initialize`` once per instance, then ``execute`` with lists of requests."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from dga.runtime.backends import open_runner
        from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner
        from dga.runtime.predictor import Predictor

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = Path(args["model_repository"])  # the model's directory in the repository
        package = DeployPackage.load(model_dir / params.get("package", f"{args['model_version']}/package"))
        precision = params.get("precision", "fp32")
        if args.get("model_instance_kind") == "GPU":
            runner = open_runner(package, "auto", precision, int(args.get("model_instance_device_id") or 0))
        else:  # a CPU instance computes on the CPU even where onnxruntime-gpu is installed
            runner = OnnxRuntimeRunner(package, precision, providers=["CPUExecutionProvider"])
        self.predictor = Predictor(package, runner, batch_size=package.max_batch)
        self.s0 = package.s0
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        pb = self.pb
        batches: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for request in requests:
            arrays = {}
            for name in self.inputs:
                tensor = pb.get_input_tensor_by_name(request, name)
                arrays[name] = None if tensor is None else tensor.as_numpy()
            try:
                batches.append(request_images(arrays, self.s0))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - one bad request never fails the others of its batch
                batches.append(None)
                errors.append(str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}")
        good = [b for b in batches if b is not None]
        if good:
            logits, probs = self.predictor.run(np.concatenate(good))
            self.predictor.batch_latencies.clear()  # a server runs for long: keep no per-call history
        responses, start = [], 0
        for batch, error in zip(batches, errors, strict=True):
            if batch is None:
                responses.append(pb.InferenceResponse(output_tensors=[], error=self.bad_request(error)))
                continue
            stop = start + len(batch)
            out = {"logits": logits[start:stop], "probs": probs[start:stop]}
            start = stop
            responses.append(pb.InferenceResponse(
                output_tensors=[pb.Tensor(name, np.ascontiguousarray(out[name], np.float32)) for name in self.outputs]))
        return responses

    def bad_request(self, message: str):
        """A client error (gRPC INVALID_ARGUMENT, HTTP 400) where the python backend has error codes."""
        code = getattr(self.pb.TritonError, "INVALID_ARG", None)
        return self.pb.TritonError(message) if code is None else self.pb.TritonError(message, code)

    def finalize(self) -> None:
        self.predictor.close()
