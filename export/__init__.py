"""Export: bake a model bundle into one fused ONNX graph, an fp16 variant and a TensorRT engine."""
