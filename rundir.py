"""The run directory and what it holds: models/<name>/ (config.json, split.json, log.csv, last.pt,
best.pt) and runs/<name>/ (TensorBoard), and the bundled models under pretrained/<name>/.

Owns the names a run may have, the one writer and reader of config.json, split.json and the
checkpoints, checked loading (weights_only, sha256 of a bundle), export as a bundle and the
network a config describes. A problem with any of them is a RunError, whose message says what to do.
"""
import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from models import build_model
from utils import ReportedError, signals_held

MODELS_DIR = Path("models")
RUNS_DIR = Path("runs")
REPO_DIR = Path(__file__).resolve().parent
PRETRAINED_DIR = REPO_DIR / "pretrained"   # found from any working directory
DEFAULT_BUNDLE = "crackseg-general"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
NAME_RULE = "letters, digits, '_', '-' and '.', not starting with '.' (it names a folder under models/ or --data-dir)"


class RunError(ReportedError):
    """A problem with a run directory or checkpoint; the message says what to do."""
    exit_code = 2


class Diverged(RunError):
    """Training produced a non-finite loss."""
    exit_code = 1


# ---------------------------------------------------------------- names and folders

def name_arg(text: str) -> str:
    """argparse type of every run and dataset name: a name such as '..' or '/home' would make a
    folder (or an --overwrite) reach outside models/ or the data folder."""
    if not NAME_PATTERN.fullmatch(text):
        plus = " ('+' joins an ensemble's members, RUN1+RUN2, in evaluate.py and predict.py)" if "+" in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid name: use {NAME_RULE}{plus}")
    return text


def runs_arg(text: str) -> str:
    """argparse type of RUN or RUN1+RUN2+... (an ensemble): each member a valid name."""
    for member in text.split("+"):
        name_arg(member)
    return text


def own_folder(root: Path, name: str) -> Path:
    """root/name, proven to lie strictly inside root (no '..', no symlink out) before anything deletes it."""
    folder = root / name
    inside = folder.resolve().parent == root.resolve() and not folder.is_symlink()
    if not NAME_PATTERN.fullmatch(name) or not inside:
        raise RunError(f"refusing to remove {folder}: it does not resolve to a folder directly inside {root}/")
    return folder


def remove_run(name: str) -> None:
    """--overwrite: delete models/NAME and runs/NAME, and nothing else."""
    folders = [own_folder(MODELS_DIR, name), own_folder(RUNS_DIR, name)]   # both checked before either goes
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)


