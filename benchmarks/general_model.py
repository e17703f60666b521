"""The bundled general model: train it, export it to pretrained/crackseg-general/, measure it, write its card.

    python benchmarks/general_model.py --list        # the exact commands
    python benchmarks/general_model.py               # all of them (about 135 minutes), one jsonl line
    python benchmarks/general_model.py --card        # pretrained/crackseg-general/README.md from the jsonl
    python benchmarks/general_model.py --table-only  # the README's table, with the leave-one-out estimates

The model trains on the training data of all four sources (DEEPCRACK_TEST stays a test set) with the
multi-source recipe and the network benchmarks/studies/architecture.py chose (runner.RECIPE, runner.SHIPPED).
Then: the run scored (fp32 weights), the export (half-precision weights, sha256), the bundle scored
as users get it (`evaluate.py --name crackseg-general`, the engine's default precision), the largest
probability change the half-precision weights make on DEEPCRACK_TEST, and predict.py's speed on a
4000x3000 photo against the width-32 UNet. The bundle is replaced only with --replace, and only when
the recipe's mean leave-one-out F and DEEPCRACK_TEST both improved by more than the seed spread.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from modelcard import (BUNDLE, TESTS, long_lodo_lines, shipped_lodo_lines, terms_line, write_card,  # noqa: E402
                       write_ten_card)
from runner import (BUNDLE_MINUTES, CAMERA, GROUP_TRAIN, MINUTES, MODELS, RECIPE, RESULTS, ROOT, SEED_PAIRS,  # noqa: E402
                    SHIPPED, TEST, TRAIN, UPSAMPLING, add_common_args, f1_pair, network_args, read_record, run_all,
                    score, training_summary)
from zoomrecord import ARMS, CHOSEN  # noqa: E402
import sourcegroups  # noqa: E402

sys.path.insert(0, str(ROOT))

import scales  # noqa: E402

RUN = "gen_general"
POLICY = "policy_auto"   # the bundle's --scale auto policy, with its threshold re-chosen under it
# the same after the auto rule was re-chosen on the camera's zoom (benchmarks/framezoom.py, autorule.py)
POLICY_CAMERA = "policy_auto_camera"
NETWORK = network_args(SHIPPED)
# the second bundle (issue 28, step 6): zoom.py's chosen recipe trained as the first one was, scored
# under --scale auto as users would get it; its export waits for the --replace verdict
SECOND, SECOND_EXPORT, SECOND_RUN = f"general_{CHOSEN}", f"general_{CHOSEN}_bundle", f"gen_{CHOSEN}"
SECOND_NETWORK = NETWORK + UPSAMPLING + ARMS[CHOSEN]
# the ten-source bundle (issue 40): tensources.py's chosen recipe on every group's training data for
# TEN_STEPS optimizer steps (72 minutes with native bf16, about half of it validating 464 photos each
# epoch; near 180 without, past --max-minutes 150: a rerun would add --val-every 3, about 120 by the same
# estimate), scored under auto and timed against today's bundle; its export waits for ten_verdict
TEN, TEN_EXPORT, TEN_RUN = "general_ten", "general_ten_bundle", "gen_ten"
TEN_STEPS, TEN_EPOCH_SIZE = 15000, 1000
TEN_DATASETS = [d for sets in GROUP_TRAIN.values() for d in sets]
TEN_TESTS = ["DEEPCRACK_TEST", *(d for d in TEN_DATASETS if d != TRAIN["DEEPCRACK"])]   # the rest: validation splits
HALF_JSON = MODELS / BUNDLE / "half_precision.json"
SPEED_JSON = MODELS / BUNDLE / "speed.json"
TEN_SPEED_JSON = MODELS / TEN_RUN / "speed.json"   # measured before the export: today's bundle is the baseline


def train_command(args, run: str, network: list[str]) -> list[str]:
    return [sys.executable, "train.py", "--dataset", *TRAIN.values(), "--data-dir", args.data_dir, "--name", run,
            "--overwrite", "--max-minutes", str(BUNDLE_MINUTES), *RECIPE, *CAMERA, *network]


def score_command(args, run: str, *extra: str, tests: list[str] = TESTS) -> list[str]:
    return [sys.executable, "evaluate.py", "--name", run, "--test", *tests, "--data-dir", args.data_dir,
            "--tolerance", "0", "2", *extra]


def commands(args) -> list[list[str]]:
    py, data = sys.executable, ["--data-dir", args.data_dir]
    return [train_command(args, RUN, NETWORK), score_command(args, RUN),
            [py, "benchmarks/general_model.py", "--export", *(["--replace"] if args.replace else [])],
            score_command(args, BUNDLE),
            [py, "benchmarks/general_model.py", "--half-precision", *data],
            [py, "benchmarks/bench_predict.py", "--json", str(SPEED_JSON.relative_to(ROOT))]]


def second_commands(args) -> list[list[str]]:
    """The second bundle's run, trained and scored under auto; the line records the --replace verdict."""
    return [train_command(args, SECOND_RUN, SECOND_NETWORK), score_command(args, SECOND_RUN, "--scale", "auto")]


