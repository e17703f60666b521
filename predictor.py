"""The one seam between a model and a photo: a Predictor loads a run, a bundled model, an ensemble
(RUN1+RUN2) or a network export.py wrote (run by onnxruntime from its model.onnx and model.onnx.json
alone) once, and turns a photo, a path or an RGB array, into its crack probability map on the photo's
own grid, with the factor the network saw it at (the scale policy: a fixed factor or auto).

    from predictor import Predictor
    model = Predictor.load()                  # the bundled crackseg-general; Predictor.load("run1")
    found = model.predict("photo.jpg")        # found.prob (HxW, 0-1), found.mask, found.factor

predict.py, evaluate.py, training's validation (inference.evaluate) and the benchmarks predict through
it; maps_at() gives every factor's map for the benchmarks that replay scale rules.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from dataset import HEIF_EXTENSIONS, DatasetError, Intensity, check_header, preprocess, read_heif
from engine import Engine, make_engine
from inference import OVERLAP, TILE, Scaled, load_runs, predict_on_grid, predict_scaled, use_scale
from onnxnet import load_onnx_run
from rundir import DEFAULT_BUNDLE, RunError


def read_photo(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, upright: IMREAD_COLOR applies the EXIF orientation (dataset.read_image does not)."""
    path = Path(path)
    check_header(path)
    if path.suffix.lower() in HEIF_EXTENSIONS:
        return cv2.cvtColor(read_heif(path), cv2.COLOR_BGR2RGB)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise DatasetError(f"{path}: OpenCV cannot decode it (truncated, corrupt or an unsupported format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class Prediction:
    """One photo's map: prob (HxW float32 in [0, 1], the photo's grid), the factor it was seen at, the
    threshold its mask uses, and under auto the label-free features of each factor's map."""
    prob: np.ndarray
    factor: float
    threshold: float
    features: dict = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        return self.prob > self.threshold


@dataclass(frozen=True)
class MapOptions:
    """How maps are made: the mean of the 8 rotations/flips (tta), the largest side predicted in one
    pass (tile) and the overlap of neighbouring tiles."""
    tta: bool = False
    tile: int = TILE
    overlap: int = OVERLAP


@dataclass
class Predictor:
    """A model ready to predict: the network, the engine it runs on, its config (today's schema:
    preprocessing, scale policy, threshold, terms; plus where the threshold and weights came from)
    and how maps are made."""
    model: torch.nn.Module
    engine: Engine
    config: dict
    options: MapOptions = MapOptions()

    @classmethod
    def load(cls, name: str = DEFAULT_BUNDLE, *, backend: str = "torch", checkpoint: str = "best.pt",
             scale: float | str | None = None, engine: Engine | None = None,
             options: MapOptions = MapOptions()) -> "Predictor":
        """Run, bundle or ensemble `name` on `engine` (default: the best this machine has), under its own
        scale policy or `scale` (with the threshold chosen under it where the config keeps one). backend
        "onnxruntime": export.py's network of `name`, from its .onnx and .json alone (fp32, on the CPU,
        or the GPU where the engine's device is one and onnxruntime has its provider)."""
        engine = engine or make_engine()
        if backend == "onnxruntime":
            model, config = load_onnx_run(name, engine.device)
            engine = make_engine("cpu", "fp32", False)   # onnxruntime takes fp32 CPU arrays, runs its own device
        elif backend == "torch":
            model, config = load_runs(name, engine, checkpoint)
        else:
            raise RunError(f"backend {backend!r}: use torch or onnxruntime")
        return cls(model, engine, config, options).at_scale(scale)

    @property
    def threshold(self) -> float:
        return self.config["threshold"]

    @property
    def scale(self) -> float | str:
        return self.config["scale"]

    def at_scale(self, scale: float | str | None) -> "Predictor":
        """The same loaded network under scale policy `scale` (None: its own), with the threshold chosen
        under that policy where the config keeps one (inference.use_scale)."""
        config = dict(self.config)
        use_scale(config, scale)
        return replace(self, config=config)

    def tensor(self, image: np.ndarray, name: str = "photo") -> torch.Tensor:
        """An RGB uint8 photo as the network's 1x3xHxW input, with the model's own preprocessing."""
        x = preprocess(image, Intensity.from_config(self.config), name)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]

    def predict_tensor(self, x: torch.Tensor) -> Scaled:
        """A preprocessed 1x3xHxW image's map (1x1xHxW) under the scale policy."""
        o = self.options
        return predict_scaled(self.model, x, self.engine, self.scale, o.tta, o.tile, o.overlap)

    def predict(self, photo: str | Path | np.ndarray, name: str | None = None) -> Prediction:
        """A photo (a path: read upright; or an RGB uint8 array) to its map on its own grid; `name` is
        what a problem with the photo is reported under (default: its path)."""
        image = photo if isinstance(photo, np.ndarray) else read_photo(Path(photo))
        name = name or (str(photo) if not isinstance(photo, np.ndarray) else "the photo")
        scaled = self.predict_tensor(self.tensor(image, name))
        return Prediction(scaled.prob[0, 0].numpy(), scaled.factor, self.threshold, scaled.features)

    def maps_at(self, x: torch.Tensor, factors) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """{factor: (the map on the network's grid, that map on the image's grid)} of a preprocessed
        1x3xHxW image, for every factor given (what auto's rules are replayed from)."""
        found = {}
        for factor in factors:
            o = self.options
            net, prob = predict_on_grid(self.model, x, self.engine, factor, o.tta, o.tile, o.overlap)
            found[factor] = (net[0, 0].numpy(), prob[0, 0].numpy())
        return found
