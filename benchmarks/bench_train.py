"""Training and inference throughput of crackseg's default step against a reference-style baseline.

    python benchmarks/bench_train.py                                  # CPU: UNet, batch 4, 256x256 crops
    python benchmarks/bench_train.py --device cuda --batch-size 8 --crop 512

Both arms run in this one process on the same model, batch and crop: the baseline mirrors
the reference (fp32, NCHW); the project uses its defaults (precision "auto", and channels_last only
under bf16/fp16 autocast: on a CPU without native bf16 both arms are fp32 NCHW, ratio ~1).
Each arm times `training.train_step` several steps after warm-up and reports the median.
Run it on an otherwise idle machine. The last line is `ratio: <N>` (training images/s,
project / baseline).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from training import TrainState, train_step  # noqa: E402
from engine import Engine, cpu_has_native_bf16, make_engine  # noqa: E402
from inference import forward_logits  # noqa: E402


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="UNet")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=8, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer-size", type=int, default=512)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--record", action="store_true", help="append the result to benchmarks/results/bench_train.jsonl")
    p.add_argument("--table-only", action="store_true", help="print the speed table from that record and exit")
    return p.parse_args()


def synchronize(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def timed(fn, engine: Engine, warmup: int, steps: int) -> float:
    """Median seconds of fn() after warm-up."""
    times = []
    for i in range(warmup + steps):
        synchronize(engine)
        start = time.perf_counter()
        fn()
        synchronize(engine)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(engine: Engine, args) -> dict:
    torch.manual_seed(0)
    model = build_model(args.arch).to(engine.device)
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(engine.device.type, enabled=engine.dtype == torch.float16)
    images = engine.to_device(torch.rand(args.batch_size, 3, args.crop, args.crop))
    masks = (torch.rand(args.batch_size, 1, args.crop, args.crop, device=engine.device) > 0.95).float()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    model.train()
    state = TrainState(model, optimizer, scaler)
    step = timed(lambda: train_step(state, images, masks, engine, "BCEDiceLoss"),
                 engine, args.warmup, args.steps)
    model.eval()
    image = torch.rand(1, 3, args.infer_size, args.infer_size)
    with torch.inference_mode():
        infer = timed(lambda: forward_logits(model, image, engine), engine, 1, max(args.steps // 2, 3))
    peak = (torch.cuda.max_memory_allocated(engine.device) / 2**20 if engine.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"train_images_per_s": args.batch_size / step, "step_s": step, "infer_images_per_s": 1 / infer,
            "peak_mib": peak}


def project_engine(device: str) -> Engine:
    """What train.py runs with by default: precision "auto" and the channels_last rule it implies."""
    return make_engine(device, "auto")


RECORD = Path(__file__).resolve().parent / "results" / "bench_train.jsonl"


def machine_label(engine: Engine) -> str:
    """The kind of machine a result belongs to, as the speed table groups them."""
    if engine.device.type == "cuda":
        return torch.cuda.get_device_name(engine.device)
    kind = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{os.cpu_count()}-core CPU, {kind} ({torch.backends.cpu.get_cpu_capability()})"


def render_table(record: Path) -> str:
    """One row per recorded machine and setting: which rule it gets, and the two arms' speeds."""
    rows = ["| machine | torch | setting | crackseg's default (the rule) | baseline train img/s "
            "| crackseg train img/s | ratio | inference img/s (baseline / crackseg) |", "|---" * 8 + "|"]
    for line in map(json.loads, record.read_text().splitlines()):
        rows.append(f"| {line['machine']} | {line['torch']} | {line['setting']} | {line['project']} | "
                    f"{line['baseline_train_img_s']:.3g} | {line['project_train_img_s']:.3g} | {line['ratio']:.2f} | "
                    f"{line['baseline_infer_img_s']:.3g} / {line['project_infer_img_s']:.3g} |")
    return "\n".join(rows)


def main() -> None:
    args = get_args()
    if args.table_only:
        return print(render_table(RECORD))
    project = project_engine(args.device)
    baseline = Engine(project.device, None, channels_last=False)
    print(f"{args.arch}, batch {args.batch_size}, {args.crop}x{args.crop} crops, inference {args.infer_size}^2, "
          f"{project.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    arms = (("baseline fp32 NCHW", baseline), (f"project {project.describe().split(' ', 1)[1]}", project))
    for label, engine in arms:
        results[label] = r = measure(engine, args)
        peak_kind = "peak GPU memory" if engine.device.type == "cuda" else "process peak RSS so far"
        print(f"{label:<32} train {r['train_images_per_s']:7.2f} img/s ({r['step_s']:.3f} s/step)   "
              f"inference {r['infer_images_per_s']:7.2f} img/s   {peak_kind} {r['peak_mib']:.0f} MiB")
    base, proj = results.values()
    ratio = proj["train_images_per_s"] / base["train_images_per_s"]
    print(f"inference ratio: {proj['infer_images_per_s'] / base['infer_images_per_s']:.2f}")
    print(f"ratio: {ratio:.2f}")
    if args.record:
        line = {"experiment": f"{machine_label(project)} b{args.batch_size} {args.crop}",
                "machine": machine_label(project), "torch": torch.__version__.split("+")[0],
                "setting": f"{args.arch}, batch {args.batch_size}, {args.crop}^2", "baseline": "fp32 NCHW",
                "project": project.describe().split(" ", 1)[1], "ratio": ratio, "steps": args.steps,
                "baseline_train_img_s": base["train_images_per_s"], "project_train_img_s": proj["train_images_per_s"],
                "baseline_infer_img_s": base["infer_images_per_s"], "project_infer_img_s": proj["infer_images_per_s"],
                "date": time.strftime("%Y-%m-%d")}
        with open(RECORD, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