def json_dump(path: Path, obj) -> None:
    """Write atomically: a crash mid-write never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def fresh_run_name(name: str | None, default: str, overwrite: bool) -> str:
    """An explicit name must be new (or --overwrite); the default gets _2, _3, ... instead."""
    if name and bundle_dir(name):
        raise RunError(f"{name!r} is the name of a bundled model ({bundle_dir(name)}); choose another --name "
                       f"(fine-tune it with --init-from {name})")
    if name:
        if (MODELS_DIR / name).exists() and not overwrite:
            raise RunError(f"run {MODELS_DIR / name} already exists; use --resume {name} to "
                           "continue it, --overwrite to replace it, or another --name")
        return name
    candidate, n = default, 1
    while (MODELS_DIR / candidate).exists():
        n += 1
        candidate = f"{default}_{n}"
    return candidate


def bundle_dir(name: str) -> Path | None:
    """pretrained/NAME/ when NAME is a model shipped with crackseg, else None."""
    folder = PRETRAINED_DIR / name
    return folder if name and (folder / "config.json").is_file() else None


# ---------------------------------------------------------------- config.json: the schema

CONFIG_SCHEMA = 2   # files without a "schema" key are version 1: everything written before the schema
# what a key missing from an older file meant when that file was written (the code then assumed these)
CONFIG_DEFAULTS = {"scale": 1.0,               # before --scale: predicted at 1
                   "align_corners": True,      # before --align-corners: the reference's upsampling
                   "base_width": 32, "depth": 4, "bottleneck_dilation": 1, "deep_supervision": False,
                   "minmax": True, "clahe": False, "normalize": None,
                   "thresholds_by_scale": {}}
DEFAULT_THRESHOLD = 0.5   # a run that never validated
RUNTIME_KEYS = ("checkpoint", "threshold_source", "members")   # facts of one loading, never stored


def config_problem(config: dict) -> str | None:
    """Why a reader refuses this config (None: it does not). Thresholds must lie on the 0.01 grid the
    scores are counted on, below 1 (at 1 no pixel is ever a crack)."""
    for threshold in [config.get("threshold", DEFAULT_THRESHOLD), *config.get("thresholds_by_scale", {}).values()]:
        if not (isinstance(threshold, (int, float)) and 0 <= threshold < 1 and round(threshold, 2) == threshold):
            return f"threshold {threshold!r} must be one of 0.00, 0.01, ..., 0.99 (the grid every score is counted on)"
    scale = config.get("scale", 1.0)
    if scale != "auto" and not (isinstance(scale, (int, float)) and 1 / 16 <= scale <= 4):
        return f"scale {scale!r} must be auto or a factor between 0.0625 and 4"
    return None


def upgrade_config(raw: dict, where: Path) -> tuple[dict, str]:
    """A config.json of any schema as today's (every key present, the dataset a list), and where its
    threshold came from ("config.json", or "default" for a run that never validated)."""
    version = raw.get("schema", 1)
    if not isinstance(version, int) or version > CONFIG_SCHEMA:
        raise RunError(f"{where} has schema {version!r}, newer than this crackseg's {CONFIG_SCHEMA}: "
                       "update crackseg (git pull) to read it")
    config = {**CONFIG_DEFAULTS, **raw, "schema": CONFIG_SCHEMA}
    config["thresholds_by_scale"] = dict(config["thresholds_by_scale"])
    if "dataset" in config:
        config["dataset"] = run_datasets(config)
    source = "config.json" if "threshold" in raw else "default"
    config.setdefault("threshold", DEFAULT_THRESHOLD)
    problem = config_problem(config)
    if problem:
        raise RunError(f"{where}: {problem}; fix the value or train the run again")
    return config, source


def stored_config(config: dict) -> dict:
    """What is written of a config: today's schema, no runtime facts. A value its reader would refuse is a
    bug in the writer, so it stops here rather than leave a run nothing can load."""
    stored = {k: v for k, v in config.items() if k not in RUNTIME_KEYS}
    stored["schema"] = CONFIG_SCHEMA
    problem = config_problem(stored)
    if problem:
        raise ValueError(f"refusing to write a config the reader refuses: {problem}")
    return stored


def config_path(name: str) -> Path:
    return (bundle_dir(name) or MODELS_DIR / name) / "config.json"


def load_config_with_source(name: str) -> tuple[dict, str]:
    """A run's or bundled model's config.json, upgraded to today's schema, and its threshold's source."""
    path = config_path(name)
    if not path.is_file():
        runs = sorted(p.name for p in MODELS_DIR.glob("*/config.json"))
        known = ", ".join(p.split("/")[0] for p in runs) or "none"
        raise RunError(f"no run {name!r}: {path} does not exist (runs under {MODELS_DIR}/: {known})")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is not readable JSON ({err}); restore it or train the run again") from None
    return upgrade_config(raw, path)


def load_config(name: str) -> dict:
    """A run's config.json, or a bundled model's (bundled names come first: train.py refuses them),
    upgraded to today's schema."""
    return load_config_with_source(name)[0]


def write_config(folder: Path, config: dict) -> None:
    """folder/config.json: the run's options, provenance and, once validated, its threshold (stored_config)."""
    json_dump(folder / "config.json", stored_config(config))


def eval_folder(dataset: str, differs: dict[str, str]) -> str:
    """The folder under models/RUN/eval/ of one evaluation: DATASET for the run's own settings (what the
    benchmarks read), DATASET_<setting><value>... for any other, e.g. DATASET_tta, DATASET_scale1,
    DATASET_last_fp32, so an evaluation under other settings never replaces the default one's results.
    `differs`: {setting: value} of the settings that are not the run's own, in a fixed order."""
    return "_".join([dataset, *(f"{key}{value}" if value else key for key, value in differs.items())])


def write_split(folder: Path, split: dict) -> None:
    """folder/split.json: {DATASET: {"train": [...], "val": [...]}}, written once when the run starts."""
    json_dump(folder / "split.json", split)


def run_datasets(config: dict) -> list[str]:
    """The training datasets of a run (runs of one dataset stored a name, not a list)."""
    return [config["dataset"]] if isinstance(config["dataset"], str) else list(config["dataset"])


