"""The bundled general model's card: pretrained/crackseg-general/README.md and failure.jpg, written
from its jsonl lines (benchmarks/general_model.py --card), with the estimate for unseen photos that
the leave-one-out runs of its network and recipe give."""
from pathlib import Path

from runner import (BUNDLE_MINUTES, MINUTES, MODELS, REFERENCE, RESULTS, SHIPPED, TEST, arch_experiment,
                    long_parent_name, read_record, score, two_px)

BUNDLE = "crackseg-general"
TESTS = ["DEEPCRACK_TEST", "CFD", "CRACKMAP", "MASONRY"]   # CFD, CRACKMAP, MASONRY: their validation splits


FAILURES = """From the top: straight dark edges are taken for cracks (DEEPCRACK_TEST: the shadowed
joint between a kerb and a wall, and a stain below it); faint hairline branches on fine asphalt are
missed where the main crack is found (CFD); on coarse asphalt a wide crack is found along its centre
but thinner than its annotator drew it (CRACKMAP, whose labels are the full crack body); and the
mortar joints of a painted brick wall are marked as crack (MASONRY). Expect the same on your photos:
joints, kerb edges and shadows read as cracks, and the widths follow the annotation style the model
learned from most."""   # what failure.jpg shows, in words


def worst_images(metrics_dir: Path, count: int = 1) -> list[str]:
    """Stems with the lowest F at the bundle's threshold (2 px) that have crack pixels to find."""
    import csv
    with open(metrics_dir / "per_image.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["tolerance"] == "2" and r.get("f1_at_run")]
    return [r["name"] for r in sorted(rows, key=lambda r: float(r["f1_at_run"]))][:count]


def failure_picture(data_dir: Path, out: Path, tests: list[str] = TESTS, height: int = 150) -> list[str]:
    """failure.jpg: for the worst image of each test set, the photo and the bundle's errors
    (green found, red false alarm, blue missed) as users get them (its scale policy and threshold).
    Returns the images used."""
    import numpy as np

    from dataset import CrackDataset, Intensity, scan_dataset
    from engine import make_engine
    from predictor import Predictor
    from visuals import write_image
    bundle = Predictor.load(BUNDLE, engine=make_engine("cpu"))   # its scale policy and that policy's threshold
    rows, used = [], []
    for test in tests:
        samples = {s.stem: s for s in scan_dataset(data_dir, test)[0]}
        for stem in worst_images(MODELS / BUNDLE / "eval" / test):
            sample = samples[stem]
            x = CrackDataset([sample], Intensity.from_config(bundle.config))[0]["image"][None]
            prob = bundle.predict_tensor(x).prob[0, 0].numpy()
            rows.append(failure_row(sample, prob > bundle.threshold, height))
            used.append(f"{test}/{stem}")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    write_image(out, np.concatenate(rows), quality=70)
    return used


def failure_row(sample, pred, height: int):
    """photo | errors, RGB, scaled to `height` px. read_image is already RGB: no conversion here."""
    import cv2

    from dataset import read_image, read_mask
    from visuals import error_overlay, side_by_side
    photo = read_image(sample.image)
    panel = side_by_side([photo, error_overlay(photo, pred, read_mask(sample.mask) > 0)])
    return cv2.resize(panel, (round(panel.shape[1] * height / panel.shape[0]), height), interpolation=cv2.INTER_AREA)


def score_cells(metrics: dict) -> list[str]:
    """strict and 2 px: ODS F (its threshold) and F at the bundle's threshold."""
    cells = []
    for tolerance in (0, 2):
        r = score(metrics, tolerance)
        cells += [f"{r['ods']['f1']:.3f} ({r['ods']['threshold']:.2f})", f"{r['at_run_threshold']['f1']:.3f}"]
    return cells


# the one line predict.py prints and the report shows (config.json's "terms"); TERMS below is the detail
TERMS_LINE_TEN = ("research use only, non-commercial; credit DeepCrack-537 (Liu et al. 2019), CrackForest (Shi et "
                  "al. 2016), CrackMap (ikatsamenis), Masonry (Dais et al. 2021), UAV-CrackX (Shan et al. 2025), "
                  "GAPs384 (Eisenbach et al. 2017), AigleRN+TRIMM (Chambon and Moliard 2011) and ShadowCrack "
                  "(Fan et al.): pretrained/crackseg-general/README.md")
TERMS_LINE = ("non-commercial research use; credit DeepCrack-537 (Liu et al. 2019), CrackForest (Shi et al. 2016), "
              "CrackMap (ikatsamenis) and Masonry (Dais et al. 2021): pretrained/crackseg-general/README.md")
TERMS = """| source | images used | terms of the data |
|---|---|---|
| DeepCrack-537 (Liu et al., Neurocomputing 2019) | DEEPCRACK_TRAIN, 300 | no licence stated: cite the paper |
| CrackForest, CFD (Shi et al., IEEE T-ITS 2016) | 118 | non-commercial research use only |
| CrackMap (ikatsamenis/CrackMap) | 120 | no licence given: research use, credit the repository |
| Masonry (Dais et al., Automation in Construction 2021) | 240 | its repository is GPL-3.0 |

The weights inherit the strictest of these: **non-commercial research use**, crediting the four
sources above. No source forbids sharing models trained on it, so none was left out; whether
GPL-3.0 reaches weights learned from data is unsettled, so if you redistribute them, do it under
GPL-3.0-compatible terms."""


# per training dataset: (the source as its authors name it, the terms of its data); ../shared/data/README.md
SOURCE_TERMS = {
    "DEEPCRACK_TRAIN": ("DeepCrack-537 (Liu et al., Neurocomputing 2019)", "no licence stated: cite the paper"),
    "CFD": ("CrackForest, CFD (Shi et al., IEEE T-ITS 2016)", "non-commercial research use only"),
    "CRACKMAP": ("CrackMap (ikatsamenis/CrackMap)", "no licence given: research use, credit the repository"),
    "MASONRY": ("Masonry (Dais et al., Automation in Construction 2021)", "its repository is GPL-3.0"),
    **{f"UAVCRACKX{z}": (f"UAV-CrackX, x{z} zoom (Shan et al., Automation in Construction 2025)",
                         "no licence stated: research use, cite the paper") for z in (4, 8, 16)},
    "GAPS384": ("GAPs384 tiles (Eisenbach et al., IJCNN 2017)", "research use"),
    "AIGLERN": ("AigleRN + TRIMM tiles (Chambon and Moliard, 2011)", "research use"),
    "SHADOWCRACK": ("ShadowCrack tiles (Fan et al.)", "research use"),
}


def terms_line(datasets: list[str]) -> str:
    """config.json's "terms" of a bundle trained on `datasets`."""
    return TERMS_LINE if set(datasets) <= set(TESTS) | {"DEEPCRACK_TRAIN"} else TERMS_LINE_TEN


def terms_table(split: dict[str, dict[str, list[str]]]) -> str:
    """Each training dataset of a bundle (its split.json), the images it trained on and their terms."""
    rows = ["| source | dataset, images used | terms of the data |", "|---|---|---|"]
    for dataset, parts in split.items():
        source, terms = SOURCE_TERMS[dataset]
        rows.append(f"| {source} | {dataset}, {len(parts['train'])} | {terms} |")
    return "\n".join(rows) + """

Every source is published for research use, and none forbids sharing models trained on it. The
weights inherit the strictest terms: **research use only, non-commercial** (CFD's), crediting every
source above. Whether GPL-3.0 (Masonry's repository) reaches weights learned from data is
unsettled, so if you redistribute them, do it under GPL-3.0-compatible terms."""


def shipped_lodo_lines() -> dict[str, dict | None]:
    """Per source, the jsonl line of the shipped network's leave-one-out run without it (None: not run)."""
    if SHIPPED == REFERENCE:
        record, name = "generalization.jsonl", lambda source: f"lodo_{source}"
    else:
        record, name = "architecture.jsonl", lambda source: arch_experiment(SHIPPED, source)
    done = read_record(RESULTS / record)
    return {source: done.get(name(source)) for source in TEST}


def long_lodo_lines() -> dict[str, dict | None]:
    """Per source, the jsonl line of the same leave-one-out run trained for the bundle's minutes."""
    done = read_record(RESULTS / "finetune.jsonl")
    return {source: done.get(long_parent_name(source)) for source in TEST}


def unseen_photo_rows(long: dict[str, dict | None], short: dict[str, dict | None]) -> list[str]:
    """The card's estimate for unseen photos: per held-out source, 2 px ODS F and F at the run's
    threshold of the leave-one-out run at the bundle's budget and at the comparison's MINUTES."""
    budgets = [BUNDLE_MINUTES, MINUTES]
    rows = ["| held-out source | " + " | ".join(f"2 px: ODS F, {m} min | 2 px: F at t, {m} min" for m in budgets)
            + " |", "|---|" + "---|---|" * len(budgets)]
    for source, test in TEST.items():
        cells = []
        for line in (long.get(source), short.get(source)):
            held = two_px(line)
            cells += [f"{v:.3f}" for v in held] if held else ["not run", "not run"]
        rows.append(f"| {test} | " + " | ".join(cells) + " |")
    return rows


def metrics_table(bundle_metrics: dict, tests: list[str] = TESTS) -> str:
    rows = ["| test set | images | strict: ODS F (t) | strict: F at t | 2 px: ODS F (t) | 2 px: F at t |",
            "|---|---|---|---|---|---|"]
    for test in tests:
        m = bundle_metrics[test]
        label = test if test == "DEEPCRACK_TEST" else f"{test} validation split (chose the model: optimistic)"
        rows.append(f"| {label} | {m['images']} | " + " | ".join(score_cells(m)) + " |")
    return "\n".join(rows)


def policy_section(policy: dict | None) -> str:
    """The card's account of the scale policy adopted after training (empty before one was)."""
    if not policy:
        return ""
    return f"""## Scale policy

predict.py and evaluate.py show the network each photo at the factor `--scale {policy['scale']}` chooses for
it (config.json's "scale"; docs/zoom.md), with the threshold **{policy['threshold']:.2f}** chosen under it by
the run's rule on the same validation splits:

    {policy['commands'][0]}

`--scale 1` restores the photo as it is and the threshold {policy['thresholds_by_scale']['1']:.2f}. Under the policy:

{metrics_table(policy['bundle_metrics'])}

"""


def parameter_count(config: dict, folder: Path) -> int:
    from models import count_parameters
    from rundir import model_from_config, upgrade_config
    return count_parameters(model_from_config(upgrade_config(config, folder / "config.json")[0]))


def half_precision_text(line: dict) -> str:
    """What storing the weights in fp16 changed: probabilities on DEEPCRACK_TEST, and its 2 px ODS F."""
    half = line["half_precision"]
    autocast = ", ".join(f"{v['max_abs_dp']:.4f} in {k.replace('torch.', '')} autocast"
                         for k, v in half.items() if k != "fp32")
    # the run scored under the bundle's policy, so the change is the weights' alone, not the policy's
    from rundir import eval_folder
    from scales import scale_setting
    run_test = eval_folder("DEEPCRACK_TEST", scale_setting(line.get("scale", 1), 1))
    ods_change = (score(line["bundle_metrics"]["DEEPCRACK_TEST"], 2)["ods"]["f1"]
                  - score(line["run_metrics"][run_test], 2)["ods"]["f1"])
    return f"""Half precision: storing the weights in fp16 changes the probabilities on DEEPCRACK_TEST by at most
{half['fp32']['max_abs_dp']:.4f} computed in fp32 ({autocast}; mean {half['fp32']['mean_abs_dp']:.1e}), and its
2 px ODS F by {ods_change:+.4f} (evaluate.py's precision)."""


def failure_section(used: list[str], failures: str) -> str:
    return f"""## Known failure cases

![worst images](failure.jpg)

The worst image of each test set ({', '.join(used)}): the photo, then the model's mask at its
threshold, green where it found crack, red where it saw crack that is not labelled, blue where it
missed labelled crack. {failures}

## Your own photos

    python train.py --dataset MINE --init-from crackseg-general --preset finetune

fine-tunes it on a few labelled photos of yours in 5 CPU-minutes (README, "Fine-tuning").
"""


def write_card(line: dict, folder: Path, policy: dict | None = None) -> None:
    """pretrained/crackseg-general/README.md (and failure.jpg) from the general model's jsonl line and
    the line of the scale policy adopted after it (if any)."""
    config = line["bundle_config"]
    used = failure_picture(Path(line["data_dir"]), folder / "failure.jpg")
    tests = metrics_table(line["bundle_metrics"]).splitlines()
    under_policy = f", {policy['threshold']:.2f} under the scale policy below" if policy else ""
    as_is = (" --scale 1", ", the photos as they are") if policy else ("", "")
    lodo = unseen_photo_rows(long_lodo_lines(), shipped_lodo_lines())
    speed = line["speed"]
    params = parameter_count(config, folder)
    text = f"""# crackseg-general

The crack model that ships with crackseg: `python predict.py photo.jpg` uses it when no `--name`
is given. {config['arch']} with base width {config['base_width']} ({params / 1e6:.2f} M parameters),
one channel of logits, a sigmoid, and the threshold **{config['threshold']:.2f}** (chosen by the run:
the t that maximises the mean over its four training sources' validation F at 2 px){under_policy}. Input: RGB
photos of any size, min-max scaled per image; images larger than 1024 px are predicted in tiles.

## Training data and terms

{TERMS}

## How it was made

    {line['commands'][0].replace(line['data_dir'], '../shared/data')}

at commit {line['commit']} ({line['budget_minutes']} CPU-minutes on a 2-core machine, {line['training']['epochs']}
epochs, best epoch {line['training']['best_epoch']}), exported with `{line['commands'][2]}`:
`model.pt` holds the model state in half precision, `config.json` its settings and sha256.

## Numbers

`python evaluate.py --name crackseg-general --test DEEPCRACK_TEST --data-dir ../shared/data{as_is[0]}` reproduces
this table (bf16 autocast on a CPU with native bf16, as evaluate.py chooses; fp32 elsewhere){as_is[1]}.

{chr(10).join(tests)}

The validation splits of CFD, CRACKMAP and MASONRY chose the best epoch and the threshold, so their
numbers are optimistic. For photos from a camera, surface or annotator it never saw, expect what the
same network and recipe score on a source left out of their training: trained for the bundle's
{BUNDLE_MINUTES} minutes (benchmarks/studies/finetune.py, `parent_long_S`: the fine-tuning parents) and for
{MINUTES} (benchmarks/studies/architecture.py). t is each run's own threshold. DEEPCRACK is no
fine-tuning source, so its {BUNDLE_MINUTES}-minute run was not trained.

{chr(10).join(lodo)}

{half_precision_text(line)}

Speed: predict.py on one 4000x3000 photo, start-up included, takes {speed['bundled']['median_s']:.1f} s on this
2-core CPU against {speed['UNet:32']['median_s']:.1f} s for the width-32 UNet (benchmarks/bench_predict.py).

{policy_section(policy)}{failure_section(used, FAILURES)}"""
    (folder / "README.md").write_text(text)
    print(f"wrote {folder / 'README.md'} and {folder / 'failure.jpg'}")


# one test set per held-out group for failure.jpg (the drone's middle zoom for its road)
TEN_FAILURE_TESTS = ["DEEPCRACK_TEST", "CFD", "CRACKMAP", "MASONRY", "UAVCRACKX8", "GAPS384", "AIGLERN", "SHADOWCRACK"]
# what the ten-source bundle's failure.jpg shows, in words: written by a person who looked at it
TEN_FAILURES = """From the top: on coarse asphalt a thin labelled crack is drawn several times wider
than its annotator drew it (DEEPCRACK_TEST); faint hairline branches on fine asphalt are missed or
found beside the line (CFD); on coarse asphalt the crack is found along its centre but thinner
than the full crack body its labels draw (CRACKMAP); the mortar joints of a brick wall are marked
as crack (MASONRY); on a drone's road photo only the strongest cracks are found and the faint
network around them is missed (UAVCRACKX8); a crack along a tile's edge, barely visible, is missed
(GAPS384); on coarse asphalt a network of fine cracks is found only along its clearest lines, its
faint branches missed (AIGLERN); a light, sealed crack below a shadow's edge is missed while dark
streaks in the asphalt are marked (SHADOWCRACK). Expect the same on your photos: joints and
dark streaks read as cracks, faint networks and branches are missed, and the widths
follow the annotation style of the sources it learned from most."""


# what the leave-one-group-out table cannot say: written by a person from docs/sources.md's reading
TEN_LOO_CAVEAT = """On brick walls (MASONRY) this bundle's recipe loses to the four-source recipe it
replaced, beyond the seed spread: without MASONRY, six of its seven training groups are roads or
asphalt, and DeepCrack, the only other concrete, gets one seventh of the crops. The joints between
bricks are its most common false crack (below): on walls, fine-tune it on a few of your photos."""


def write_ten_card(line: dict, folder: Path) -> None:
    """The card of the bundle trained on the ten sources (benchmarks/general_model.py's general_ten_bundle
    line: the run, its export, the auto policy adopted, the bundle scored under it)."""
    import sys

    import sourcegroups
    from rundir import read_split
    if TEN_FAILURES is None:
        used = failure_picture(Path(line["data_dir"]), folder / "failure.jpg", TEN_FAILURE_TESTS)
        sys.exit(f"look at {folder / 'failure.jpg'} ({', '.join(used)}) and describe it in modelcard.TEN_FAILURES")
    config, speed = line["bundle_config"], line["speed"]
    tests = [t for t in ["DEEPCRACK_TEST", *SOURCE_TERMS] if t in line["bundle_metrics"]]
    used = failure_picture(Path(line["data_dir"]), folder / "failure.jpg", TEN_FAILURE_TESTS)
    run = line["run"]
    text = f"""# crackseg-general

The crack model that ships with crackseg: `python predict.py photo.jpg` uses it when no `--name`
is given. {config['arch']} with base width {config['base_width']} ({parameter_count(config, folder) / 1e6:.2f} M
parameters), one channel of logits, a sigmoid, and a threshold. By default (`--scale auto`, config.json's
"scale") each photo is shown to the network at the factor the auto rule chooses for it (docs/zoom.md),
with the threshold **{line['threshold']:.2f}**, chosen under that policy as the t that maximises the mean
2 px F over its training sources' validation splits; `--scale 1` shows the photo as it is, with the
threshold {line['thresholds_by_scale']['1']:.2f} the run chose. Input: RGB photos of any size, min-max scaled per
image; images larger than 1024 px are predicted in tiles.

## Training data and terms

{terms_table(read_split(BUNDLE))}

## How it was made

    {line['commands'][0].replace(line['data_dir'], '../shared/data')}

at commit {line['commit']}: {line['steps']} optimizer steps ({line['training']['epochs']} epochs, best epoch
{line['training']['best_epoch']}) on a 2-core CPU, exported as `model.pt` (the model state in half precision)
and `config.json` (its settings and sha256). `python benchmarks/general_model.py --list` prints every command
that made this bundle and its numbers; `python benchmarks/general_model.py --card` writes this card.

## Numbers

`python evaluate.py --name crackseg-general --test {' '.join(tests)} --data-dir ../shared/data`
reproduces this table (bf16 autocast on a CPU with native bf16, as evaluate.py chooses; fp32 elsewhere),
under the default `--scale auto`:

{metrics_table(line['bundle_metrics'], tests)}

Only DEEPCRACK_TEST was never trained on; the other rows are the validation splits that chose the
best epoch and the threshold, so they are optimistic. For photos from a camera, surface or
annotator it never saw, expect what the same recipe scores on a group of sources left out of its
training (benchmarks/tensources.py, {sourcegroups.STEPS} steps each; 2 px ODS F, the drone's three zooms one
group), against today's recipe on the four old sources and the earlier bundle, which never saw the
four new groups:

{sourcegroups.render_logo(sourcegroups.RECORD)}

{TEN_LOO_CAVEAT}

{half_precision_text(line)}

Speed: predict.py on one 4000x3000 photo, start-up included, takes {speed[run]['median_s']:.1f} s on this
2-core CPU against {speed['bundled']['median_s']:.1f} s for the bundle it replaced and
{speed['UNet:32']['median_s']:.1f} s for the width-32 UNet (benchmarks/bench_predict.py --runs {run}).

{failure_section(used, TEN_FAILURES)}"""
    (folder / "README.md").write_text(text)
    print(f"wrote {folder / 'README.md'} and {folder / 'failure.jpg'}")
