"""config.json has one owner (rundir: upgrade_config, stored_config): every historical format loads and
predicts as the code of its time did, runtime facts are never stored, and no writer stores a value its
reader refuses (a run whose validation found nothing still evaluates and predicts)."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import inference
import rundir
from engine import make_engine
from models import build_model

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((Path(__file__).resolve().parent / "fixtures" / "configs").glob("*.json"))
ENGINE = make_engine("cpu", "fp32", False)
# what the code assumed of a key its file lacked, before the schema: the slow, obvious reference
BEFORE = {"scale": 1.0, "align_corners": True, "base_width": 32, "depth": 4, "bottleneck_dilation": 1,
          "deep_supervision": False, "minmax": True, "clahe": False, "normalize": None, "threshold": 0.5}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_every_historical_config_reads_as_the_code_of_its_time_read_it(fixture):
    raw = json.loads(fixture.read_text())
    config, source = rundir.upgrade_config(raw, fixture)
    for key, then in BEFORE.items():
        assert config[key] == raw.get(key, then), key
    assert source == ("config.json" if "threshold" in raw else "default")
    assert isinstance(config["dataset"], list) and config["schema"] == rundir.CONFIG_SCHEMA
    stored = rundir.stored_config({**config, "checkpoint": "models/x/best.pt", "threshold_source": source})
    assert "checkpoint" not in stored and "threshold_source" not in stored
    assert rundir.upgrade_config(stored, fixture) == (config, "config.json")   # a round trip changes nothing


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_a_run_with_a_historical_config_predicts_what_its_network_of_that_time_predicts(fixture, tmp_path,
                                                                                         monkeypatch):
    raw = {**json.loads(fixture.read_text()), "base_width": 4}
    raw.pop("sha256", None)
    then = {**BEFORE, **raw}
    torch.manual_seed(0)
    network = build_model("UNet", base_width=4, align_corners=then["align_corners"], depth=then["depth"]).eval()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "old").mkdir(parents=True)
    (tmp_path / "models" / "old" / "config.json").write_text(json.dumps(raw))
    torch.save({"model": network.state_dict(), "config": raw}, tmp_path / "models" / "old" / "best.pt")
    model, config = inference.load_run_model("old", ENGINE)
    x = torch.rand(1, 3, 96, 128)
    with torch.inference_mode():
        expected = torch.sigmoid(inference.forward_logits(inference.for_inference(network, ENGINE), x, ENGINE))
    if then["scale"] == 1.0:
        assert torch.equal(inference.predict_scaled(model, x, ENGINE, config["scale"]).prob, expected)
    assert config["scale"] == then["scale"] and config["threshold"] == then["threshold"]
    assert config["checkpoint"].endswith("best.pt")
    assert "checkpoint" not in json.loads((tmp_path / "models" / "old" / "config.json").read_text())


def test_a_threshold_the_reader_refuses_is_never_written_and_named_when_read(tmp_path):
    with pytest.raises(ValueError, match="threshold 1.0"):
        rundir.stored_config({"arch": "UNet", "threshold": 1.0})
    with pytest.raises(ValueError, match="threshold 0.555"):
        rundir.stored_config({"arch": "UNet", "thresholds_by_scale": {"1": 0.555}})
    (tmp_path / "config.json").write_text(json.dumps({"arch": "UNet", "threshold": 1.0}))
    with pytest.raises(rundir.RunError, match=r"config\.json: threshold 1\.0"):
        rundir.upgrade_config({"arch": "UNet", "threshold": 1.0}, tmp_path / "config.json")
    with pytest.raises(rundir.RunError, match="newer than this crackseg"):
        rundir.upgrade_config({"arch": "UNet", "schema": rundir.CONFIG_SCHEMA + 1}, tmp_path / "config.json")


def test_the_threshold_rule_never_picks_one_nothing_passes():
    from training import run_threshold
    nothing = [np.zeros(101), np.zeros(101)]
    assert run_threshold(nothing) == rundir.DEFAULT_THRESHOLD        # F 0 everywhere: no choice made
    rising = [np.linspace(0, 1, 101)]                                   # best at 1.00, where no pixel passes
    assert run_threshold(rising) == 0.99
    peak = np.zeros(101)
    peak[37] = 0.8
    assert run_threshold([peak]) == 0.37


def test_a_run_whose_validation_found_no_crack_is_evaluated_and_predicted(tmp_path, synthetic_root):
    from dataset import split_ids
    data = tmp_path / "data" / "BLANK"
    (data / "masks").mkdir(parents=True)
    (data / "images").symlink_to(Path(synthetic_root) / "SYN" / "images", target_is_directory=True)
    masks = sorted((Path(synthetic_root) / "SYN" / "masks").iterdir())
    _, val = split_ids([m.stem for m in masks], 0.25, 0)   # train.py's split: its validation photos show no crack
    for mask in masks:
        label = cv2.imread(str(mask), 0)
        cv2.imwrite(str(data / "masks" / mask.name), label * (mask.stem not in val))

    def run(script, *args):
        done = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done
    run("train.py", "--dataset", "BLANK", "--data-dir", tmp_path / "data", "--crop", "64", "--base-width", "4",
        "--workers", "0", "--epochs", "1", "--val-split", "0.25", "--name", "blank")
    config = json.loads((tmp_path / "models/blank/config.json").read_text())
    assert config["threshold"] == rundir.DEFAULT_THRESHOLD and config["schema"] == rundir.CONFIG_SCHEMA
    assert max(max(curve) for curve in config["val_f1_curves"].values()) == 0
    run("evaluate.py", "--name", "blank", "--test", "BLANK", "--data-dir", tmp_path / "data")
    run("predict.py", "--name", "blank", str(data / "images"), "--out", "out")
    assert (tmp_path / "out" / "summary.csv").is_file()
