"""train.py's options as the rest of the code reads them: the presets, the measured recipe as flags
(benchmarks/ import them), and the small settings the training loop takes (Loading, Optimisation,
Validation), built from the parsed options by name, so no library function reads argparse's Namespace.
"""
from dataclasses import dataclass, fields

from augment import CAMERA_PARTS

# The README's measured recipe as train.py flags, in the parts the experiments vary separately: the
# optimisation and augmentation, the camera augmentation, the shipped network (benchmarks/ import them).
RECIPE_BASE = ("--crop", "256", "--batch-size", "4", "--lr", "1e-3", "--scheduler", "CosineAnnealingLR",
               "--photometric", "--scale-aug", "--cache", "--epochs", "1000")
RECIPE_CAMERA = ("--camera-aug",)
RECIPE_NETWORK = ("--base-width", "4")
# adopted after the bundle's runs were made (benchmarks/studies/loss_align.py: no worse, and tiles match one pass)
RECIPE_UPSAMPLING = ("--no-align-corners",)

PRESETS = {  # --preset NAME sets these defaults; flags given explicitly still win
    "fast": {"dataset": ["SYNTHETIC"], "epochs": 40, "crop": 128, "batch_size": 8, "lr": 1e-3,
             "scheduler": "CosineAnnealingLR", "max_minutes": 4.5},
    # a few labelled photos of a new surface, with --init-from (the benchmarks' finetune.py measured it)
    "finetune": {"crop": 256, "batch_size": 4, "lr": 1e-3, "scheduler": "CosineAnnealingLR", "photometric": True,
                 "scale_aug": True, "camera_aug": list(CAMERA_PARTS), "cache": True, "epochs": 1000,
                 "epoch_size": 64, "max_minutes": 5},
    # RECIPE_BASE + RECIPE_CAMERA + RECIPE_NETWORK + RECIPE_UPSAMPLING (tests/test_train.py checks they agree)
    "recipe": {"crop": 256, "batch_size": 4, "lr": 1e-3, "scheduler": "CosineAnnealingLR", "photometric": True,
               "scale_aug": True, "cache": True, "epochs": 1000, "camera_aug": list(CAMERA_PARTS), "base_width": 4,
               "align_corners": False},
}


class Settings:
    """Built from train.py's options by name (vars(args)); the training loop reads only these fields."""

    @classmethod
    def from_options(cls, options: dict):
        return cls(**{f.name: options[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Loading(Settings):
    """How crops are drawn: sampling over datasets (and their --groups), the seed, crops per epoch (0: one
    per image), batch, workers."""
    dataset: list
    sampling: str
    groups: list
    seed: int
    epoch_size: int
    batch_size: int
    workers: int

    def group_numbers(self) -> list[int]:
        """Each dataset's group, in --dataset order: its --groups entry, else a group of its own."""
        named = {d: k for k, (_, members) in enumerate(self.groups) for d in members}
        return [named.get(d, len(self.groups) + i) for i, d in enumerate(self.dataset)]


@dataclass(frozen=True)
class Optimisation(Settings):
    """The network (its config keys), the optimiser and schedule, the plan (--epochs, --max-minutes), the loss."""
    arch: str
    base_width: int
    depth: int
    bottleneck_dilation: int
    deep_supervision: bool
    align_corners: bool
    freeze_encoder: bool
    sync_bn: bool
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    scheduler: str
    patience: int
    factor: float
    min_lr: float
    epochs: int
    max_minutes: float | None
    ema: float
    loss: str
    batch_size: int


@dataclass(frozen=True)
class Validation(Settings):
    """What validation scores with: the loss, the scale policy, how often panels go to TensorBoard."""
    loss: str
    scale: float | str
    panels_every: int
