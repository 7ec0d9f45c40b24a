"""INT8 calibration: images streamed in bounded chunks, scales shared by both backends, a checked cache.

* Images are read, preprocessed and fed a chunk at a time (an onnxruntime ``CalibrationDataReader``);
  onnxruntime's own calibrators (entropy, max, percentile) accumulate their histograms or ranges chunk
  by chunk, so memory is bounded by one chunk of activations, whatever the number of images.
* Unreadable files are skipped and reported; every image mode (grey, RGBA, CMYK, 16-bit) is converted.
* The result is a range per activation tensor (symmetric: [-amax, amax]; the onnxruntime CPU scheme's
  uint8 activations take the observed [min, max]). Every backend quantizes from these ranges, so the
  same command gives the same graph whichever is installed; symmetric int8 scales are amax / 127.
* Scales are stored as a TensorRT calibration cache (``TRT-...`` header, ``tensor: <float32 hex>``),
  the format ModelOpt reads; a cache is validated (format, and a scale for every tensor this graph
  needs) before it is trusted.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..system.errors import FvdeployError
from ..data.images import image_error, list_images, preprocess, skipped_text, to_rgb
from ..data.labelled import spread_sample
from ..core.model_spec import Preprocessing
from ..core.options import CalibrationMethod

INT8_MAX = 127.0
CACHE_HEADER = "TRT-10000-EntropyCalibration2"
# The method a cache's scales come from, in its header (TensorRT's calibrator names; "Percentile" is fvdeploy's own:
# TensorRT has no such calibrator, and ModelOpt, which reads these caches, skips the header line).
CACHE_METHODS = {"EntropyCalibration2": "entropy", "EntropyCalibration": "entropy", "MinMaxCalibration": "max",
                 "PercentileCalibration": "percentile"}
CHUNK_BUDGET_BYTES = 384 * 2**20  # activations kept per chunk while calibrating
MAX_CHUNK = 8
MIN_RECOMMENDED_IMAGES = 500  # NVIDIA's recommendation for PTQ calibration


class ImageReader:
    """onnxruntime ``CalibrationDataReader``: images opened and preprocessed only when asked for.

    ``set_range`` limits the next pass to images ``[start, end)``; each ``get_next`` returns them as one
    batch. Unreadable files are skipped (``skipped`` lists them with the reason); ``digest`` covers the
    relative path and bytes of every image used, in order.
    """

    def __init__(self, folder: Path, files: list[Path], input_name: str, size: tuple[int, int], pre: Preprocessing) -> None:
        self.folder, self.files, self.input_name, self.size, self.pre = folder, files, input_name, size, pre
        self.skipped: list[str] = []
        self.used = 0
        self._hash = hashlib.sha256()
        self._seen: set[int] = set()
        self._batch: tuple[tuple[int, int], np.ndarray | None] | None = None
        self.set_range(0, len(files))

    def __len__(self) -> int:
        return len(self.files)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self.rewind()

    def rewind(self) -> None:
        self.pos = self.start

    def _load(self, index: int) -> np.ndarray | None:
        path = self.files[index]
        try:
            data = path.read_bytes()
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                array = preprocess(to_rgb(img), self.size, self.pre)
        except (OSError, ValueError, SyntaxError) as err:
            if index not in self._seen:
                self.skipped.append(f"{path.name} ({image_error(err)})")
            self._seen.add(index)
            return None
        if index not in self._seen:
            self._seen.add(index)
            self.used += 1
            self._hash.update(str(path.relative_to(self.folder)).encode() + b"\0" + data)
        return array

    def batch(self) -> np.ndarray | None:
        """The current range's images (loaded once; None when none of them can be read)."""
        key = (self.start, self.end)
        if self._batch is None or self._batch[0] != key:
            arrays = [a for a in (self._load(i) for i in range(*key)) if a is not None]
            self._batch = (key, np.stack(arrays) if arrays else None)
        return self._batch[1]

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end or self.batch() is None:
            return None
        self.pos = self.end
        return {self.input_name: self.batch()}

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


Ranges = dict[str, tuple[float, float]]  # activation tensor name -> (low, high)


def symmetric_scales(ranges: Ranges, qmax: float = INT8_MAX) -> dict[str, float]:
    """Symmetric scales of ranges: amax / qmax (127 for int8, 448 for FP8 E4M3)."""
    return {t: max(abs(low), abs(high), 1e-8) / qmax for t, (low, high) in ranges.items()}


@dataclass
class Calibration:
    ranges: Ranges
    source: str  # "images" or "cache"
    facts: dict = field(default_factory=dict)  # counts, chunk shape, image-list hash (for the record)
    candidates: dict[str, Ranges] = field(default_factory=dict)  # --method auto: each method's ranges

    @property
    def scales(self) -> dict[str, float]:
        """Symmetric int8 scales (what a TensorRT calibration cache stores)."""
        return symmetric_scales(self.ranges)


