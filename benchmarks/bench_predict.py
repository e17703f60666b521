"""Wall time of predict.py on one 4000x3000 photo, start-up included, as a user runs it.

    python benchmarks/bench_predict.py                        # the bundled model against the width-32 UNet
    python benchmarks/bench_predict.py --candidates UNet:32 UNet:16 NestedUNet:16   # speed of networks
    python benchmarks/bench_predict.py --runs gen_ten          # a trained run under auto against the bundle
    python benchmarks/bench_predict.py --backend torch onnxruntime --record   # the bundle, two backends
    python benchmarks/bench_predict.py --table-only                            # the backends table

Each arm is `python predict.py photo.jpg [--name RUN]` in a fresh process (imports, loading,
tiling, the probability map, mask, widths and summary.csv), run --repeat times in turn with the
other arms so that machine load hits them alike; the median is reported. The network's time does
not depend on its weights, so a candidate is a network of that shape with random weights, saved as
a run, its output bias set so that 2% of the photo comes out as crack (measuring the cracks then
costs what it does on a trained model's masks). The last line is `ratio: <width-32 UNet / bundled
model>` (or / the last candidate); with --runs, trained runs of models/ are timed under `--scale auto`
(the bundle's default policy) beside the bundled model, and the ratio is <last run / bundled model>.

--backend times the bundled model under each backend (onnxruntime on the network export.py writes)
on the 4000x3000 photo and on a folder of 50 photos of 2 MP, each repeat into a fresh --out; --record
appends the medians and the ratio torch / onnxruntime to benchmarks/results/bench_predict.jsonl.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import build_model, count_parameters  # noqa: E402
from synthetic import synthetic_pair  # noqa: E402
from dataset import Intensity, preprocess  # noqa: E402
from engine import make_engine  # noqa: E402
from inference import predict_probability  # noqa: E402
from rundir import DEFAULT_BUNDLE, bundle_dir  # noqa: E402
from scales import scale_arg  # noqa: E402

HEIGHT, WIDTH = 3000, 4000
REFERENCE = "UNet:32"
FOLDER_PHOTOS, FOLDER_SIZE = 50, (1152, 1728)   # 2 MP each
RECORD = ROOT / "benchmarks" / "results" / "bench_predict.jsonl"
RUNS = iter(range(10**9))   # each predict.py call writes into a fresh --out (an existing one is refused)


def write_photo(path: Path) -> None:
    """A 4000x3000 JPEG with crack-like lines on texture (the content does not change the work)."""
    image, _ = synthetic_pair(np.random.default_rng(0), HEIGHT, WIDTH)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def write_random_run(models: Path, candidate: str, photo: Path) -> str:
    """models/<arch>_w<width>/ with config.json and best.pt of a randomly initialised network whose
    output bias is set so that CRACK_FRACTION of the photo's pixels pass 0.5, as a trained model's
    masks do: measuring the cracks (skeleton, widths) costs what it costs on real predictions."""
    arch, width = candidate.split(":")
    name = f"{arch}_w{width}"
    model = build_model(arch, base_width=int(width)).eval()
    calibrate_head(model, photo)
    config = {"arch": arch, "base_width": int(width), "deep_supervision": False, "minmax": True,
              "normalize": None, "clahe": False, "threshold": 0.5, "dataset": ["SYNTHETIC"]}
    (models / name).mkdir(parents=True, exist_ok=True)
    (models / name / "config.json").write_text(json.dumps(config))
    torch.save({"model": model.state_dict(), "config": config}, models / name / "best.pt")
    return name


CRACK_FRACTION = 0.02


@torch.no_grad()
def calibrate_head(model: torch.nn.Module, photo: Path) -> None:
    """Make a random network's output look like a trained one's: BatchNorm statistics taken from
    the photo (so activations neither explode nor vanish through the layers), then the output bias
    shifted so that CRACK_FRACTION of the pixels pass 0.5 when the photo is predicted as predict.py
    does (whole-photo scaling, tiles, the engine's precision)."""
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(preprocess(image, Intensity(minmax=True), photo.name).transpose(2, 0, 1).copy())[None]
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None   # a plain average over the passes below
    model.train()
    side = min(512, *x.shape[-2:]) // 16 * 16
    for part in range(3):   # three crops down the diagonal
        top, left = (part * (n - side) // 2 for n in x.shape[-2:])
        model(x[..., top:top + side, left:left + side])
    model.eval()
    prob = predict_probability(model, x, make_engine("cpu"))
    logits = torch.logit(prob.flatten()[::7], eps=1e-7).numpy()
    if np.mean(np.abs(logits) > 15) > CRACK_FRACTION:
        sys.exit("bench_predict: the random network's probabilities saturate; its calibration failed")
    head = model.head if hasattr(model, "head") else model.heads[-1]
    head.bias -= float(np.quantile(logits, 1 - CRACK_FRACTION))


def write_folder(folder: Path) -> None:
    folder.mkdir()
    for i in range(FOLDER_PHOTOS):
        image, _ = synthetic_pair(np.random.default_rng(i), *FOLDER_SIZE)
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def time_predict(cwd: Path, photo: Path, name: str | None, extra: tuple[str, ...] = ()) -> float:
    cmd = [sys.executable, str(ROOT / "predict.py"), str(photo), "--out", str(cwd / f"out{next(RUNS)}"), *extra]
    cmd += ["--name", name] if name else []
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"predict.py failed for {name or 'the bundled model'}:\n{result.stderr[-2000:]}")
    return seconds


def time_ranks(ranks: list[int], repeat: int) -> dict:
    """{ranks: median seconds} of predict.py with the bundle on the folder of FOLDER_PHOTOS photos, as one
    process or `torchrun --nproc_per_node N`, each process given the machine's cores / N threads."""
    import socket
    cores = os.cpu_count() or 1
    times = {n: [] for n in ranks}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_folder(tmp / "photos")
        for _ in range(repeat):
            for n in ranks:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                launch = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                                                          f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
                                                          f"--master_port={port}"]
                cmd = [*launch, str(ROOT / "predict.py"), str(tmp / "photos"), "--out", str(tmp / f"out{next(RUNS)}")]
                env = {**os.environ, "OMP_NUM_THREADS": str(max(cores // n, 1))}
                started = time.perf_counter()
                subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True)
                times[n].append(time.perf_counter() - started)
    return {str(n): {"median_s": round(statistics.median(t), 2),
                     "photos_per_s": round(FOLDER_PHOTOS / statistics.median(t), 2)} for n, t in times.items()}


def parameters(candidate: str) -> int:
    arch, width = candidate.split(":")
    return count_parameters(build_model(arch, base_width=int(width)))


def time_backends(backends: list[str], repeat: int) -> dict:
    """{input: {backend: median seconds}} for the bundled model; onnxruntime's network exported first."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = {f"one {WIDTH}x{HEIGHT} photo": tmp / "photo.jpg", f"{FOLDER_PHOTOS} photos of 2 MP": tmp / "photos"}
        write_photo(inputs[f"one {WIDTH}x{HEIGHT} photo"])
        write_folder(inputs[f"{FOLDER_PHOTOS} photos of 2 MP"])
        if "onnxruntime" in backends:
            subprocess.run([sys.executable, str(ROOT / "export.py")], cwd=tmp, check=True, capture_output=True)
        times = {what: {b: [] for b in backends} for what in inputs}
        for what, path in inputs.items():
            time_predict(tmp, path, None, ("--backend", backends[0]))   # warm the file cache; not counted
            for _ in range(repeat):
                for backend in backends:
                    times[what][backend].append(time_predict(tmp, path, None, ("--backend", backend)))
    return {what: {b: round(statistics.median(s), 2) for b, s in arms.items()} for what, arms in times.items()}


def record(results: dict, repeat: int) -> None:
    """One line of `results` (medians_s: the backends; scales: the --scale arms) in RECORD."""
    from runner import code_version, machine
    line = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": code_version(), "machine": machine(),
            "torch": torch.__version__, "repeat": repeat, **results}
    with open(RECORD, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def render_scales(record: Path = RECORD) -> str:
    """--scales lines: per photo the network seconds of scale 1 and auto, their ratio, auto's factor."""
    rows = ["| machine | commit | photo | scale 1 (s) | auto (s) | auto / 1 | auto chose | predict.py peak RSS, auto |",
            "|---|---|---|---|---|---|---|---|"]
    for line in map(json.loads, record.read_text().splitlines()):
        found = line.get("scales")
        if not found or not {"1", "auto"} <= set(next(iter(found["network_s"].values()))):
            continue
        for photo, t in found["network_s"].items():
            rows.append(f"| {line['machine']} | {line['commit']} | {photo} | {t['1']:.3f} | {t['auto']:.3f} | "
                        f"{t['auto'] / t['1']:.2f} | {found['factor'][photo]['auto']:g} | "
                        f"{found['peak_rss_mib_auto']} MiB |")
    return "\n".join(rows)


def render_ranks(record: Path = RECORD) -> str:
    """--ranks lines: predict.py's throughput on the folder as 1 or N torchrun processes."""
    rows = ["| machine | commit | photos | processes | seconds | photos/s |", "|---|---|---|---|---|---|"]
    for line in map(json.loads, record.read_text().splitlines()):
        for n, t in line.get("ranks", {}).items():
            rows.append(f"| {line['machine']} | {line['commit']} | {line['photos']} | {n} | {t['median_s']:.2f} | "
                        f"{t['photos_per_s']:.2f} |")
    return "\n".join(rows)


def render_backends(record: Path = RECORD) -> str:
    rows = ["| machine | torch | input | torch (s) | onnxruntime (s) | ratio torch / onnxruntime |",
            "|---|---|---|---|---|---|"]
    for line in map(json.loads, record.read_text().splitlines()):
        for what, m in line.get("medians_s", {}).items():
            rows.append(f"| {line['machine']} | {line['torch']} | {what} | {m['torch']:.2f} | {m['onnxruntime']:.2f} | "
                        f"{m['torch'] / m['onnxruntime']:.2f} |")
    return "\n".join(rows)


def network_seconds(predictor, x: torch.Tensor, repeat: int) -> tuple[float, float]:
    """(median seconds of the network part of predict.py, the seam's predict_tensor, the factor chosen)."""
    times, factor = [], None
    for _ in range(repeat + 1):   # the first call warms up; not counted
        started = time.perf_counter()
        factor = predictor.predict_tensor(x).factor
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), factor


def peak_rss_mib(cmd: list[str], cwd: Path) -> float:
    """Peak resident memory of one predict.py process (RUSAGE_CHILDREN of a helper that runs only it)."""
    helper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", helper, *cmd], cwd=cwd, check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024   # Linux reports KiB


def real_photo(data_dir: Path, dataset: str = "DEEPCRACK_TEST", size: tuple[int, int] = (WIDTH, HEIGHT)) -> np.ndarray:
    """The first photo of `dataset` resized to `size` (w, h; bicubic or area): a real surface at a phone's
    12 MP, or at the 640x480 where auto may also enlarge."""
    from dataset import read_image, scan_dataset
    image = read_image(scan_dataset(data_dir, dataset)[0][0].image)
    shrink = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def scale_photos(data_dir: Path) -> dict[str, np.ndarray]:
    """The photos --scales times, RGB: 12 MP synthetic and real, and 640x480 ones (a wide-crack DeepCrack
    close-up and a thin-crack CFD road photo, where auto's rule decides whether to enlarge)."""
    small = (640, 480)
    synthetic, _ = synthetic_pair(np.random.default_rng(0), HEIGHT, WIDTH)
    return {"synthetic": cv2.cvtColor(synthetic, cv2.COLOR_BGR2RGB), "real": real_photo(data_dir),
            "real 640x480": real_photo(data_dir, size=small), "CFD 640x480": real_photo(data_dir, "CFD", small)}


def time_scales(scales: list[str], data_dir: Path, repeat: int) -> dict:
    """Per photo: the network seconds of each --scale and the auto / 1 ratio, and predict.py's peak RSS
    under --scale auto on the enlarged real photo (each photo through a JPEG, as a camera writes it)."""
    from predictor import Predictor
    bundle = Predictor.load(DEFAULT_BUNDLE)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        found = {}
        for name, photo in scale_photos(data_dir).items():
            path = tmp / f"{name.replace(' ', '_')}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            x = bundle.tensor(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), name)
            found[name] = {s: network_seconds(bundle.at_scale(scale_arg(s)), x, repeat) for s in scales}
        rss = peak_rss_mib([sys.executable, str(ROOT / "predict.py"), str(tmp / "real.jpg"), "--scale", "auto",
                            "--out", str(tmp / "out_rss")], tmp)
    return {"network_s": {n: {s: round(t, 3) for s, (t, _) in arms.items()} for n, arms in found.items()},
            "factor": {n: {s: f for s, (_, f) in arms.items()} for n, arms in found.items()},
            "peak_rss_mib_auto": round(rss)}


def arm_label(arm: str) -> str:
    return DEFAULT_BUNDLE if arm == "bundled" else f"models/{arm}, --scale auto"


def time_arms(candidates: list[str] | None, runs: list[str], repeat: int) -> dict[str, list[float]]:
    """{arm: seconds of each repeat} of predict.py on the 4000x3000 photo: the width-32 UNet and the
    candidates (random weights), the bundled model (unless candidates are timed), and trained runs
    under --scale auto; the arms take turns, so that machine load hits them alike."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "photo.jpg"
        write_photo(photo)
        arms = {c: (write_random_run(tmp / "models", c, photo), ())
                for c in dict.fromkeys([REFERENCE, *(candidates or [])])}
        if not candidates:
            arms["bundled"] = (None, ())   # predict.py without --name
        for run in runs:   # predict.py looks for --name under ./models
            (tmp / "models" / run).symlink_to(ROOT / "models" / run, target_is_directory=True)
            arms[run] = (run, ("--scale", "auto"))
        times = {arm: [] for arm in arms}
        time_predict(tmp, photo, arms[REFERENCE][0])   # warm the file cache; not counted
        for _ in range(repeat):
            for arm, (name, extra) in arms.items():
                times[arm].append(time_predict(tmp, photo, name, extra))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--candidates", nargs="+", metavar="ARCH:WIDTH",
                   help="time these networks (random weights) instead of the bundled model")
    p.add_argument("--backend", nargs="+", choices=["torch", "onnxruntime"],
                   help="time the bundled model under these backends (one photo and a folder)")
    p.add_argument("--scales", nargs="+", metavar="SCALE",
                   help="network time of the bundled model under these --scale values (e.g. 1 auto) on the "
                        "synthetic photo and an enlarged real one, and predict.py's peak memory under auto")
    p.add_argument("--ranks", nargs="+", type=int, metavar="N",
                   help="throughput of predict.py on the folder of photos as N torchrun processes (1: one plain "
                        "process), each with the cores / N threads")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--record", action="store_true",
                   help="with --backend, --scales or --ranks: append the results to " + str(RECORD))
    p.add_argument("--table-only", action="store_true",
                   help="print the backends and scales tables from the record and exit")
    p.add_argument("--runs", nargs="+", metavar="RUN",
                   help="also time these trained runs (models/RUN) under --scale auto; the ratio is then "
                        "the last run's time / the bundled model's")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the times here (benchmarks/architecture.py reads it)")
    args = p.parse_args()
    if args.table_only:
        print(render_backends(), render_scales(), render_ranks(), sep="\n\n")
        return
    if args.ranks:
        found = time_ranks(args.ranks, args.repeat)
        print(json.dumps(found))
        if args.record:
            record({"ranks": found, "photos": FOLDER_PHOTOS}, args.repeat)
        return
    if args.scales:
        found = time_scales(args.scales, args.data_dir, args.repeat)
        print(json.dumps(found))
        if args.record:
            record({"scales": found}, args.repeat)
        return
    if args.backend:
        medians = time_backends(args.backend, args.repeat)
        print(json.dumps(medians))
        if args.record:
            record({"medians_s": medians}, args.repeat)
            print(render_backends())
        return
    if not args.candidates and not bundle_dir(DEFAULT_BUNDLE):
        sys.exit(f"no bundled model in pretrained/{DEFAULT_BUNDLE}/; time networks with --candidates")
    missing = [r for r in args.runs or [] if not (ROOT / "models" / r / "config.json").is_file()]
    if missing:
        sys.exit(f"no trained run {', '.join(missing)} in {ROOT / 'models'}: train it first, or drop it from --runs")
    times = time_arms(args.candidates, args.runs or [], args.repeat)
    print(f"predict.py on one {WIDTH}x{HEIGHT} photo, {torch.get_num_threads()} threads, median of {args.repeat}:")
    for arm, seconds in times.items():
        size = f"{parameters(arm) / 1e6:.2f} M parameters" if ":" in arm else arm_label(arm)
        print(f"  {arm:>16}: {statistics.median(seconds):6.2f} s  ({size}; runs: "
              f"{', '.join(f'{s:.2f}' for s in seconds)})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({arm: {"median_s": round(statistics.median(seconds), 2), "runs": seconds,
                                               "threads": torch.get_num_threads()} for arm, seconds in times.items()}))
    last, median = list(times)[-1], {arm: statistics.median(seconds) for arm, seconds in times.items()}
    slower, faster = (last, "bundled") if args.runs else (REFERENCE, last)
    print(f"ratio: {median[slower] / median[faster]:.2f}")


if __name__ == "__main__":
    main()
