"""dga: visual reprogramming for a frozen CLIP, from training to a fused deployment graph.

Sub-packages follow the data flow: ``dga.train`` (bundle) -> ``dga.export`` (ONNX/TensorRT
package) -> ``dga.runtime`` (inference); ``dga.cli`` wires them to the command line.
"""

__version__ = "0.1.0"
