"""Serving a deployment package with Triton Inference Server.

``dga.serve.triton`` writes and validates a Triton model repository from a package (numpy and the
runtime only; tritonclient's ModelConfig proto for validation, imported lazily);
``dga.serve.backend`` is the python-backend model that runs the project's Predictor inside Triton;
``dga.serve.server`` starts the ``tritonserver`` bundled in the nvidia-pytriton wheel over such a
repository (the [serve] extra).
"""
