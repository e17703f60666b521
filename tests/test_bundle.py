"""Bundled models (pretrained/NAME/): export in half precision, checked loading, and predict.py's default."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import inference
import predict
from predictor import Predictor, read_photo
import rundir
from engine import make_engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, synthetic_root) -> Path:
    """A tiny run trained here, exported as tmp/pretrained/tiny/ (the shipped layout)."""
    work = tmp_path_factory.mktemp("bundle")
    trained = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--dataset", "SYN", "--data-dir", str(synthetic_root), "--crop",
         "64", "--base-width", "4", "--workers", "0", "--epochs", "2", "--val-split", "0.25", "--name", "run"],
        cwd=work, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        config = rundir.export_bundle("run", work / "pretrained" / "tiny")
    assert config["weights"] == "fp16" and "data_dir" not in config and "name" not in config
    return work


@pytest.fixture
def shipped(bundle, monkeypatch) -> Path:
    monkeypatch.setattr(rundir, "PRETRAINED_DIR", bundle / "pretrained")
    return bundle / "pretrained" / "tiny"


def test_the_bundle_holds_half_precision_weights_only(shipped):
    state = torch.load(shipped / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert not {"optimizer", "raw_model", "config"} & set(state)
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "model.pt", "split.json"]


def test_half_precision_predicts_within_0_01_of_the_fp32_run(bundle, shipped, monkeypatch, synthetic_root):
    monkeypatch.chdir(bundle)
    engine = make_engine("cpu", "fp32", False)
    run_model, _ = inference.load_run_model("run", engine)
    half_model, config = inference.load_run_model("tiny", engine)
    photo = read_photo(next((synthetic_root / "SYN" / "images").iterdir()))
    x = Predictor(half_model, engine, config).tensor(photo)
    difference = (inference.predict_probability(run_model, x, engine)
                  - inference.predict_probability(half_model, x, engine))
    assert 0 < difference.abs().max() < 0.01


def test_predict_finds_the_bundle_by_name_from_any_directory_and_by_default(shipped, tmp_path, monkeypatch,
                                                                             synthetic_root, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    photo = next((synthetic_root / "SYN" / "images").iterdir())
    assert predict.main(["--name", "tiny", str(photo), "--device", "cpu"]) == 0
    out, = (elsewhere / "predictions").glob("tiny-*")                   # in the working directory, never pretrained/
    assert (out / f"{photo.stem}_prob.png").is_file()
    monkeypatch.setattr(predict, "DEFAULT_BUNDLE", "tiny")
    assert predict.main([str(photo), "--device", "cpu", "--out", "default"]) == 0
    assert "using the bundled model tiny" in capsys.readouterr().out
    with open(elsewhere / "default" / "summary.csv") as f:
        assert len(f.read().splitlines()) == 2
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "model.pt", "split.json"]


def test_a_changed_byte_fails_the_sha256_check(shipped, tmp_path, monkeypatch):
    copy = tmp_path / "pretrained" / "tiny"
    copy.mkdir(parents=True)
    for name in ("config.json", "split.json"):
        (copy / name).write_bytes((shipped / name).read_bytes())
    data = bytearray((shipped / "model.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.pt").write_bytes(bytes(data))
    monkeypatch.setattr(rundir, "PRETRAINED_DIR", tmp_path / "pretrained")
    with pytest.raises(rundir.RunError, match="does not match the sha256"):
        inference.load_run_model("tiny", make_engine("cpu", "fp32", False))


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_a_file_that_would_run_code_is_refused_even_with_a_matching_sha256(shipped, tmp_path, monkeypatch):
    copy = tmp_path / "pretrained" / "tiny"
    copy.mkdir(parents=True)
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, copy / "model.pt")
    config = json.loads((shipped / "config.json").read_text())
    config["sha256"] = rundir.file_sha256(copy / "model.pt")   # the tamperer updated the checksum too
    (copy / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(rundir, "PRETRAINED_DIR", tmp_path / "pretrained")
    with pytest.raises(rundir.RunError, match="refused unloaded"):
        inference.load_run_model("tiny", make_engine("cpu", "fp32", False))


def test_train_refuses_a_bundled_name_for_a_new_run(shipped):
    with pytest.raises(rundir.RunError, match="bundled model"):
        rundir.fresh_run_name("tiny", "SYN_UNet", overwrite=True)


def test_evaluate_scores_a_bundle_with_its_threshold(bundle, shipped, monkeypatch, synthetic_root):
    import evaluate
    monkeypatch.chdir(bundle)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--name", "tiny", "--test", "SYN", "--data-dir",
                                      str(synthetic_root), "--tolerance", "2", "--device", "cpu"])
    assert evaluate.main() == 0
    summary = json.loads((bundle / "models" / "tiny" / "eval" / "SYN" / "metrics.json").read_text())
    split = json.loads((shipped / "split.json").read_text())
    assert summary["images"] == len(split["SYN"]["val"])              # its own training set: validation only
    assert summary["results"][0]["at_run_threshold"]["threshold"] == json.loads(
        (shipped / "config.json").read_text())["threshold"]


def test_evaluate_scores_a_bundle_on_the_users_own_dataset_under_inputs_without_data_dir(bundle, shipped,
                                                                                        monkeypatch):
    import evaluate
    from synthetic import make_synthetic_dataset
    make_synthetic_dataset(bundle / "inputs", "MINE", count=5, size=(64, 64), seed=7)
    monkeypatch.chdir(bundle)
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--name", "tiny", "--test", "MINE", "--tolerance", "2",
                                      "--device", "cpu"])
    assert evaluate.main() == 0
    summary = json.loads((bundle / "models" / "tiny" / "eval" / "MINE" / "metrics.json").read_text())
    assert summary["images"] == 5                                      # not a training set: every image


def test_fine_tuning_starts_from_the_bundle_by_name(bundle, shipped, monkeypatch, synthetic_root):
    import train
    monkeypatch.chdir(bundle)
    monkeypatch.setattr(sys, "argv", ["train.py", "--dataset", "SYN", "--data-dir", str(synthetic_root), "--crop", "64",
                                      "--workers", "0", "--epochs", "1", "--val-split", "0.25", "--init-from", "tiny",
                                      "--freeze-encoder", "--name", "mine"])
    assert train.main() == 0
    config = json.loads((bundle / "models" / "mine" / "config.json").read_text())
    assert config["base_width"] == 4                                  # the bundle's network, not the default 32
    shipped_state = torch.load(shipped / "model.pt", weights_only=True)
    tuned = torch.load(bundle / "models" / "mine" / "last.pt", weights_only=True)["model"]
    assert torch.equal(tuned["enc.0.0.weight"].half(), shipped_state["enc.0.0.weight"])   # frozen: the bundle's
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "model.pt", "split.json"]


def drawn_crack(size: int = 256) -> tuple:
    """A grey textured surface with one dark 3-pixel wavy crack, and the crack's mask."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    surface = 150 + cv2.GaussianBlur(rng.normal(0, 25, (size, size)), (0, 0), 1.5)
    mask = np.zeros((size, size), np.uint8)
    xs = np.arange(20, size - 20)
    path = np.stack([xs, size / 2 + 25 * np.sin(xs / 30)], 1).astype(np.int32)
    cv2.polylines(mask, [path], False, 255, 3)
    surface[mask > 0] = 50
    return np.repeat(surface.clip(0, 255)[..., None], 3, 2).astype(np.uint8), mask > 0


