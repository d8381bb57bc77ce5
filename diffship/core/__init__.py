"""diffship's core: the contracts and the model package, in numpy alone (docs/design.md, "Layers").

Tensor and component specs, model families, shape profiles, the manifest and ``ModelPackage``, hashing, atomic
publishing and the verification arithmetic. The exporter, the engine backends, the runtime and the benchmarks all read
these; nothing here imports any of them, nor torch, onnx, onnxruntime or TensorRT.
"""
