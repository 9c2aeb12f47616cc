"""Reference runner: the torch deployment module rebuilt from the package's bundle.

Needs the training and export code (``dga.train``, ``dga.export``) and the bundle the package
was exported from; a production service uses onnxruntime or tensorrt instead.
``load_bundle_model`` is the one loader of that model, shared with the torch-cuda runner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dga.errors import PackageError
from dga.runtime.package import DeployPackage


def load_bundle_model(package: DeployPackage, bundle: str | Path | None = None, backend: str = "torch"):
    """The trained model behind ``package`` (its views selected as at export), from its bundle.

    ``bundle`` defaults to the path recorded at export; a bundle whose tensors are not the ones the
    package was exported from is refused. ``backend`` names the runner in the error messages.
    """
    try:
        from dga.export.package import select_views
        from dga.train.bundle import load_bundle
    except ImportError as exc:
        raise PackageError(f"the {backend} backend needs dga's training code and torch ({exc}); "
                           f"use --backend onnxruntime") from exc
    # The module comes from the bundle, but classes and views from deploy.json: the fp32 graph's
    # sha256 and the manifest digest it carries bind those facts to what was exported.
    package.onnx_path("fp32")
    path = Path(bundle or package.facts["bundle"]["path"])
    b = load_bundle(path)
    if b.manifest["tensors"]["sha256"] != package.facts["bundle"]["tensors_sha256"]:
        raise PackageError(f"the bundle at {path} is not the one {package.path} was exported from")
    model, _ = select_views(b, package.facts.get("views_variant", "all"))
    return model


class TorchRunner:
    def __init__(self, package: DeployPackage, device: str = "cpu", bundle: str | Path | None = None):
        model = load_bundle_model(package, bundle)
        import torch

        from dga.export.deploy_module import DeployModule

        self.torch = torch
        self.module = DeployModule(model, "fp32").to(device).eval()
        self.device, self.precision, self.name = device, "fp32", f"torch:{device}"
        self.max_batch = package.max_batch
        self.on_cpu = torch.device(device).type == "cpu"

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.no_grad():
            logits, probs = self.module(self.torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return logits.cpu().numpy(), probs.cpu().numpy()

    def close(self) -> None:
        self.module = None
