"""Runtime: what a deployment installs (numpy, pillow, onnxruntime or tensorrt; no training code).

``Predictor`` is the embeddable entry point and ``verify`` checks a package on this host; both are
imported lazily so that ``import dga.runtime`` stays light.
"""

from __future__ import annotations

__all__ = ["Predictor", "Predictions", "Result", "verify", "VerifyReport", "infer_to_files"]


def __getattr__(name: str):
    if name in ("Predictor", "Predictions", "Result"):
        from dga.runtime import predictor

        return getattr(predictor, name)
    if name == "infer_to_files":
        from dga.runtime import run_folder

        return run_folder.infer_to_files
    if name in ("verify", "VerifyReport"):
        from dga.runtime import verifier

        return getattr(verifier, name)
    raise AttributeError(name)