def second_export_commands(args) -> list[list[str]]:
    """The second run replaces the bundle (only where the verdict says it won), takes the auto policy
    with its threshold re-chosen under it, and is measured as the first bundle was."""
    py, data, run = sys.executable, ["--data-dir", args.data_dir], ["--run", SECOND_RUN]
    return [[py, "benchmarks/general_model.py", "--export", "--replace", *run],
            *policy_commands(args, "auto"),
            [py, "benchmarks/general_model.py", "--half-precision", *run, *data],
            [py, "benchmarks/bench_predict.py", "--json", str(SPEED_JSON.relative_to(ROOT))]]


def ten_commands(args) -> list[list[str]]:
    """The ten-source run: trained, DEEPCRACK_TEST scored under auto and at 1, predict.py timed against
    today's bundle (each under auto); the line records ten_verdict."""
    train = [sys.executable, "train.py", "--dataset", *TEN_DATASETS, "--data-dir", args.data_dir, "--name", TEN_RUN,
             "--overwrite", *sourcegroups.recipe_options(sourcegroups.CHOSEN, None, TEN_STEPS, TEN_EPOCH_SIZE)]
    scores = [score_command(args, TEN_RUN, "--scale", scale, tests=["DEEPCRACK_TEST"]) for scale in ("auto", "1")]
    speed = [sys.executable, "benchmarks/bench_predict.py", "--runs", TEN_RUN,
             "--json", str(TEN_SPEED_JSON.relative_to(ROOT))]
    return [train, *scores, speed]


def ten_export_commands(args) -> list[list[str]]:
    """The ten-source run replaces the bundle (only where ten_verdict says it won), takes the auto policy
    with its threshold re-chosen on its ten sources' validation splits, and is measured as the first was."""
    py, data, run = sys.executable, ["--data-dir", args.data_dir], ["--run", TEN_RUN]
    return [[py, "benchmarks/general_model.py", "--export", "--replace", *run],
            *policy_commands(args, "auto", TEN_TESTS),
            [py, "benchmarks/general_model.py", "--half-precision", *run, *data]]


def policy_commands(args, scale: str, tests: list[str] = TESTS) -> list[list[str]]:
    """The current bundle's scale policy set to `scale`, its threshold re-chosen on maps made under it,
    then the bundle scored as users now get it."""
    py, data = sys.executable, ["--data-dir", args.data_dir]
    return [[py, "benchmarks/general_model.py", "--adopt-scale", scale, *data],
            score_command(args, BUNDLE, tests=tests)]


