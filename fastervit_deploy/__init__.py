"""fvdeploy: deploy FasterViT to ONNX, TensorRT and Core ML, and prove the artifact matches PyTorch."""

__version__ = "0.1.0"
