"""Runtime: what a deployment installs (numpy, pillow, onnxruntime or tensorrt; no training code).

``Predictor`` is the embeddable entry point; it is imported lazily so that ``import dga.runtime``
stays light.
"""

from __future__ import annotations

__all__ = ["Predictor", "Predictions", "Result"]


def __getattr__(name: str):
    if name in __all__:
        from dga.runtime import predictor

        return getattr(predictor, name)
    raise AttributeError(name)
