"""fvdeploy: deploy FasterViT to ONNX, TensorRT and Core ML, and prove the artifact matches PyTorch."""

__version__ = "0.1.0"


def preprocess(images, artifact):
    """The batch an artifact takes (``[N, 3, H, W]`` float32 numpy) from image files or PIL images, with its model's
    own evaluation preprocessing, as `fvdeploy predict` does. ``artifact``: an artifact file with its record, or a
    Triton model folder that `fvdeploy triton` wrote (its ``fvdeploy.json``)."""
    from .use.predict import preprocess_images

    return preprocess_images(images, artifact)