def read_split(name: str) -> dict[str, dict[str, list[str]]]:
    """{DATASET: {"train": [...], "val": [...]}} of a run; runs of one dataset stored {"train", "val", ...}."""
    split = json.loads(((bundle_dir(name) or MODELS_DIR / name) / "split.json").read_text())
    if "train" in split:
        return {run_datasets(load_config(name))[0]: {"train": split["train"], "val": split["val"]}}
    return split


def provenance() -> dict:
    """Git commit and package versions, saved with every run."""
    import albumentations
    import cv2
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"git_commit": commit or "unknown", "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "albumentations": albumentations.__version__}


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """Temporary file then rename, never interrupted: a crash leaves the previous checkpoint whole."""
    tmp = path.with_name(path.name + ".tmp")
    with signals_held():
        torch.save(state, tmp)
        os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu", bare: bool = False) -> dict:
    """weights_only=True: a checkpoint from a stranger cannot run code when loaded.
    bare: a plain state dict (a bundled model.pt), not a crackseg training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise RunError(f"{path} holds objects other than tensors and plain values, so it was "
                       f"refused unloaded (it could run code): {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise RunError(f"{path} is truncated or not a PyTorch checkpoint ({err}); "
                       "use another checkpoint of the run (last.pt or best.pt)") from None
    if not isinstance(state, dict) or not (bare or ("model" in state and "config" in state)):
        raise RunError(f"{path} is not a crackseg checkpoint (no 'model' and 'config' entries)")
    return state


def model_from_config(config: dict) -> torch.nn.Module:
    """The network a config (today's schema, or train.py's options) describes."""
    return build_model(config["arch"], deep_supervision=config["deep_supervision"], base_width=config["base_width"],
                       align_corners=config["align_corners"], depth=config["depth"],
                       bottleneck_dilation=config["bottleneck_dilation"])


def load_weights(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise RunError(f"{path} does not fit a {type(model).__name__} of this configuration "
                       f"(it was saved by a {state['config'].get('arch')} run): {detail}") from None


def run_state(name: str, which: str = "best.pt", device: torch.device | str = "cpu") -> tuple[dict, Path]:
    """The weights of a run (its checkpoint) or of a bundled model, as {"model", "config"}, and their file."""
    bundle = bundle_dir(name)
    if bundle:
        return load_bundle(bundle, device), bundle / "model.pt"
    path = MODELS_DIR / name / which
    return load_checkpoint(path, device), path


# ---------------------------------------------------------------- bundles

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(folder: Path, device: torch.device | str = "cpu") -> dict:
    """A bundled model: model.pt (half-precision weights only) checked against the sha256 in config.json
    before it is opened, loaded with weights_only=True, and widened to fp32 (the engine picks the precision)."""
    config = upgrade_config(json.loads((folder / "config.json").read_text()), folder / "config.json")[0]
    path = folder / "model.pt"
    restore = f"restore it with `git checkout -- pretrained/{folder.name}/model.pt`"
    if not path.is_file():
        raise RunError(f"{path} is missing: {restore}")
    found = file_sha256(path)
    if found != config.get("sha256"):
        raise RunError(f"{path} does not match the sha256 in {folder / 'config.json'} (expected "
                       f"{config.get('sha256')}, found {found}): the file is damaged or was replaced; {restore}")
    state = load_checkpoint(path, device, bare=True)
    return {"model": {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, "config": config}


LOCAL_KEYS = ("data_dir", "name", "resume", "overwrite", "init_from", "device", "workers", "cache", "preset",
              "panels_every")   # paths and machine settings: meaningless in a shipped model


def export_bundle(run: str, folder: Path, extra: dict | None = None) -> dict:
    """Write a finished run as a bundled model: model.pt (best.pt's weights only, half precision),
    config.json (no local paths, with model.pt's sha256 and `extra`, e.g. its terms) and split.json.
    Returns the config."""
    state, _ = run_state(run)
    folder.mkdir(parents=True, exist_ok=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(half, folder / "model.pt")
    config = {k: v for k, v in load_config(run).items() if k not in LOCAL_KEYS}
    config.update({"exported_from": run, "weights": "fp16", "sha256": file_sha256(folder / "model.pt"),
                   **(extra or {})})
    write_config(folder, config)
    write_split(folder, read_split(run))
    return config
