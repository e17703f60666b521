"""torchrun with two CPU processes (gloo): identical replicas (weights and BatchNorm statistics), one clock
deciding when a --max-minutes run stops, and only rank 0 writes."""
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("ema", [[], ["--ema", "0.9"]], ids=["raw", "ema"])
def test_two_process_ddp_training_on_cpu(tmp_path, synthetic_root, ema):
    """The UNet has BatchNorm: before its buffers were broadcast, each rank validated and ended with its own
    running statistics (the checksum covers them now); ranks that stopped on their own clocks could hang.
    With --ema the checksum is of the average, which each rank once built from its own random init."""
    # An explicit free loopback port: the rendezvous never collides with another run on the machine.
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={free_port()}",
         str(ROOT / "train.py"), "--dataset", "SYN", "--data-dir", str(synthetic_root), "--crop", "64",
         "--batch-size", "2", "--base-width", "4", "--workers", "0", "--epochs", "1000", "--max-minutes", "0.15",
         "--val-split", "0.25", "--scheduler", "CosineAnnealingLR", "--device", "cpu", *ema],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the two ranks share one pipe, so their lines may interleave: match the pattern, not lines
    checksums = dict(re.findall(r"rank (\d+): parameter and buffer checksum ([-+]?\d\.\d+e[-+]\d+)", result.stdout))
    assert set(checksums) == {"0", "1"} and len(set(checksums.values())) == 1, result.stdout
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["SYN_UNet"]
    run_dir = tmp_path / "models" / "SYN_UNet"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv", "split.json"]
    assert "stopped: --max-minutes 0.15 spent" in result.stdout
    epochs = len((run_dir / "log.csv").read_text().splitlines()) - 1
    assert 1 <= epochs < 1000 and result.stdout.count("stopped:") == 1     # one writer, one decision
    assert len(list((tmp_path / "runs" / "SYN_UNet").iterdir())) == 1        # one event file
