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


def test_weight_average_ramps_its_decay_and_copies_integer_buffers():
    import train
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = train.WeightAverage(model, decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in start.items() if v.is_floating_point()}
    for n in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model(torch.randn(2, 1, 5, 5))   # moves the running statistics and num_batches_tracked
        average.update()
        decay = min(0.5, (1 + n) / (10 + n))   # 2/11, 3/12, 4/13: the ramp, not yet 0.5
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * model.state_dict()[k]
    for k, v in average.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, expected[k])
            assert not torch.equal(v, model.state_dict()[k])
        else:
            assert int(v) == int(model.state_dict()[k]) == 3
    assert not average.model.training and not any(p.requires_grad for p in average.model.parameters())


def test_ema_run_validates_the_average_and_resumes_exactly(tmp_path, synthetic_root):
    import train
    from utils import evaluate, make_engine, model_from_config
    args = [*TINY, "--data-dir", synthetic_root, "--epochs", "3", "--ema", "0.9", "--precision", "fp32",
            "--no-channels-last", "--lr", "3e-3", "--deterministic"]
    run("train.py", *args, "--name", "straight", cwd=tmp_path)
    run("train.py", *args, "--name", "cut", "--max-minutes", "1e-6", cwd=tmp_path)   # stops after epoch 1
    assert len(log_rows(tmp_path / "models" / "cut")) == 1
    run("train.py", "--resume", "cut", "--max-minutes", "100", cwd=tmp_path)
    for column in ("train_loss", "val_loss", "val_ods_f1"):
        assert [float(r[column]) for r in log_rows(tmp_path / "models" / "cut")] == pytest.approx(
            [float(r[column]) for r in log_rows(tmp_path / "models" / "straight")], abs=1e-5)

    # the logged validation loss is that of the averaged weights, saved as "model"
    state = torch.load(tmp_path / "models" / "straight" / "last.pt", weights_only=True)
    engine = make_engine("cpu", "fp32", False)
    _, val_set, _ = train.prepare_data(train.get_args([str(a) for a in args]), engine)
    losses = {}
    for key in ("model", "raw_model"):
        model = model_from_config(state["config"])
        model.load_state_dict(state[key])
        losses[key] = evaluate(model, val_set, engine, loss_name="BCEDiceLoss")["loss"]
    assert losses["model"] == pytest.approx(float(log_rows(tmp_path / "models" / "straight")[-1]["val_loss"]),
                                            abs=1e-5)
    assert abs(losses["raw_model"] - losses["model"]) > 1e-4
    assert state["average_updates"] == 3 * 2   # 9 training images, batch 4, last partial batch dropped
