"""fvdeploy: deploy FasterViT to ONNX, TensorRT and Core ML, and prove the artifact matches PyTorch."""

from .version import __version__ as __version__


def preprocess(images, artifact):
    """The batch an artifact takes (``[N, 3, H, W]`` float32 numpy) from image files or PIL images, with its model's
    own evaluation preprocessing, as `fvdeploy predict` does. ``artifact``: an artifact file with its record, or a
    Triton model folder that `fvdeploy triton` wrote (its served file's record)."""
    from .use.predict import preprocess_images

    return preprocess_images(images, artifact)