def adopt_scale(scale: float | str, data_dir: str) -> None:
    """The bundle's config.json gets scale `scale` and the threshold train.py's rule picks on its
    training sources' validation splits predicted under it (the mean 2 px F curve's best); the
    threshold of each earlier policy stays in thresholds_by_scale, so `--scale 1` restores it."""
    import metrics
    from rundir import PRETRAINED_DIR, eval_folder, write_config
    folder = PRETRAINED_DIR / BUNDLE
    config = json.loads((folder / "config.json").read_text())
    datasets, key = list(config["dataset"]), scales.policy_key(scale)
    subprocess.run([sys.executable, "evaluate.py", "--name", BUNDLE, "--test", *datasets, "--data-dir", data_dir,
                    "--scale", key, "--tolerance", "2"], cwd=ROOT, check=True)
    own = config.get("scale", 1.0)   # an exported run keeps 1: its auto maps land in DATASET_scaleauto
    differs = scales.scale_setting(key, own)
    curves = [score(json.loads((MODELS / BUNDLE / "eval" / eval_folder(d, differs) / "metrics.json").read_text()),
                    2)["f1_curve"] for d in datasets]
    by_scale = config.get("thresholds_by_scale") or {scales.policy_key(own): config["threshold"]}
    threshold = metrics.best_mean_threshold(curves)
    by_scale[scales.policy_key(scale)] = threshold
    config.update({"scale": scale, "threshold": threshold, "thresholds_by_scale": by_scale})
    write_config(folder, config)
    print(f"{folder / 'config.json'}: scale {scale}, threshold {threshold:.2f} (thresholds by scale {by_scale})")


def current_policy(done: dict[str, dict]) -> dict | None:
    """The line of the bundle's policy as shipped now: the latest adopted (the ten-source bundle's own)."""
    return done.get(TEN_EXPORT) or done.get(POLICY_CAMERA) or done.get(POLICY)


def two_px_ods(metrics: dict) -> float:
    return score(metrics, 2)["ods"]["f1"]


def bundle_deepcrack() -> float:
    """The current bundle's DEEPCRACK_TEST 2 px ODS F as users get it (under its policy once adopted)."""
    done = read_record(RESULTS / "general_model.jsonl")
    line = current_policy(done) or done["general"]
    return two_px_ods(line["bundle_metrics"]["DEEPCRACK_TEST"])


def lodo_means() -> tuple[float | None, float | None]:
    """Mean 2 px ODS F over the four held-out sources at MINUTES: the shipped recipe's (scale 1) and
    zoom.py's chosen recipe's under today's auto rule at zoom 1 (None until every source has run)."""
    from zoomrecord import RECORD, load_arrays, lodo_name, replay
    old = [two_px_ods(line["metrics"][TEST[s]]) for s, line in shipped_lodo_lines().items() if line]
    record = read_record(RECORD)
    lines = [record.get(lodo_name(s)) for s in TEST]
    new = [replay(load_arrays(RECORD, line), scales.choose)[1.0]["auto"][0] for line in lines if line]
    mean = lambda values: sum(values) / len(values) if len(values) == len(TEST) else None  # noqa: E731
    return mean(old), mean(new)


def seed_spreads() -> dict[str, float]:
    """What a second seed moved (2 px ODS F, generalization.py's seed pairs): DEEPCRACK_TEST's score,
    and a mean over the held-out sources a pair was scored on (the signed gaps averaged, as the
    mean leave-one-out F averages them)."""
    done = read_record(RESULTS / "generalization.jsonl")
    spreads = {"DEEPCRACK_TEST": 0.0, "mean leave-one-out": 0.0}
    for one, two in SEED_PAIRS:
        if one not in done or two not in done:
            continue
        trained = set(done[one]["trained_on"])
        gaps = {t: f1_pair(done[one], t, 2)[0] - f1_pair(done[two], t, 2)[0] for t in done[one]["metrics"]}
        held_out = [g for t, g in gaps.items() if t not in trained and t != "DEEPCRACK_TEST"]
        spreads["DEEPCRACK_TEST"] = max(spreads["DEEPCRACK_TEST"], abs(gaps.get("DEEPCRACK_TEST", 0.0)))
        if held_out:
            spreads["mean leave-one-out"] = max(spreads["mean leave-one-out"], abs(sum(held_out) / len(held_out)))
    return spreads


def replacement_verdict(run: str = RUN) -> tuple[bool, str]:
    """Whether the trained run may replace the bundle: its DEEPCRACK_TEST and its recipe's mean
    leave-one-out F must both beat the bundle's by more than the seed spread."""
    spreads = seed_spreads()
    run_dc = two_px_ods(json.loads((MODELS / run / "eval" / "DEEPCRACK_TEST" / "metrics.json").read_text()))
    old, new = lodo_means()
    gains = {"DEEPCRACK_TEST": run_dc - bundle_deepcrack(),
             "mean leave-one-out": None if old is None or new is None else new - old}
    wins = all(gains[k] is not None and gains[k] > spreads[k] for k in gains)
    text = "; ".join(f"{k} {'not measured' if v is None else f'{v:+.3f}'} (seed spread {spreads[k]:.3f})"
                     for k, v in gains.items())
    return wins, f"{run} against the bundle, 2 px ODS F: {text}"


