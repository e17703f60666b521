"""A network exported by export.py, run by onnxruntime behind the interface inference.py expects of a
PyTorch model (Bx3xHxW in, Bx1xHxW logits out, an input_multiple), so predict.py's preprocessing,
tiling, --tta and --scale stay one code path for both backends."""
import json
from pathlib import Path

import torch

from rundir import MODELS_DIR, RunError, file_sha256


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


def load_onnx(name: str, config: dict, device: torch.device) -> OnnxNetwork:
    """The run's exported network, refused when missing or made from another checkpoint than `config`'s."""
    if "+" in name:
        raise RunError(f"--backend onnxruntime runs one network; {name} is an ensemble (use --backend torch)")
    path = onnx_path(name)
    if not path.is_file():
        raise RunError(f"no {path}: export it first with python export.py --name {name}")
    made_from = json.loads(Path(f"{path}.json").read_text()).get("checkpoint_sha256")
    if made_from != checkpoint_digest(config):
        raise RunError(f"{path} was exported from another checkpoint than {config['checkpoint']}; "
                       f"export it again: python export.py --name {name}")
    return OnnxNetwork(path, device)
