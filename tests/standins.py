"""Stand-in networks for tests whose subject is not the network: their maps are known exactly."""
import cv2
import numpy as np
import torch


class Darkness(torch.nn.Module):
    """Crack probability = how dark the pixel is (inputs in [0, 1]): a drawn dark crack is found exactly."""

    def forward(self, x):
        return 24 * (0.5 - x.mean(1, keepdim=True))


def standin_config(**extra) -> dict:
    """What predict.py and evaluate.py read of a run's config.json, as rundir's schema gives it."""
    from pathlib import Path

    from rundir import upgrade_config
    config, _ = upgrade_config({"arch": "Darkness", "minmax": True, "normalize": None, "clahe": False,
                                "threshold": 0.5, "scale": 1.0, **extra}, Path("standin/config.json"))
    return {**config, "threshold_source": "the stand-in"}


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """HxWx3 float32 in [0, 1]: smooth texture crossed by dark lines, like a wall with cracks."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 3)
    image = (image - image.min()) / (image.max() - image.min())
    for _ in range(height * width // 200_000 + 2):
        ends = [tuple(map(int, rng.integers(0, (width, height)))) for _ in range(2)]
        cv2.line(image, *ends, (0, 0, 0), int(rng.integers(1, 6)))
    return image


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Random weights with BatchNorm statistics of real activations: outputs spread over (0, 1)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: one batch gives its exact statistics
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()
