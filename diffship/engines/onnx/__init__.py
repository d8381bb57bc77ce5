"""ONNX tooling every backend shares (docs/design.md, "Backends"): the house's ONNX Runtime reference runner and the
build-time graph work, in one place beside the backends, so that ``engines/ort`` and ``engines/tensorrt`` never import
each other.

- ``session`` (run time, imports onnxruntime lazily): ``open_session``/``run_session``, the one way anything here opens
  an ONNX Runtime session: the ``ort`` backend's engines, every build's check against the exported graph, the
  exporter's verification.
- ``feeds`` (run time, stdlib only): what verification feeds are drawn from (``vocab_size``).
- ``graphs`` (build time, imports onnx): saving under protobuf's 2 GB limit, sanitising before a parser.
- ``weight_maps`` (build time, imports onnx): finding LoRA-changeable weights in a saved graph by their bytes.
- ``fp16`` (build time, imports onnx and onnxruntime's converter): fp32 -> fp16 conversion, checked in ONNX Runtime.

Nothing is imported here, so that ``import engines.onnx.session`` pulls in no build-time module.
"""