def test_the_shipped_general_model_loads_checked_from_another_directory_and_finds_a_crack(tmp_path, monkeypatch):
    """The committed pretrained/crackseg-general/: its sha256 holds, its size is within 16 MiB, no local
    path leaked into its config, and at its threshold it marks a drawn crack and little else."""
    folder = ROOT / "pretrained" / "crackseg-general"
    config = json.loads((folder / "config.json").read_text())
    assert rundir.file_sha256(folder / "model.pt") == config["sha256"]
    assert (folder / "model.pt").stat().st_size <= 16 * 2**20
    assert '": "/' not in (folder / "config.json").read_text() and "data_dir" not in config   # no local path
    monkeypatch.chdir(tmp_path)
    engine = make_engine("cpu", "fp32", False)
    model, loaded = inference.load_run_model("crackseg-general", engine)
    photo, crack = drawn_crack()
    x = Predictor(model, engine, loaded).tensor(photo, "drawn crack")
    found = inference.predict_probability(model, x, engine)[0, 0].numpy() > loaded["threshold"]
    assert found[crack].mean() > 0.8 and found[~crack].mean() < 0.03
    assert not (tmp_path / "pretrained").exists()


def test_failure_picture_keeps_the_photos_colours(tmp_path):
    """read_image returns RGB: a red photo stays red in failure.jpg's rows."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import modelcard
    from dataset import Sample
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 2] = 255                                          # BGR on disk: pure red
    cv2.imwrite(str(tmp_path / "i.png"), red)
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((40, 60), np.uint8))
    row = modelcard.failure_row(Sample("i", tmp_path / "i.png", tmp_path / "m.png"),
                                np.zeros((40, 60), bool), height=40)
    assert tuple(row[20, 10]) == (255, 0, 0)                   # RGB red, not blue