def ten_verdict() -> tuple[bool, str]:
    """Whether the ten-source run may replace the bundle (issue 40, item 5): its recipe's mean gain over
    today's on the eight held-out groups (tensources.py, under auto) beyond the baseline's seed spread;
    DEEPCRACK_TEST under auto not below the bundle's by more than its seed spread; predict.py at most
    twice today's time on the 4000x3000 photo."""
    done = read_record(sourcegroups.RECORD)
    gains, gaps = sourcegroups.logo_gains(done), sourcegroups.seed_gaps(done)
    mean = sum(gains.values()) / len(gains) if len(gains) == len(GROUP_TRAIN) and gaps else None
    deepcrack = sourcegroups.policy_scores(TEN_RUN, ["DEEPCRACK_TEST"])["auto"]["DEEPCRACK_TEST"] - bundle_deepcrack()
    allowed_drop = seed_spreads()["DEEPCRACK_TEST"]
    speed = json.loads(TEN_SPEED_JSON.read_text())
    slower = speed[TEN_RUN]["median_s"] / speed["bundled"]["median_s"]
    wins = mean is not None and mean > gaps["mean"] and deepcrack >= -allowed_drop and slower <= 2
    held_out = (f"{len(gains)} of {len(GROUP_TRAIN)} groups measured" if mean is None
                else f"{mean:+.3f} (seed spread {gaps['mean']:.3f})")
    return wins, (f"{TEN_RUN} against the bundle, 2 px ODS F under auto: mean gain over the held-out groups "
                  f"{held_out}; DEEPCRACK_TEST {deepcrack:+.3f} (may fall by {allowed_drop:.3f}); predict.py "
                  f"{slower:.2f}x today's time (at most 2x)")


def verdict(run: str) -> tuple[bool, str]:
    return ten_verdict() if run == TEN_RUN else replacement_verdict(run)


def keep_old_scores() -> None:
    """The replaced bundle's evaluations move aside (models/crackseg-general/eval_<its sha256>/), so that the
    new bundle's numbers are never read from, or mixed with, the old bundle's folders."""
    from rundir import PRETRAINED_DIR
    scored, config = MODELS / BUNDLE / "eval", PRETRAINED_DIR / BUNDLE / "config.json"
    if scored.is_dir() and config.exists():
        name = f"eval_{json.loads(config.read_text())['sha256'][:12]}"
        aside, n = scored.with_name(name), 1
        while aside.exists():   # an export tried again after a failed policy step moved this bundle's scores once
            aside, n = scored.with_name(f"{name}_{n}"), n + 1
        scored.rename(aside)


def export(replace: bool, run: str = RUN) -> None:
    from rundir import PRETRAINED_DIR, export_bundle, load_config
    folder = PRETRAINED_DIR / BUNDLE
    if (folder / "model.pt").exists():
        if not replace:
            sys.exit(f"{folder} exists: replace it (--replace) only when the run's verdict says it won")
        wins, why = verdict(run)
        print(why)
        if not wins:
            sys.exit(f"{folder} stays: {run} did not pass its verdict")
    keep_old_scores()
    if folder.exists():
        shutil.rmtree(folder)
    config = export_bundle(run, folder, {"terms": terms_line(load_config(run)["dataset"])})
    print(f"exported {run} to {folder} ({(folder / 'model.pt').stat().st_size / 2**20:.1f} MiB, "
          f"sha256 {config['sha256'][:12]}...)")


