"""Core ML predictions as a runner (macOS only): images rebuilt exactly from the normalised batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.options import RunOptions
from ..core.record import ArtifactRecord
from ..core.runner import Outputs, Runner
from ..system.errors import MissingDependency
from ..system.files import shown
from ..system.optional import coreml_predict_missing, import_coremltools


class CoreMLRunner(Runner):
    name = "coreml"

    @classmethod
    def open(cls, path: Path, record: ArtifactRecord, opts: RunOptions) -> "CoreMLRunner":
        """The runner the format table opens (``formats.Format.runner``)."""
        return cls(path, record)

    def __init__(self, path: str | Path, record: ArtifactRecord) -> None:
        # The package takes RGB pixels; the runner takes what every runner takes, the normalised batch.
        super().__init__((record.model.input,), record.outputs, record.batch_range)
        pre = record.model.preprocessing
        self.path = Path(path)
        self.mean, self.std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
        self.model = None
        missing = coreml_predict_missing()  # said when the runner is made: before any reference is built for it
        if missing:
            raise MissingDependency(f"{missing}; on Linux `fvdeploy coreml` checks the package's spec instead. "
                                    f"Run `fvdeploy verify {shown(self.path)}` on a Mac.")

    def activate(self) -> None:
        self.model = import_coremltools().models.MLModel(str(self.path))
        self.image_name = self.model.get_spec().description.input[0].name

    def _infer(self, batch: np.ndarray) -> Outputs:
        from PIL import Image

        rows: dict[str, list[np.ndarray]] = {spec.name: [] for spec in self.outputs}
        for chw in batch:
            pixels = np.clip(np.rint((chw.transpose(1, 2, 0) * self.std + self.mean) * 255.0), 0, 255).astype(np.uint8)
            result = self.model.predict({self.image_name: Image.fromarray(pixels)})
            for spec in self.outputs:
                value = result[spec.name]
                if isinstance(value, dict):  # a classifier's probabilities, keyed by label in class order
                    value = list(value.values())
                rows[spec.name].append(np.asarray(value, np.float32).reshape(spec.shape))
        return {name: np.stack(values) for name, values in rows.items()}
