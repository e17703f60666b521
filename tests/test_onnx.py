"""export.py and --backend onnxruntime: the exported network gives PyTorch's fp32 maps through the
same preprocessing, tiling and scale path."""
import json

import pytest
import torch

import export
import inference
import onnxnet
import rundir
from engine import make_engine
from models import build_model
from standins import calibrate_batchnorm, photo

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx")
CPU = make_engine("cpu", "fp32", False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """models/tiny/ (a random UNet with calibrated BatchNorm) and its model.onnx, in a working directory of its own."""
    work = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        torch.manual_seed(0)
        model = calibrate_batchnorm(build_model("UNet", base_width=4),
                                    torch.from_numpy(photo(64, 64).transpose(2, 0, 1).copy())[None])
        config = {"arch": "UNet", "base_width": 4, "deep_supervision": False, "minmax": True, "threshold": 0.5}
        (work / "models/tiny").mkdir(parents=True)
        (work / "models/tiny/config.json").write_text(json.dumps(config))
        rundir.save_checkpoint(work / "models/tiny/best.pt", {"model": model.state_dict(), "config": config})
        path = export.export("tiny")
        torch_model, config = inference.load_runs("tiny", CPU)
        yield work, torch_model, onnxnet.load_onnx_run("tiny", torch.device("cpu"))[0], path


@pytest.mark.parametrize("size", [(64, 96), (136, 200), (300, 1100)])   # one pass, one pass, tiles
def test_onnx_maps_match_pytorch_in_fp32(exported, size):
    _, torch_model, onnx_model, _ = exported
    x = torch.from_numpy(photo(*size, seed=size[0]).transpose(2, 0, 1).copy())[None]
    ours = inference.predict_probability(torch_model, x, CPU, tile=512, overlap=128)
    theirs = inference.predict_probability(onnx_model, x, CPU, tile=512, overlap=128)
    assert ours.shape == theirs.shape == (1, 1, *size)
    assert (ours - theirs).abs().max() <= 1e-3
    assert ours.std() > 0.01          # a map with something in it, not two constant maps


def test_the_export_records_its_opset_and_config_and_refuses_a_changed_checkpoint(exported, monkeypatch):
    work, _, _, path = exported
    monkeypatch.chdir(work)
    info = json.loads(path.with_name("model.onnx.json").read_text())
    assert info["opset"] == export.OPSET and info["input_multiple"] == 16 and info["precision"] == "fp32"
    assert info["config"]["threshold"] == 0.5 and "checkpoint" not in info["config"]   # the run's config, stored
    _, config = onnxnet.load_onnx_run("tiny", torch.device("cpu"))
    assert config["scale"] == 1.0 and config["minmax"] is True and config["checkpoint"] == str(path)
    checkpoint = work / "models/tiny/best.pt"
    kept = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(b"the run trained on: another checkpoint")
        with pytest.raises(rundir.RunError, match="export it again"):
            onnxnet.load_onnx_run("tiny", torch.device("cpu"))
    finally:
        checkpoint.write_bytes(kept)
    with pytest.raises(rundir.RunError, match="ensemble"):
        onnxnet.load_onnx_run("tiny+tiny", torch.device("cpu"))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_seams_map_is_the_one_predict_saves(exported, monkeypatch, backend):
    """predictor.Predictor is what predict.py predicts through: its map, quantised as predict.py saves
    it, is the saved _prob.png, for both backends."""
    import cv2

    import predict
    from predictor import Predictor
    work, _, _, _ = exported
    monkeypatch.chdir(work)
    image = (photo(120, 160, seed=3) * 255).astype("uint8")
    cv2.imwrite(str(work / "wall.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = work / f"out_{backend}"
    assert predict.main(["--name", "tiny", "wall.png", "--out", str(out), "--backend", backend,
                         "--device", "cpu", "--precision", "fp32"]) == 0
    found = Predictor.load("tiny", backend=backend, engine=CPU).predict(work / "wall.png")
    saved = cv2.imread(str(out / "wall_prob.png"), cv2.IMREAD_UNCHANGED)
    assert found.prob.shape == saved.shape and found.prob.std() > 0.01
    assert (found.prob * 255).round().astype("uint8").tolist() == saved.tolist()


def test_onnxruntime_predicts_with_the_runs_checkpoints_moved_away(exported, monkeypatch, tmp_path):
    import predict
    work, _, _, _ = exported
    monkeypatch.chdir(work)
    image = (photo(64, 96, seed=4) * 255).astype("uint8")
    import cv2
    cv2.imwrite(str(work / "road.png"), image)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("best.pt", "config.json"):
        (work / "models/tiny" / name).rename(moved / name)
    try:
        assert predict.main(["--name", "tiny", "road.png", "--out", str(tmp_path / "out"),
                             "--backend", "onnxruntime"]) == 0
        assert (tmp_path / "out" / "road_prob.png").is_file()
        with pytest.raises(rundir.RunError, match="no run"):
            predict.main(["--name", "tiny", "road.png", "--out", str(tmp_path / "out2")])   # torch needs them
    finally:
        for name in ("best.pt", "config.json"):
            (moved / name).rename(work / "models/tiny" / name)