def half_precision(data_dir: str, run: str = RUN) -> None:
    """Largest |p(bundle) - p(run)| over DEEPCRACK_TEST, both computed in fp32 and in the default precision."""
    import numpy as np

    from dataset import CrackDataset, Intensity, scan_dataset
    from engine import make_engine
    from inference import load_run_model, predict_probability
    samples = scan_dataset(Path(data_dir), "DEEPCRACK_TEST")[0]
    found = {}
    for precision in ("fp32", "auto"):
        engine = make_engine("cpu", precision)
        (trained, config), (bundle, _) = load_run_model(run, engine), load_run_model(BUNDLE, engine)
        dataset = CrackDataset(samples, Intensity.from_config(config))
        largest, mean = 0.0, []
        for item in dataset:
            x = item["image"][None]
            diff = (predict_probability(trained, x, engine) - predict_probability(bundle, x, engine)).abs()
            largest, mean = max(largest, float(diff.max())), mean + [float(diff.mean())]
        found[precision if precision == "fp32" else str(engine.dtype or "fp32")] = {
            "max_abs_dp": round(largest, 5), "mean_abs_dp": float(np.mean(mean))}
        print(precision, found)
    HALF_JSON.parent.mkdir(parents=True, exist_ok=True)
    HALF_JSON.write_text(json.dumps(found))


def score_pairs(metrics: dict) -> list[str]:
    """strict and 2 px: "ODS F / F at the run's threshold"."""
    return [f"{r['ods']['f1']:.3f} / {r['at_run_threshold']['f1']:.3f}" for r in (score(metrics, t) for t in (0, 2))]


def render_table(record: Path) -> str:
    """The bundle on DEEPCRACK_TEST (under its scale policy, then at scale 1, once a policy was adopted),
    then what its network and recipe score at scale 1 on each source left out of their training, at
    25 minutes and at the bundle's budget (runs not yet trained are left out)."""
    done = read_record(record)
    if TEN_EXPORT in done:
        return render_ten_table(done[TEN_EXPORT])
    rows = ["| test set | strict: ODS F / F at t | 2 px: ODS F / F at t |", "|---|---|---|"]
    policy = current_policy(done)
    for line, how in ((policy, f", --scale {policy and policy['scale']} (the default)"),
                      (done.get("general"), ", --scale 1" if policy else "")):
        if line:
            m = line["bundle_metrics"]["DEEPCRACK_TEST"]
            rows.append(f"| DEEPCRACK_TEST ({m['images']} images, never trained on){how} | "
                        + " | ".join(score_pairs(m)) + " |")
    for minutes, held_out in ((MINUTES, shipped_lodo_lines()), (BUNDLE_MINUTES, long_lodo_lines())):
        for source, test in TEST.items():
            if held_out[source]:
                rows.append(f"| held-out {test}: trained without {TRAIN[source]}, {minutes} min | "
                            + " | ".join(score_pairs(held_out[source]["metrics"][test])) + " |")
    return "\n".join(rows)


def render_ten_table(line: dict) -> str:
    """The ten-source bundle on DEEPCRACK_TEST under its default policy, then its recipe without each group
    (tensources.py at equal steps; the mean over a group's test sets), 2 px ODS F under auto and at 1."""
    m = line["bundle_metrics"]["DEEPCRACK_TEST"]
    rows = ["| test set | strict: ODS F / F at t | 2 px: ODS F / F at t |", "|---|---|---|",
            f"| DEEPCRACK_TEST ({m['images']} images, never trained on), --scale auto (the default) | "
            + " | ".join(score_pairs(m)) + " |", "", "| held-out group: trained without it, "
            f"{sourcegroups.STEPS} steps | 2 px ODS F, --scale auto | 2 px ODS F, --scale 1 |", "|---|---|---|"]
    done = read_record(sourcegroups.RECORD)
    for group in GROUP_TRAIN:
        held_out = done.get(f"{sourcegroups.CHOSEN}_{group}")
        if held_out:
            rows.append(f"| {group} | " + " | ".join(f"{sourcegroups.group_score(held_out, p):.3f}"
                                                     for p in sourcegroups.POLICIES) + " |")
    return "\n".join(rows)


def scores(run: str) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((MODELS / run / "eval").glob("*/metrics.json"))}


def summarize_policy(scale: str) -> dict:
    config = json.loads((ROOT / "pretrained" / BUNDLE / "config.json").read_text())
    return {"scale": scale, "threshold": config["threshold"], "thresholds_by_scale": config["thresholds_by_scale"],
            "bundle_metrics": scores(BUNDLE), "bundle_sha256": config["sha256"]}


