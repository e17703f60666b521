"""train.py end to end on generated data, in subprocesses exactly as a user runs it."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "SYN", "--crop", "64", "--batch-size", "4", "--base-width", "4", "--workers", "0",
        "--val-split", "0.25"]


def run(script: str, *args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


def test_short_training_run_leaves_a_complete_run_directory(tmp_path, synthetic_root):
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "2", cwd=tmp_path)
    run_dir = tmp_path / "models" / "SYN_UNet"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv",
                                                         "split.json"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "UNet" and config["lr"] == 0.01 and "torch" in config["provenance"]
    assert 0 <= config["threshold"] <= 1
    split = json.loads((run_dir / "split.json").read_text())
    assert len(split["val"]) == 3 and len(split["train"]) == 9
    rows = log_rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_loss", "val_iou", "val_f1", "lr", "data_wait"} <= set(rows[0])
    assert list((tmp_path / "runs" / "SYN_UNet").glob("events.out.tfevents.*"))
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 2

    # the same command again gets a new name; an explicit existing name is refused
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", cwd=tmp_path)
    assert (tmp_path / "models" / "SYN_UNet_2" / "best.pt").exists()
    refused = run("train.py", *TINY, "--data-dir", synthetic_root, "--name", "SYN_UNet", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("arch", ["NestedUNet", "AttentionUNet"])
def test_every_arch_trains_from_the_command_line(tmp_path, synthetic_root, arch):
    extra = ["--deep-supervision"] if arch == "NestedUNet" else []
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", "--arch", arch, *extra, cwd=tmp_path)
    assert (tmp_path / "models" / f"SYN_{arch}" / "best.pt").exists()


def test_a_small_model_learns_the_synthetic_cracks(tmp_path, synthetic_root):
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "25", "--lr", "3e-3", "--base-width", "8",
        "--crop", "96", "--batch-size", "3", "--name", "learn", cwd=tmp_path)
    rows = log_rows(tmp_path / "models" / "learn")
    assert float(rows[-1]["train_loss"]) < 0.85 * float(rows[0]["train_loss"])
    assert float(rows[0]["val_ods_f1"]) < 0.2 < 0.5 < max(float(r["val_ods_f1"]) for r in rows)
