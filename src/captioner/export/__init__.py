"""Export: an artifact as ONNX graphs (onnx, torch) and the runner that captions with them on onnxruntime (runner,
no torch)."""