def summarize_run(run: str, data_dir: str) -> dict:
    from rundir import load_config
    budget = {"steps": TEN_STEPS} if run == TEN_RUN else {"budget_minutes": BUNDLE_MINUTES}
    return {"run": run, "trained_on": load_config(run)["dataset"], **budget, "data_dir": str(Path(data_dir).resolve()),
            "training": training_summary(run), "run_metrics": scores(run)}


def summarize_ten(data_dir: str) -> dict:
    wins, why = ten_verdict()
    return {**summarize_run(TEN_RUN, data_dir), "arm": sourcegroups.CHOSEN,
            "speed": json.loads(TEN_SPEED_JSON.read_text()), "replaces_bundle": wins, "verdict": why}


def summarize_second(data_dir: str) -> dict:
    wins, why = replacement_verdict(SECOND_RUN)
    return {**summarize_run(SECOND_RUN, data_dir), "replaces_bundle": wins, "verdict": why}


def summarize(run: str, data_dir: str) -> dict:
    speed = TEN_SPEED_JSON if run == TEN_RUN else SPEED_JSON
    return {**summarize_run(run, data_dir), "bundle_metrics": scores(BUNDLE),
            "half_precision": json.loads(HALF_JSON.read_text()), "speed": json.loads(speed.read_text()),
            "bundle_config": json.loads((ROOT / "pretrained" / BUNDLE / "config.json").read_text())}


def summary(name: str, data_dir: str) -> dict:
    """The jsonl line's results of experiment `name`."""
    if name in (POLICY, POLICY_CAMERA):
        return summarize_policy("auto")
    if name == TEN_EXPORT:
        return {**summarize(TEN_RUN, data_dir), **summarize_policy("auto")}
    if name == SECOND:
        return summarize_second(data_dir)
    if name == TEN:
        return summarize_ten(data_dir)
    return summarize({SECOND_EXPORT: SECOND_RUN, TEN_EXPORT: TEN_RUN}.get(name, RUN), data_dir)


# the ten-source bundle's experiments exist once tensources.py has chosen its recipe
NAMES = ["general", POLICY, SECOND, SECOND_EXPORT, POLICY_CAMERA, *([TEN, TEN_EXPORT] if sourcegroups.CHOSEN else [])]


def experiments(args) -> dict[str, list[list[str]]]:
    found = {"general": commands(args), POLICY: policy_commands(args, "auto"), SECOND: second_commands(args),
             SECOND_EXPORT: second_export_commands(args), POLICY_CAMERA: policy_commands(args, "auto")}
    if sourcegroups.CHOSEN:
        found.update({TEN: ten_commands(args), TEN_EXPORT: ten_export_commands(args)})
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, RESULTS / "general_model.jsonl", NAMES)
    p.add_argument("--replace", action="store_true", help="replace an existing bundle (see above for when)")
    p.add_argument("--export", action="store_true", help="only export the finished run to pretrained/")
    p.add_argument("--half-precision", action="store_true", help="only measure the half-precision change")
    p.add_argument("--run", default=RUN, choices=[RUN, SECOND_RUN, TEN_RUN],
                   help="the run --export and --half-precision take")
    p.add_argument("--card", action="store_true", help="only write the bundle's README.md from the jsonl")
    p.add_argument("--adopt-scale", metavar="S|auto", type=scales.scale_arg,
                   help="only set the bundle's scale policy and re-choose its threshold under it "
                        "(what experiment policy_auto runs)")
    args = p.parse_args()
    if args.export:
        return export(args.replace, args.run)
    if args.adopt_scale:
        return adopt_scale(args.adopt_scale, args.data_dir)
    if args.half_precision:
        return half_precision(args.data_dir, args.run)
    if args.card:
        done = read_record(args.record)
        if TEN_EXPORT in done:
            return write_ten_card(done[TEN_EXPORT], ROOT / "pretrained" / BUNDLE)
        return write_card(done["general"], ROOT / "pretrained" / BUNDLE, current_policy(done))
    if not args.table_only:
        run_all(experiments(args), args, lambda name: summary(name, args.data_dir))
    if not args.list:
        print(render_table(args.record))


if __name__ == "__main__":
    main()
