"""Model runtimes: ONNX Runtime in process, Open Inference Protocol (KServe v2) over gRPC."""
