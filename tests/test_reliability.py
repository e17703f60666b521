"""Bad input, interrupted runs and untrusted checkpoints: clear errors, nothing lost, nothing run."""
import csv
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import train
from dataset import read_image, scan_dataset
from utils import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--crop", "64", "--batch-size", "4", "--base-width", "4", "--workers", "0", "--val-split", "0.25"]


# One thread: parallel reductions may sum in another order on another machine.
DETERMINISTIC_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=DETERMINISTIC_ENV)


def good_pair(root: Path, stem: str, size=(48, 64)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(len(stem))
    cv2.imwrite(str(root / "images" / f"{stem}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    mask = np.zeros(size, np.uint8)
    mask[size[0] // 2, 4:-4] = 255
    cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR chunk that claim an absurd size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def break_image(root: Path, stem: str) -> None:
    path = root / "images" / f"{stem}.png"
    cv2.imwrite(str(path.with_suffix(".jpg")), cv2.imread(str(path)))
    path.unlink()
    data = path.with_suffix(".jpg").read_bytes()
    path.with_suffix(".jpg").write_bytes(data[: len(data) // 2])


BAD_INPUTS = {  # name -> (how to spoil a good dataset, text the error must contain)
    "image without mask": (lambda r: (r / "masks" / "b.png").unlink(), "image without mask"),
    "mask without image": (lambda r: (r / "images" / "b.png").unlink(), "mask without image"),
    "duplicate stem": (lambda r: shutil.copy(r / "images" / "b.png", r / "images" / "b.jpg"), "duplicate stem"),
    "unreadable file": (lambda r: (r / "images" / "b.png").write_bytes(b"not a png at all"), "b.png"),
    "truncated jpeg": (lambda r: break_image(r, "b"), "truncated"),
    "size mismatch": (lambda r: cv2.imwrite(str(r / "masks" / "b.png"), np.zeros((10, 10), np.uint8)),
                      "size mismatch"),
    "no crack pixels": (lambda r: [cv2.imwrite(str(p), np.zeros((48, 64), np.uint8))
                                   for p in (r / "masks").iterdir()], "no mask"),
    "colour mask": (lambda r: cv2.imwrite(str(r / "masks" / "b.png"), np.dstack([np.zeros((48, 64), np.uint8)] * 2
                                                                             + [np.full((48, 64), 255, np.uint8)])),
                    "a colour mask with 1 colour "),
    "16-bit mask": (lambda r: cv2.imwrite(str(r / "masks" / "b.png"), np.full((48, 64), 65535, np.uint16)), "uint16"),
    "decompression bomb": (lambda r: (r / "images" / "b.png").write_bytes(png_claiming(60000, 60000)),
                           "decompression bomb"),
    "empty folder": (lambda r: [p.unlink() for p in (r / "images").iterdir()], "holds no image files"),
}


def train_in_process(args: list, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["train.py", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_dataset_gives_a_clear_error_and_no_run_directory(tmp_path, monkeypatch, capsys, case):
    data = tmp_path / "data" / "D"
    for stem in "abcd":
        good_pair(data, stem)
    spoil, expected = BAD_INPUTS[case]
    spoil(data)
    code, err = train_in_process(["--dataset", "D", "--data-dir", tmp_path / "data", *TINY], tmp_path,
                                 monkeypatch, capsys)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


def test_unknown_dataset_lists_the_ones_that_exist(tmp_path, monkeypatch, capsys):
    good_pair(tmp_path / "data" / "REAL", "a")
    code, err = train_in_process(["--dataset", "TYPO", "--data-dir", tmp_path / "data"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "unknown dataset 'TYPO'" in err and "REAL" in err


def test_every_problem_is_reported_at_once_and_stray_files_are_only_noted(tmp_path):
    data = tmp_path / "D"
    for stem in "abc":
        good_pair(data, stem)
    (data / "masks" / "a.png").unlink()
    (data / "images" / "c.png").write_bytes(b"garbage")
    (data / "images" / "Thumbs.db").write_bytes(b"x")
    with pytest.raises(Exception) as err:
        scan_dataset(tmp_path, "D")
    assert "2 problem(s)" in str(err.value) and "a.png" in str(err.value) and "c.png" in str(err.value)
    (data / "images" / "c.png").unlink()
    (data / "masks" / "c.png").unlink()
    good_pair(data, "a")
    assert any("Thumbs.db" in note for note in scan_dataset(tmp_path, "D")[2])


def test_exif_orientation_is_ignored_so_photo_and_mask_stay_aligned(tmp_path):
    """A tag saying 'rotate 90' must not turn a 64x48 photo into 48x64 beside its 64x48 mask."""
    good_pair(tmp_path / "D", "a")
    pixels = cv2.cvtColor(cv2.imread(str(tmp_path / "D" / "images" / "a.png")), cv2.COLOR_BGR2RGB)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "D" / "images" / "a.jpg", exif=exif, quality=95)
    (tmp_path / "D" / "images" / "a.png").unlink()
    assert read_image(tmp_path / "D" / "images" / "a.jpg").shape == (48, 64, 3)
    assert len(scan_dataset(tmp_path, "D")[0]) == 1


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_root) -> Path:
    work = tmp_path_factory.mktemp("work")
    result = cli("train.py", "--dataset", "SYN", "--data-dir", synthetic_root, *TINY, "--epochs", "1",
                 "--name", "good", cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    return work


class Payload:
    """Unpickling this runs a shell command: the file it creates proves the code ran."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def spoil_checkpoint(path: Path, kind: str, marker: Path) -> None:
    if kind == "malicious":
        torch.save({"model": Payload(marker), "config": {"arch": "UNet"}}, path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "wrong architecture":
        from models import build_model
        other = build_model("AttentionUNet", base_width=4)
        torch.save({"model": other.state_dict(), "config": {"arch": "AttentionUNet"}}, path)


EXPECTED = {"malicious": "refused", "truncated": "truncated", "foreign": "not a crackseg checkpoint",
            "wrong architecture": "does not fit"}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("entry", ["resume", "init-from", "evaluate", "predict"])
def test_untrusted_checkpoints_are_refused_without_running_code(tmp_path, trained_run, synthetic_root, entry, kind):
    work = tmp_path / "work"
    shutil.copytree(trained_run, work)
    run_dir = work / "models" / "good"
    marker = tmp_path / "pwned"
    spoil_checkpoint(run_dir / ("last.pt" if entry == "resume" else "best.pt"), kind, marker)
    cp = (run_dir / "best.pt").read_bytes() if entry != "resume" else None
    commands = {
        "resume": ("train.py", "--resume", "good", "--epochs", "2"),
        "init-from": ("train.py", "--dataset", "SYN", "--data-dir", synthetic_root, *TINY, "--init-from", "good",
                      "--name", "child"),
        "evaluate": ("evaluate.py", "--name", "good", "--test", "SYN"),
        "predict": ("predict.py", "--name", "good", synthetic_root / "SYN" / "images"),
    }
    result = cli(*commands[entry], cwd=work)
    assert result.returncode == 2, result.stderr[-2000:]
    assert EXPECTED[kind] in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not marker.exists()
    assert not (work / "models" / "child").exists()
    if cp is not None:
        assert (run_dir / "best.pt").read_bytes() == cp


# ---------------------------------------------------------------- interruption

def log_losses(run_dir: Path) -> list[tuple[float, float]]:
    with open(run_dir / "log.csv") as f:
        return [(float(r["train_loss"]), float(r["val_loss"])) for r in csv.DictReader(f)]


def resumable_args(synthetic_root: Path) -> list:
    # 8 short epochs: the signal must land before the child can finish, even on a busy machine
    return ["--dataset", "SYN", "--data-dir", synthetic_root, *TINY, "--epochs", "8", "--precision", "fp32",
            "--lr", "3e-3", "--deterministic"]


@pytest.fixture(scope="module")
def straight_losses(tmp_path_factory, synthetic_root) -> list[tuple[float, float]]:
    """The losses of the run both interruptions are compared with, trained once."""
    work = tmp_path_factory.mktemp("straight")
    assert cli("train.py", *resumable_args(synthetic_root), "--name", "straight", cwd=work).returncode == 0
    return log_losses(work / "models" / "straight")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, synthetic_root, straight_losses, sig,
                                                                  code):
    args = resumable_args(synthetic_root)

    child = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args), "--name", "cut"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=DETERMINISTIC_ENV)
    last = tmp_path / "models" / "cut" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert child.returncode == code, err[-2000:]
    assert "Traceback" not in err
    done = torch.load(last, weights_only=True)["epoch"]
    assert done < 8 and len(log_losses(tmp_path / "models" / "cut")) == done

    resumed = cli("train.py", "--resume", "cut", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    np.testing.assert_allclose(log_losses(tmp_path / "models" / "cut"), straight_losses, atol=1e-4)


def test_a_non_finite_loss_stops_at_once_naming_the_batch(tmp_path, synthetic_root):
    result = cli("train.py", "--dataset", "SYN", "--data-dir", synthetic_root, *TINY, "--epochs", "2",
                 "--optimizer", "SGD", "--lr", "1e30", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "non-finite loss at epoch 1" in result.stderr and "images: syn_" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def stop_handlers(monkeypatch):
    """run_cli's signal handlers in this process, restored afterwards."""
    import utils
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(utils, "_stop", {"signal": 0, "held": 0})
    for s in previous:
        signal.signal(s, utils._on_stop_signal)
    yield utils
    for s, handler in previous.items():
        signal.signal(s, handler)


def deliver(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.05)   # Python runs the handler at the next bytecode after delivery


def test_a_held_signal_stops_the_program_once_the_block_is_done(stop_handlers):
    done = []
    with pytest.raises(stop_handlers.Terminated):
        with stop_handlers.signals_held():
            deliver(signal.SIGTERM)
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]


def test_a_ctrl_c_swallowed_by_library_code_is_raised_at_the_next_check(stop_handlers, monkeypatch):
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: swallowed.append(info.exc_type))

    class FinalisedLater:
        def __del__(self):   # the interpreter ignores exceptions raised here, as it does in real __del__s
            deliver(signal.SIGINT)
    obj = FinalisedLater()
    del obj
    assert swallowed == [KeyboardInterrupt]
    with pytest.raises(KeyboardInterrupt):
        stop_handlers.raise_requested_stop()