def _tensor_bytes(model: onnx.ModelProto, names: set[str]) -> int:
    """Bytes one image's worth of ``names`` occupies (shape inference; batch counted as 1)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    total = 0
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if v.name in names:
            dims = [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
            total += 4 * math.prod(dims)
    return total


def chunk_size(model: onnx.ModelProto, needed: set[str]) -> int:
    """Images per calibration pass: as many as fit the activation budget, 1 to 8."""
    per_image = max(_tensor_bytes(model, needed), 1)
    return int(min(MAX_CHUNK, max(1, CHUNK_BUDGET_BYTES // per_image)))


# Each method as onnxruntime's calibrator runs it (histogram sizes as its defaults for that method).
_HISTOGRAMS = {CalibrationMethod.entropy: {"num_bins": 128, "num_quantized_bins": 128},
               CalibrationMethod.percentile: {"num_bins": 2048, "percentile": 99.999}}
SINGLE_METHODS = (CalibrationMethod.max, CalibrationMethod.entropy, CalibrationMethod.percentile)


class _EveryMethod:
    """A histogram collector that feeds one collector per method with the same activations (one pass)."""

    def __init__(self, ort, symmetric: bool) -> None:
        self.collectors = {m: ort.HistogramCollector(method=m.value, symmetric=symmetric, scenario="same",
                                                     **{"percentile": 99.999, "num_quantized_bins": 128,
                                                        **_HISTOGRAMS[m]}) for m in _HISTOGRAMS}

    def collect(self, arrays) -> None:
        for collector in self.collectors.values():
            collector.collect(arrays)

    def ranges(self) -> dict[CalibrationMethod, dict[str, tuple[float, float]]]:
        out = {m: {t: (float(r[0]), float(r[1])) for t, r in c.compute_collection_result().items()}
               for m, c in self.collectors.items()}
        # max: the signed histograms keep each tensor's min and max, as MinMaxCalibrater finds them
        out[CalibrationMethod.max] = {t: (float(h[2]), float(h[3]))
                                      for t, h in self.collectors[CalibrationMethod.entropy].histogram_dict.items()}
        return out


def _calibrator(method: CalibrationMethod, model_path: Path, needed: set[str], augmented: Path, symmetric: bool):
    """onnxruntime's calibrator for ``method`` (for ``auto``, one that collects for all three), recording only
    the ``needed`` tensors (not every input and output of every node of their types: several times the
    memory and time)."""
    from onnxruntime.quantization import calibrate as ort

    base, settings = {
        CalibrationMethod.entropy: (ort.EntropyCalibrater, _HISTOGRAMS[CalibrationMethod.entropy]),
        CalibrationMethod.max: (ort.MinMaxCalibrater, {}),
        CalibrationMethod.percentile: (ort.PercentileCalibrater, _HISTOGRAMS[CalibrationMethod.percentile]),
        CalibrationMethod.auto: (ort.HistogramCalibrater, {}),
    }[method]

    class OnlyNeeded(base):
        def select_tensors_to_calibrate(self, model):
            tensors, value_infos = super().select_tensors_to_calibrate(model)
            return tensors & needed, value_infos

    calibrator = OnlyNeeded(model_path, None, str(augmented), symmetric=symmetric, **settings)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    if method is CalibrationMethod.auto:
        calibrator.collector = _EveryMethod(ort, symmetric)  # collect_data feeds it instead of a collector of its own
    return calibrator


def _complete(ranges: Ranges, needed: set[str], symmetric: bool) -> Ranges:
    missing = sorted(needed - set(ranges))
    if missing:
        raise FvdeployError(f"calibration gave no range for tensor {missing[0]}")
    if not symmetric:
        return {t: ranges[t] for t in sorted(needed)}
    return {t: (-max(abs(lo), abs(hi)), max(abs(lo), abs(hi))) for t, (lo, hi) in sorted(ranges.items()) if t in needed}


def calibration_files(folder: Path, limit: int) -> tuple[list[Path], dict]:
    """The images to calibrate on: all of them, or a seeded sample of ``limit`` spread over the sub-folders in
    proportion to their sizes (the first ``limit`` in sorted order would be one or two classes)."""
    listed = list_images(folder)
    chosen, sample = spread_sample([p.parent for p in listed], limit)
    files = [listed[i] for i in chosen]
    per_folder = collections.Counter(p.parent for p in files).values()
    # one entry per class folder would be 1,000 for ImageNet: the record keeps how even the spread is
    sample.pop("per_group", None)
    sample.update(folders=len({p.parent for p in listed}), folders_used=len(per_folder), per_folder_min=min(per_folder),
                  per_folder_max=max(per_folder))
    return files, sample


def calibrate(model: onnx.ModelProto, model_path: Path, needed: set[str], folder: Path, chosen: tuple[list[Path], dict],
              size: tuple[int, int], pre: Preprocessing, method: CalibrationMethod, workdir: Path, note: Callable[[str], None],
              symmetric: bool = True, advance: Callable[[int], None] = lambda n: None) -> Calibration:
    """Ranges of the ``needed`` activation tensors from the ``chosen`` images of ``folder`` (``calibration_files``),
    streamed in chunks (``advance``: images done). ``model``: the graph at ``model_path``, already loaded."""
    files, sample = chosen
    if sample["chosen"] < sample["of"]:
        note(f"calibrating on a sample of {sample['chosen']} of the {sample['of']} images in {folder}, spread over "
             f"{sample['folders']} folder(s) (seed {sample['seed']}; --calib-images sets how many)")
    reader = ImageReader(folder, files, model.graph.input[0].name, size, pre)
    chunk = chunk_size(model, needed)
    calibrator = _calibrator(method, model_path, needed, workdir / "augmented.onnx", symmetric)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime's histogram collectors print progress
            for start in range(0, len(files), chunk):
                reader.set_range(start, min(start + chunk, len(files)))
                if reader.batch() is not None:  # None: every file of this chunk is unreadable
                    calibrator.collect_data(reader)
                advance(reader.end - reader.start)
            if not reader.used:
                raise FvdeployError(f"no readable image in {folder} ({reader.skipped[0]})")
            if method is CalibrationMethod.auto:
                candidates = {m.value: _complete(r, needed, symmetric) for m, r in calibrator.collector.ranges().items()}
            else:
                ranges = calibrator.compute_data()
                candidates = {method.value: _complete({t: tuple(float(np.asarray(v).reshape(-1)[0]) for v in
                                                              ranges[t].range_value) for t in ranges}, needed, symmetric)}
    finally:
        del calibrator
    used = f"used {reader.used} of the {len(files)} images"
    if reader.used < MIN_RECOMMENDED_IMAGES:
        used += f" (NVIDIA recommends {MIN_RECOMMENDED_IMAGES} or more)"
    if reader.skipped:
        used += f"; {skipped_text(reader.skipped)}"
    note(used)
    first = next(iter(candidates.values()))
    return Calibration(first, "images", {
        "images": reader.used, "skipped": reader.skipped, "files_listed": len(files), "sample": sample,
        "images_sha256": reader.digest,
        "chunk_shape": [chunk, 3, *size], "method": method.value, "tensors": len(first)},
        candidates if method is CalibrationMethod.auto else {})


def cache_text(scales: dict[str, float], method: str = "entropy") -> str:
    """The scales as a TensorRT calibration cache (what ModelOpt and `--calib-cache` read); the header names the
    method that made them."""
    header = "TRT-10000-" + next(h for h, m in CACHE_METHODS.items() if m == method)
    lines = [f"{name}: {struct.pack('!f', scale).hex()}" for name, scale in sorted(scales.items())]
    return header + "\n" + "\n".join(lines) + "\n"


def read_cache(path: Path, needed: set[str]) -> Calibration:
    """Scales from a TensorRT-format cache, refused unless well formed and complete for this graph."""
    try:
        lines = Path(path).read_text().splitlines()
    except UnicodeDecodeError as err:
        raise FvdeployError(f"calibration cache {path} is not a text cache") from err
    if not lines or not lines[0].startswith("TRT-") or "Calibration" not in lines[0]:
        raise FvdeployError(f"calibration cache {path} is not a TensorRT calibration cache (first line "
                            f"{lines[0][:40]!r} should be like {CACHE_HEADER!r})" if lines else
                            f"calibration cache {path} is empty")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            scale = struct.unpack("!f", bytes.fromhex(value))[0]
        except (ValueError, struct.error):
            scale = float("nan")
        if not sep or not name or not math.isfinite(scale) or scale <= 0:
            raise FvdeployError(f"calibration cache {path}, line {number}: expected 'tensor: <8 hex digits>' with a "
                                f"positive scale, got {line[:60]!r}")
        scales[name] = scale
    missing = sorted(needed - set(scales))
    if missing:
        raise FvdeployError(f"calibration cache {path} has no scale for {len(missing)} of the {len(needed)} tensors this "
                            f"graph quantizes (e.g. {missing[0]}): it was made for another graph (another model, or "
                            "another scheme: CPU INT8 and FP8 quantize other tensors); an existing cache is always "
                            "used, so calibrate into another --calib-cache path (with --calib-dir), or delete it")
    ranges = {n: (-scales[n] * INT8_MAX, scales[n] * INT8_MAX) for n in sorted(needed)}
    method = CACHE_METHODS.get(lines[0].rsplit("-", 1)[-1])
    return Calibration(ranges, "cache", {"tensors": len(needed), "images": 0, "method": method})
