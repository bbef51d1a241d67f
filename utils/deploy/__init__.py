"""Deployment: export to ONNX / OpenVINO / Darknet with checks, exported models behind the
PyTorch model's interface, and per-process latency measurement."""
