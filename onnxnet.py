"""A network exported by export.py, run by onnxruntime behind the interface inference.py expects of a
PyTorch model (Bx3xHxW in, Bx1xHxW logits out, an input_multiple), so predict.py's preprocessing,
tiling, --tta and --scale stay one code path for both backends. model.onnx.json beside the network
carries the run's config (preprocessing, scale policy, thresholds, terms): the two files alone
predict, with no checkpoint and no PyTorch weights."""
import json
from pathlib import Path

import torch

from rundir import MODELS_DIR, RunError, file_sha256, upgrade_config


def onnx_path(run: str) -> Path:
    """Where export.py writes a run's or bundle's network (under models/: never committed)."""
    return MODELS_DIR / run / "model.onnx"


def checkpoint_digest(config: dict) -> str:
    return file_sha256(Path(config["checkpoint"]))


class OnnxNetwork(torch.nn.Module):
    def __init__(self, path: Path, device: torch.device):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunError("--backend onnxruntime needs the optional package onnxruntime "
                           "(pip install onnxruntime), or use --backend torch") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.input_multiple = json.loads(Path(f"{path}.json").read_text())["input_multiple"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(logits)


def load_onnx_run(name: str, device: torch.device) -> tuple[OnnxNetwork, dict]:
    """export.py's network of run `name` and the config its record carries. Where the run's checkpoint
    is still there, a network exported from another checkpoint (the run trained on) is refused."""
    if "+" in name:
        raise RunError(f"--backend onnxruntime runs one network; {name} is an ensemble (use --backend torch)")
    path = onnx_path(name)
    record_path = Path(f"{path}.json")
    if not path.is_file() or not record_path.is_file():
        raise RunError(f"no {path} with its {record_path.name}: export it first with python export.py --name {name}")
    record = json.loads(record_path.read_text())
    if "config" not in record:
        raise RunError(f"{record_path} is from an older export.py that kept no config; "
                       f"export it again: python export.py --name {name}")
    config, source = upgrade_config(record["config"], record_path)
    checkpoint = Path(record["checkpoint"])
    if checkpoint.is_file() and file_sha256(checkpoint) != record["checkpoint_sha256"]:
        raise RunError(f"{path} was exported from another checkpoint than today's {checkpoint}; "
                       f"export it again: python export.py --name {name}")
    config.update(threshold_source=f"{record_path.name} ({source})", checkpoint=str(path))
    return OnnxNetwork(path, device), config
