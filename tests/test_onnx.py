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
        yield work, torch_model, onnxnet.load_onnx("tiny", config, torch.device("cpu")), path


@pytest.mark.parametrize("size", [(64, 96), (136, 200), (300, 1100)])   # one pass, one pass, tiles
def test_onnx_maps_match_pytorch_in_fp32(exported, size):
    _, torch_model, onnx_model, _ = exported
    x = torch.from_numpy(photo(*size, seed=size[0]).transpose(2, 0, 1).copy())[None]
    ours = inference.predict_probability(torch_model, x, CPU, tile=512, overlap=128)
    theirs = inference.predict_probability(onnx_model, x, CPU, tile=512, overlap=128)
    assert ours.shape == theirs.shape == (1, 1, *size)
    assert (ours - theirs).abs().max() <= 1e-3
    assert ours.std() > 0.01          # a map with something in it, not two constant maps


def test_the_export_records_its_opset_and_refuses_a_changed_checkpoint(exported, monkeypatch):
    work, _, _, path = exported
    monkeypatch.chdir(work)
    info = json.loads(path.with_name("model.onnx.json").read_text())
    assert info["opset"] == export.OPSET and info["input_multiple"] == 16 and info["precision"] == "fp32"
    _, config = inference.load_runs("tiny", CPU)
    changed = {**config, "checkpoint": str(work / "other.pt")}
    (work / "other.pt").write_bytes(b"another checkpoint")
    with pytest.raises(rundir.RunError, match="export it again"):
        onnxnet.load_onnx("tiny", changed, torch.device("cpu"))
    with pytest.raises(rundir.RunError, match="ensemble"):
        onnxnet.load_onnx("tiny+tiny", config, torch.device("cpu"))
