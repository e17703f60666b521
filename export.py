"""Export a run (the bundled model by default) to ONNX, for runtimes without PyTorch.

    python export.py                          # pretrained/crackseg-general -> models/crackseg-general/model.onnx
    python export.py --name dc_main           # -> models/dc_main/model.onnx
    python predict.py photos/ --backend onnxruntime      # the same pre/post-processing, tiling and --scale

The network exported is the one every prediction uses (inference.for_inference: BatchNorm folded
into the convolutions), in fp32, with dynamic batch, height and width (sides a multiple of the
network's input multiple: predict.py pads to it, as for PyTorch). Beside it, model.onnx.json records
the opset, the input multiple, the versions and the run's config (preprocessing, scale policy,
thresholds, terms), so the two files predict without the checkpoint. model.onnx stays under models/ (gitignored, never
committed). An ensemble RUN1+RUN2 is refused: export each member (onnxruntime runs one network).
--tta works unchanged (the flips happen outside the network); bf16 autocast does not apply (ONNX
runs the fp32 graph).
Needs the optional packages onnx and onnxscript (pip install onnx onnxscript onnxruntime).
"""
import argparse
import json
import logging
import warnings
from pathlib import Path

import torch

from engine import make_engine
from inference import load_runs, model_stride
from onnxnet import checkpoint_digest, onnx_path
from rundir import DEFAULT_BUNDLE, RunError, runs_arg, stored_config
from utils import run_cli

OPSET = 18
SAMPLE_SIDE = 256


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", type=runs_arg, default=DEFAULT_BUNDLE,
                   help=f"run under models/ or bundled model to export (default: {DEFAULT_BUNDLE})")
    p.add_argument("--checkpoint", default="best.pt", help="which checkpoint of a run (best.pt or last.pt)")
    return p.parse_args(argv)


def export(name: str, checkpoint: str = "best.pt") -> Path:
    """models/NAME/model.onnx (and model.onnx.json) from the run's folded fp32 network."""
    try:
        import onnx  # noqa: F401  (the exporter needs it and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise RunError(f"export.py needs the optional package {err.name}: pip install onnx onnxscript") from None
    if "+" in name:
        raise RunError(f"{name} is an ensemble; export each member (python export.py --name RUN) and "
                       "predict with one")
    model, config = load_runs(name, make_engine("cpu", "fp32", False), checkpoint)
    stride = model_stride(model)
    path = onnx_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = torch.zeros(1, 3, SAMPLE_SIDE, SAMPLE_SIDE)
    dims = {0: torch.export.Dim("batch", max=64), 2: torch.export.Dim("h16", max=4096) * stride,
            3: torch.export.Dim("w16", max=4096) * stride}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)   # the exporter's notes, not the user's concern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (sample,), dynamic_shapes=(dims,),
                                    input_names=["image"], output_names=["logits"], opset_version=OPSET,
                                    dynamo=True, verbose=False)
    program.save(str(path))
    info = {"opset": OPSET, "input_multiple": stride, "torch": torch.__version__, "arch": config["arch"],
            "checkpoint": config["checkpoint"], "checkpoint_sha256": checkpoint_digest(config),
            "precision": "fp32", "batchnorm": "folded", "config": stored_config(config)}
    Path(f"{path}.json").write_text(json.dumps(info, indent=1) + "\n")
    return path


def main(argv=None) -> int:
    args = get_args(argv)
    path = export(args.name, args.checkpoint)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, opset {OPSET}); "
          f"predict with: python predict.py --name {args.name} PHOTOS --backend onnxruntime")
    return 0


if __name__ == "__main__":
    run_cli(main)
