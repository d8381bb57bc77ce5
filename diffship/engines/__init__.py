"""Engine backends (docs/design.md, "Backends"): numpy arrays in and out of compiled components, and the builds.

``engines.backend`` holds the ``Backend`` protocol and registry, ``engines.build`` the one build orchestrator, and each
backend is one folder: ``engines/ort`` (ONNX Runtime) and ``engines/tensorrt`` (TensorRT and TensorRT-RTX), each with
run-time modules and a ``build`` module that only the build commands import. Nothing here imports torch, diffusers,
transformers or the exporter.
"""
