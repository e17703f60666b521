"""train.py's options: their groups (train.py builds its parser from them), the presets, the measured recipe as flags
(benchmarks/ import them), and the small settings the training loop takes (Loading, Optimisation,
Validation), built from the parsed options by name, so no library function reads argparse's Namespace.
"""
import argparse
from dataclasses import dataclass, fields

from augment import CAMERA_PARTS
from engine import add_engine_options
from losses import LOSSES
from models import ARCHS
from rundir import name_arg
from scales import add_scale_option

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
    """How crops are drawn: sampling over datasets (and their --groups), the mined negatives' share, the
    seed, crops per epoch (0: one per image), batch, workers."""
    dataset: list
    sampling: str
    groups: list
    hard_negatives: float
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


# ---------------------------------------------------------------- the option groups (train.py builds the parser)

def add_data_options(p) -> None:
    p.add_argument("--dataset", nargs="+", default=["SYNTHETIC"], metavar="DATASET", type=name_arg,
                   help="folders under --data-dir, one model on all of them; SYNTHETIC (the default) is made on "
                        "first use")
    p.add_argument("--sampling", default="proportional", choices=["proportional", "equal", "group"],
                   help="how an epoch (as many crops as training images) draws from several datasets: "
                        "each image once (proportional, the default), the same number of crops from each dataset "
                        "(equal), or from each group of --groups, a dataset in none its own group (group)")
    p.add_argument("--groups", nargs="+", default=[], type=dataset_group, metavar="NAME=DATASET,DATASET",
                   help="with --sampling group: datasets that are one source (e.g. "
                        "UAVCRACKX=UAVCRACKX4,UAVCRACKX8,UAVCRACKX16, one road at three zooms) share one group's crops")
    p.add_argument("--small-tiles", default="pad", choices=["pad", "mosaic"],
                   help="photos whose short side is under --crop: padded up to the crop (pad, the default), or laid "
                        "in a grid with other photos of their dataset, so the crop is all photo (mosaic)")
    p.add_argument("--hard-negatives", type=float, default=0.0, metavar="SHARE",
                   help="this share of every epoch's crops (e.g. 0.1) drawn from crack-free windows of the "
                        "training photos that look most like cracks (joints, edges, shadows); needs --cache")
    p.add_argument("--thicken-labels", nargs="+", default=[], type=dataset_pixels, metavar="DATASET=PX",
                   help="read DATASET's masks dilated by PX pixels (training and validation), for sources "
                        "labelled with thinner lines than the others (benchmarks' label_widths.py measures them)")
    p.add_argument("--data-dir", default="inputs",
                   help="folder holding the datasets, each NAME/images and NAME/masks (prepare_data.py makes them); "
                        "default inputs")
    p.add_argument("--val-split", type=float, default=0.1,
                   help="fraction of each dataset held out for validation, which chooses best.pt and the run's "
                        "threshold (0.1; 0 trains on every image and keeps the last epoch)")
    p.add_argument("--val-every", type=int, default=1, metavar="N",
                   help="validate after the first epoch, every N-th and the last (1: every epoch); best.pt is the "
                        "best of those. On a CPU, validating hundreds of photos can take as long as the epoch itself")
    add_scale_option(p, 1.0)
    p.add_argument("--crop", type=int, default=512,
                   help="random crop side, a multiple of 16; 512 as in the reference, 256 on a CPU")
    p.add_argument("--resize", action="store_true",
                   help="resize to --crop instead of cropping (kills thin cracks: leave it off)")
    p.add_argument("--minmax", action=argparse.BooleanOptionalAction, default=True,
                   help="per-image min-max scaling to [0,1], as the reference (off: value/255)")
    p.add_argument("--normalize", type=float, nargs=2, metavar=("MEAN", "STD"),
                   help="subtract MEAN and divide by STD after scaling to [0,1]; the reference tried 0.535 0.135 "
                        "(default: off)")
    p.add_argument("--clahe", action="store_true",
                   help="contrast-limited histogram equalisation before scaling (default: off)")
    p.add_argument("--photometric", action="store_true",
                   help="random brightness/contrast augmentation (on in the recipe)")
    p.add_argument("--scale-aug", action="store_true",
                   help="random scale 0.7-1.4 and rotation +-20 degrees (on in the recipe)")
    p.add_argument("--scale-aug-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="each crop seen from a random distance: zoom drawn log-uniformly from LO-HI (e.g. 0.25 4: "
                        "labelled 3-7 px cracks become 1-28 px), small images mirrored outward; replaces the "
                        "scale of --scale-aug (which keeps its rotation) and of --camera-aug")
    p.add_argument("--camera-aug", nargs="*", choices=CAMERA_PARTS, metavar="PART",
                   help="imitate other cameras on the uint8 photo: " + ", ".join(CAMERA_PARTS)
                        + " (no PART: all, as the recipe, for photos from cameras the training set lacks)")
    p.add_argument("--epoch-size", type=int, default=0, metavar="CROPS",
                   help="crops per epoch (0: as many as training images); a few images need more per epoch "
                        "(64 in the finetune preset)")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader processes (2; about one per spare core); 0 = in the main process")
    p.add_argument("--cache", action="store_true",
                   help="keep decoded images in memory: faster epochs where the datasets fit in RAM (on in the recipe)")


def add_model_options(p) -> None:
    p.add_argument("--arch", default="UNet", choices=ARCHS,
                   help="the network: UNet (the reference and the recipe), NestedUNet (UNet++) or AttentionUNet")
    p.add_argument("--deep-supervision", action="store_true", help="NestedUNet only: loss on 4 heads")
    p.add_argument("--base-width", type=int, default=32,
                   help="filters of the first block, doubling per level (32 = reference; 4 in the recipe)")
    p.add_argument("--depth", type=int, default=4, choices=[4, 5],
                   help="UNet poolings: 4 (the reference) or 5, which doubles the bottleneck's view of the photo")
    p.add_argument("--bottleneck-dilation", type=int, default=1, choices=[1, 2, 4],
                   help="UNet: space the bottleneck's 3x3 taps this far apart (1 = the reference; 2 or 4 widen "
                        "its view at the same weights and time)")
    p.add_argument("--loss", default="BCEDiceLoss", choices=LOSSES,
                   help="BCEDiceLoss: the reference (Dice per crop); BCEDiceBatch: Dice over the batch, so "
                        "crack-free crops still give a gradient")
    p.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=True,
                   help="bilinear upsampling as the reference (True); False makes tiled predictions of "
                        "large photos match one pass (stored in config.json, inherited by --init-from)")


