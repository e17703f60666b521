"""The machine a script runs on: device, autocast precision, memory format and DDP rank, decided
once at start-up by make_engine and printed by every script (Engine.describe)."""
import argparse
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from rundir import RunError


@dataclass
class Engine:
    """Device, autocast dtype and memory format, decided once at start-up."""
    device: torch.device
    dtype: torch.dtype | None = None
    channels_last: bool = True
    rank: int = 0
    world: int = 1

    def describe(self) -> str:
        """'cpu fp32 NCHW', 'cuda:0 bf16 channels_last': what every script prints at start."""
        dtype = str(self.dtype or "fp32").replace("torch.bfloat16", "bf16").replace("torch.float16", "fp16")
        return f"{self.device} {dtype} {'channels_last' if self.channels_last else 'NCHW'}"

    def record(self) -> dict:
        """The engine as metrics.json and config.json store it."""
        device, precision, memory_format = self.describe().split()
        return {"device": device, "precision": precision, "memory_format": memory_format}

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    @property
    def main(self) -> bool:
        return self.rank == 0


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """--device, --precision and --channels-last, the same in train.py, evaluate.py and predict.py."""
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the GPU when PyTorch sees one, else the CPU")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CPUs with native bf16 and recent GPUs, fp16 on older GPUs, else fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory format; default: channels_last under bf16/fp16 autocast, NCHW in fp32")


def auto_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it fast, fp16 on older GPUs, fp32 otherwise."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them bf16 is emulated and no faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "avx512_bf16" in flags or "amx_bf16" in flags or "AMX" in torch.backends.cpu.get_cpu_capability()


def channels_last_rule(dtype: torch.dtype | None) -> bool:
    """channels_last pays only under bf16/fp16 autocast (oneDNN's and cuDNN's fast low-precision
    kernels want it); in fp32 on a CPU without native bf16 it measured slower than NCHW
    (0.85x training, 0.95x inference on an AVX2 machine)."""
    return dtype in (torch.bfloat16, torch.float16)


def make_engine(device: str = "auto", precision: str = "auto", channels_last: bool | None = None,
                fixed_shapes: bool = False) -> Engine:
    """channels_last None: channels_last_rule for the chosen precision; True/False force it.
    fixed_shapes: the inputs have one size (training crops), so cuDNN may benchmark kernels once;
    evaluation and prediction see a new size per image, where it would re-tune each time."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = fixed_shapes
    if precision == "fp16" and dev.type != "cuda":
        raise RunError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    dtype = {"auto": auto_dtype(dev), "fp32": None, "bf16": torch.bfloat16,
             "fp16": torch.float16}[precision]
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if channels_last is None:
        channels_last = channels_last_rule(dtype)
    return Engine(dev, dtype, channels_last, rank, world)