def add_optimisation_options(p) -> None:
    p.add_argument("--epochs", type=int, default=100,
                   help="passes over the training crops (100 as in the reference); with --max-minutes, a large "
                        "value (1000) lets the clock end the run")
    p.add_argument("--batch-size", type=int, default=4,
                   help="crops per step, per process under torchrun (4 as in the reference)")
    p.add_argument("--optimizer", default="Adam", choices=["Adam", "SGD"],
                   help="Adam (the reference) or SGD with Nesterov momentum")
    p.add_argument("--lr", type=float, default=1e-2,
                   help="initial learning rate: 1e-2 with ReduceLROnPlateau (the reference), 1e-3 with "
                        "CosineAnnealingLR (the recipe)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD only: momentum (0.9)")
    p.add_argument("--weight-decay", type=float, default=1e-4,
                   help="L2 penalty in the optimiser (1e-4 as in the reference; 0 = off)")
    p.add_argument("--scheduler", default="ReduceLROnPlateau",
                   choices=["ReduceLROnPlateau", "CosineAnnealingLR", "none"],
                   help="ReduceLROnPlateau: lr times --factor after --patience epochs without a lower validation "
                        "loss (the reference); CosineAnnealingLR: from --lr to --min-lr over the whole plan, "
                        "--epochs or --max-minutes (the recipe); none: --lr throughout")
    p.add_argument("--patience", type=int, default=10,
                   help="ReduceLROnPlateau: epochs without improvement before the lr drops (10)")
    p.add_argument("--factor", type=float, default=0.1,
                   help="ReduceLROnPlateau: what the lr is multiplied by when it drops (0.1)")
    p.add_argument("--min-lr", type=float, default=1e-8,
                   help="ReduceLROnPlateau's floor and CosineAnnealingLR's end (1e-8; 0 is fine)")
    p.add_argument("--max-minutes", type=float,
                   help="wall-clock budget: training stops when it is spent (mid-epoch: that epoch is then "
                        "validated and saved), and the cosine schedule spans it, so the run ends annealed")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights and BatchNorm "
                        "statistics (e.g. 0.995 per step); 0 = off")


def add_machine_options(p) -> None:
    add_engine_options(p)
    p.add_argument("--sync-bn", action="store_true",
                   help="synchronised BatchNorm under torchrun: statistics over every GPU's crops (default: off)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the validation split, the initial weights, shuffling and augmentation (0); other "
                        "seeds measure run-to-run spread")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (slower); with --workers 0 a resumed run repeats exactly")


def add_run_options(p) -> None:
    p.add_argument("--name", type=name_arg, help="run name; default <DATASET>_<arch>, suffixed _2, _3 if taken")
    p.add_argument("--resume", metavar="RUN", type=name_arg, help="continue RUN after its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --name")
    p.add_argument("--init-from", metavar="RUN", type=name_arg,
                   help="start from RUN's best weights (fine-tuning; crackseg-general is the bundled model); "
                        "the network and preprocessing options come from RUN")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the decoder: encoder weights and BatchNorm statistics stay fixed")
    p.add_argument("--panels-every", type=int, default=5,
                   help="epochs between TensorBoard panels of validation images (5)")


def dataset_pixels(text: str) -> tuple[str, int]:
    name, _, pixels = text.partition("=")
    if not name or not pixels.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not DATASET=PIXELS (e.g. CFD=2)")
    return name_arg(name), int(pixels)


def dataset_group(text: str) -> tuple[str, list[str]]:
    name, _, members = text.partition("=")
    datasets = [m for m in members.split(",") if m]
    if not name or not datasets:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=DATASET,DATASET (e.g. UAVCRACKX=UAVCRACKX4,UAVCRACKX8)")
    return name_arg(name), [name_arg(d) for d in datasets]
