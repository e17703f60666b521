"""The experiment scripts' own logic: what they train on and score on must be what they say."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "studies"))

import finetune  # noqa: E402


def test_finetune_pools_are_seeded_nested_and_disjoint_from_the_scored_images(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for source in finetune.SOURCES:
        for kind, ext in (("images", ".jpg"), ("masks", ".png")):
            (data / source / kind).mkdir(parents=True)
            for i in range(30):
                (data / source / kind / f"img {i:02d}{ext}").write_bytes(b"x")
    monkeypatch.setattr(finetune, "LINKS", tmp_path / "links")
    finetune.link_subsets(data)
    finetune.link_subsets(data)                       # a second call (another session) changes nothing

    def stems(name, kind="images"):
        return {p.stem for p in (tmp_path / "links" / name / kind).iterdir()}
    for source in finetune.SOURCES:
        pools = []
        for draw in finetune.DRAWS:
            k5, k20, rest = (stems(finetune.subset(source, draw, k)) for k in (5, 20, None))
            assert len(k5) == 5 and len(k20) == 20 and k5 < k20
            assert not k20 & rest and len(k20 | rest) == 30
            assert stems(finetune.subset(source, draw, 5), "masks") == k5     # every image has its mask
            link = next((tmp_path / "links" / finetune.subset(source, draw, 5) / "images").iterdir())
            assert link.is_symlink() and link.resolve().parent == data / source / "images"
            pools.append(k20)
        assert pools[0] != pools[1]                   # two draws, two pools
    listed = [f"s{i}" for i in range(30)]
    assert finetune.draw_pool(listed, 0) == finetune.draw_pool(listed[::-1], 0)   # listing order does not matter


def finetune_line(arm, source, draw, ods, at_t):
    name = finetune.arm_name(arm, source, draw, max(finetune.SHOTS))
    result = {"tolerance": 2, "ods": {"f1": ods}, "at_run_threshold": {"f1": at_t}}
    return name, {"experiment": name, "metrics": {"results": [result]}}


def test_finetune_verdict_needs_every_draw_to_win_by_more_than_any_arm_moves_between_draws():
    scores = {  # source: arm: per draw (2 px ODS F, F at t)
        "CFD": {"none": [(.76, .75), (.70, .70)], "scratch": [(.85, .84), (.81, .80)],
                "finetune": [(.90, .89), (.87, .86)]},          # gains >= .05, spreads <= .03: yes
        "CRACKMAP": {"none": [(.83, .76), (.83, .76)], "scratch": [(.88, .87), (.80, .79)],
                     "finetune": [(.90, .89), (.87, .86)]},     # beats scratch by .02 and .07, spread .04: no
    }
    done = dict(finetune_line(arm, source, draw, *pair)
                for source, arms in scores.items() for arm, pairs in arms.items() for draw, pair in enumerate(pairs))
    rows = {tuple(c.strip() for c in row.strip("|").split("|")[:2]): row for row in finetune.verdict_rows(done)}
    assert rows[("CFD", "ODS F")].rstrip(" |").endswith("yes")
    assert "+0.050, +0.060" in rows[("CFD", "ODS F")]           # finetune - scratch per draw
    assert rows[("CRACKMAP", "ODS F")].rstrip(" |").endswith("no")
    assert rows[("CRACKMAP", "F at t")].rstrip(" |").endswith("no")
    assert "not all draws run" in rows[("MASONRY", "-")]


def test_finetune_long_verdict_judges_the_long_parent_arms_against_the_shared_scratch_arms():
    scores = {"none_long": [(.80, .78), (.79, .77)], "scratch": [(.85, .84), (.84, .83)],
              "finetune_long": [(.90, .89), (.89, .88)],
              "finetune": [(.86, .85), (.85, .84)]}    # the 25-minute arms would lose: must not be used
    done = dict(finetune_line(arm, "CFD", draw, *pair) for arm, pairs in scores.items()
                for draw, pair in enumerate(pairs))
    long_rows = {tuple(c.strip() for c in row.strip("|").split("|")[:2]): row
                 for row in finetune.verdict_rows(done, finetune.LONG)}
    assert "+0.050, +0.050" in long_rows[("CFD", "ODS F")]       # finetune_long - scratch per draw
    assert long_rows[("CFD", "ODS F")].rstrip(" |").endswith("yes")
    assert "not all draws run" in finetune.verdict_rows(done)[2]  # no 25-minute "none" arm was given


def test_finetune_variant_verdict_judges_the_variant_arms_and_shows_only_where_they_ran():
    variant = next(iter(finetune.LONG_VARIANTS))
    scores = {"none_long": [(.80, .78), (.79, .77)], "scratch": [(.85, .84), (.84, .83)],
              "finetune_long": [(.85, .84), (.845, .835)],           # the default recipe: no
              variant + finetune.LONG: [(.90, .89), (.89, .88)]}      # the variant: +0.05 per draw, yes
    done = dict(finetune_line(arm, "CFD", draw, *pair) for arm, pairs in scores.items()
                for draw, pair in enumerate(pairs))
    default = {row.split("|")[2].strip(): row for row in finetune.verdict_rows(done, finetune.LONG)[2:]}
    assert default["ODS F"].rstrip(" |").endswith("no")
    rows = finetune.verdict_rows(done, finetune.LONG, variant)[2:]
    assert [row.split("|")[1].strip() for row in rows] == ["CFD", "CFD"]   # CRACKMAP, MASONRY not run: no rows
    assert "+0.050, +0.050" in rows[0] and rows[0].rstrip(" |").endswith("yes")
    assert " ".join(finetune.LONG_VARIANTS[variant]) in rows[0]
    assert finetune.commands(finetune.arm_name(variant + finetune.LONG, "CFD", 0, 20), None)[0][-2:] == \
        finetune.LONG_VARIANTS[variant]


def generalization_line(name, scores):
    """A finished generalization.py experiment: {test: {tolerance: (ODS F, F at t)}}."""
    metrics = {test: {"results": [{"tolerance": tol, "ods": {"f1": ods}, "at_run_threshold": {"f1": at_t}}
                                  for tol, (ods, at_t) in by_tol.items()]} for test, by_tol in scores.items()}
    return name, {"experiment": name, "metrics": metrics}


def test_generalization_verdicts_judge_gains_against_the_largest_seed_spread():
    import generalization as g
    tests = ["DEEPCRACK_TEST", "CFD", "CRACKMAP", "MASONRY"]
    done = dict([
        generalization_line("base_dc", {t: {2: (.50, .40)} for t in tests} | {"DEEPCRACK_TEST": {0: (.80, .78),
                                                                                               2: (.88, .86)}}),
        generalization_line("base_dc_seed1", {t: {2: (.54, .40)} for t in tests} | {"DEEPCRACK_TEST": {
            0: (.82, .80), 2: (.89, .87)}}),                 # seed spread .04 on the held-out sets
        generalization_line("base_cfd", {"DEEPCRACK_TEST": {2: (.60, .50)}}),
        generalization_line("lodo_DEEPCRACK", {"DEEPCRACK_TEST": {2: (.80, .79)}}),   # +.20, gap .01
        generalization_line("lodo_CFD", {"CFD": {2: (.70, .60)}}),                    # +.18, gap .10
        generalization_line("lodo_CRACKMAP", {"CRACKMAP": {2: (.557, .54)}}),         # +.037: within .04
        generalization_line("lodo_MASONRY", {"MASONRY": {2: (.555, .55)}}),           # +.035
        generalization_line("all4", {"DEEPCRACK_TEST": {0: (.79, .77), 2: (.86, .85)}}),
        generalization_line("all4_seed1", {"DEEPCRACK_TEST": {0: (.81, .80), 2: (.87, .86)}}),
    ])
    assert max(g.seed_gaps(done, g.SEED_PAIRS)) == pytest.approx(.04)
    rows = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")]
            for row in g.lodo_verdict_rows(done) if row.startswith("| ")}
    assert rows["DEEPCRACK"][1] == "0.600 / 0.500" and rows["DEEPCRACK"][4:6] == ["+0.200", "yes"]
    assert rows["CFD"][1] == "0.520 / 0.400 (2 seeds)" and rows["CFD"][4:] == ["+0.180", "yes", "0.040", "0.100 no"]
    assert rows["DEEPCRACK"][6] == "0.010"                      # the seeds differ by .01 on DEEPCRACK_TEST
    assert rows["CRACKMAP"][4:6] == ["+0.037", "no"] and rows["MASONRY"][5] == "no"
    assert rows["mean"][4] == "+0.113" and rows["mean"][5].startswith("yes")
    domain = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")]
              for row in g.in_domain_rows(done)[2:]}
    # 0 px: means .81 vs .80, spreads .02/.02 -> within; 2 px: .865 vs .885 (-.020), spreads .01/.01 -> no
    assert domain["0 px"][3:] == ["-0.010", "0.020", "yes"]
    assert domain["2 px"][3:] == ["-0.020", "0.010", "no"]


def test_folder_threshold_rules_split_two_modes_and_score_each_image_at_its_own_threshold():
    import folder_thresholds as ft
    import numpy as np
    hist = np.zeros(256)
    hist[[10, 12]], hist[[200, 230]] = 500, 40                 # background near 0.04, cracks near 0.8-0.9
    assert 12 <= ft.otsu_level(hist, ft.LOGITS) < 200
    assert 12 <= ft.otsu_level(hist, ft.LEVELS) < 200
    gt = np.zeros((8, 8), bool)
    gt[:, 3] = True
    faint = np.where(gt, 26, 3).astype(np.uint8)                # cracks at p = 0.10, background 0.01
    strong = np.where(gt, 230, 128).astype(np.uint8)            # cracks at 0.90, background 0.50
    counts = np.stack([ft.metrics.image_counts(m, gt) for m in (faint, strong)])
    # faint at t = 0.05 and strong at t = 0.60 both find exactly their 8 crack pixels: F = 1
    assert ft.f1_at(counts, [ft.grid_index(.05), ft.grid_index(.60)]) == pytest.approx(1.0)
    # one threshold of 0.05 for both: strong marks all 64 pixels, so P = 16/72, R = 1
    assert ft.f1_at(counts, [ft.grid_index(.05)] * 2) == pytest.approx(2 * (16 / 72) / (16 / 72 + 1))
    per_image = ft.rules([faint, strong], stored=.5)["image Otsu on logits"]
    assert ft.f1_at(counts, per_image) == pytest.approx(1.0)
    big_gt = np.zeros((64, 256), bool)
    big_gt[:, 124] = True                                       # tiles 1 and 2 (x 64-191) lie within 8 px of it
    big = np.where(big_gt, 255, 0).astype(np.uint8)
    big[5, 5] = 200                                             # one false crack pixel in tile 0
    tiles = ft.crack_free_tiles([big], [big_gt], size=64)
    assert len(tiles) == 2 and not any(t.max() == 255 for t in tiles)
    assert ft.marked_share(tiles, [ft.grid_index(.5)] * 2) == pytest.approx(1 / (2 * 64 * 64))


def test_labelled_threshold_is_chosen_on_the_drawn_photos_and_scored_on_the_others():
    import folder_thresholds as ft
    import numpy as np
    gt = np.zeros((8, 8), bool)
    gt[:, 3] = True
    faint = np.where(gt, 26, 3).astype(np.uint8)                # F = 1 only for thresholds in [0.02, 0.10]
    strong = np.where(gt, 230, 128).astype(np.uint8)            # F = 1 only for thresholds in [0.51, 0.90]
    counts = np.stack([ft.metrics.image_counts(m, gt) for m in (faint, strong)])
    thresholds, losses = ft.labelled_threshold_losses(counts, k=1, draws=12, seed=3)
    # labelled faint: the highest best threshold, 0.10, marks all 64 strong pixels (F = 2P/(P+1), P = 1/8);
    # labelled strong: 0.90 marks no faint pixel (F = 0); the other photo alone scores 1 at its best
    faint_drawn = np.isclose(thresholds, 0.10)
    assert set(np.round(thresholds, 2)) == {0.10, 0.90}
    assert np.allclose(losses[faint_drawn], 1 - 2 * (1 / 8) / (1 / 8 + 1))
    assert np.allclose(losses[~faint_drawn], 1.0)
    again = ft.labelled_threshold_losses(counts, k=1, draws=12, seed=3)
    assert np.array_equal(again[0], thresholds) and np.array_equal(again[1], losses)
    same = np.stack([counts[0]] * 5)
    assert np.all(ft.labelled_threshold_losses(same, k=2, draws=4)[1] == 0)


def test_bench_predict_random_networks_mark_about_the_intended_share_of_the_photo(tmp_path, monkeypatch):
    """Speed on random weights means something only if their masks are as sparse as a trained model's:
    a network marking a quarter of the photo makes the crack measurement, not the network, the cost."""
    import bench_predict
    import cv2
    import torch

    from dataset import Intensity, preprocess
    from engine import make_engine
    from inference import load_runs, predict_probability
    monkeypatch.setattr(bench_predict, "HEIGHT", 480)
    monkeypatch.setattr(bench_predict, "WIDTH", 640)
    photo = tmp_path / "photo.jpg"
    bench_predict.write_photo(photo)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    name = bench_predict.write_random_run(tmp_path / "models", "UNet:8", photo)
    engine = make_engine("cpu")
    model, _ = load_runs(name, engine)
    image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(preprocess(image, Intensity(), "photo").transpose(2, 0, 1).copy())[None]
    crack = float((predict_probability(model, x, engine) > 0.5).float().mean())
    assert 0.25 * bench_predict.CRACK_FRACTION < crack < 4 * bench_predict.CRACK_FRACTION


def test_model_card_estimates_unseen_photos_at_both_budgets_and_says_which_runs_are_missing():
    import modelcard
    long = {"CFD": generalization_line("parent_long_CFD", {"CFD": {0: (.5, .5), 2: (.804, .784)}})[1]}
    short = {source: generalization_line(f"unet_w4_{source}", {test: {2: (.7, .6)}})[1]
             for source, test in modelcard.TEST.items()}
    rows = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")[1:]]
            for row in modelcard.unseen_photo_rows(long, short)[2:]}
    assert rows["CFD"] == ["0.804", "0.784", "0.700", "0.600"]             # the 2 px scores, longer run first
    assert rows["MASONRY"] == ["not run", "not run", "0.700", "0.600"]
    assert set(rows) == set(modelcard.TEST.values())


def test_bundle_table_scores_the_bundle_then_each_trained_leave_one_out_run(tmp_path, monkeypatch):
    import json

    import general_model
    bundle = generalization_line("x", {"DEEPCRACK_TEST": {0: (.84, .83), 2: (.92, .91)}})[1]["metrics"]
    bundle["DEEPCRACK_TEST"]["images"] = 237
    record = tmp_path / "general_model.jsonl"
    record.write_text(json.dumps({"experiment": "general", "bundle_metrics": bundle}) + "\n")
    short = {s: generalization_line("a", {t: {0: (.5, .4), 2: (.7, .6)}})[1]
             for s, t in general_model.TEST.items()}
    long = {s: None for s in short} | {"CFD": generalization_line("b", {"CFD": {0: (.6, .5), 2: (.8, .79)}})[1]}
    monkeypatch.setattr(general_model, "shipped_lodo_lines", lambda: short)
    monkeypatch.setattr(general_model, "long_lodo_lines", lambda: long)
    rows = general_model.render_table(record).splitlines()[2:]
    assert rows[0] == "| DEEPCRACK_TEST (237 images, never trained on) | 0.840 / 0.830 | 0.920 / 0.910 |"
    assert len(rows) == 1 + 4 + 1                                   # MASONRY etc. at 120 min: not trained, left out
    assert rows[-1] == (f"| held-out CFD: trained without CFD, {general_model.BUNDLE_MINUTES} min | "
                        "0.600 / 0.500 | 0.800 / 0.790 |")


@pytest.mark.parametrize("dc_gain, lodo_gain, replaced", [(0.02, 0.03, True), (0.02, 0.01, False),
                                                          (0.005, 0.03, False), (0.02, None, False)])
def test_the_bundle_is_replaced_only_when_both_gains_pass_the_seed_spread(tmp_path, monkeypatch, dc_gain, lodo_gain,
                                                                        replaced):
    import json

    import general_model
    metrics = generalization_line("x", {"DEEPCRACK_TEST": {0: (.8, .8), 2: (.90 + dc_gain, .9)}})[1]["metrics"]
    scored = tmp_path / general_model.SECOND_RUN / "eval" / "DEEPCRACK_TEST"
    scored.mkdir(parents=True)
    (scored / "metrics.json").write_text(json.dumps(metrics["DEEPCRACK_TEST"]))
    monkeypatch.setattr(general_model, "MODELS", tmp_path)
    monkeypatch.setattr(general_model, "bundle_deepcrack", lambda: 0.90)
    monkeypatch.setattr(general_model, "lodo_means", lambda: (0.80, None if lodo_gain is None else 0.80 + lodo_gain))
    monkeypatch.setattr(general_model, "seed_spreads", lambda: {"DEEPCRACK_TEST": 0.012, "mean leave-one-out": 0.019})
    wins, why = general_model.replacement_verdict(general_model.SECOND_RUN)
    assert wins == replaced, why
    assert "seed spread 0.012" in why and "seed spread 0.019" in why
    assert why.startswith(general_model.SECOND_RUN)


def test_the_second_bundle_trains_the_chosen_recipe_as_the_first_was_and_is_scored_under_auto():
    import argparse

    import general_model
    import zoomrecord
    args = argparse.Namespace(data_dir="DATA", replace=False)
    first_train, first_score = general_model.commands(args)[:2]
    second_train, second_score = general_model.second_commands(args)
    assert second_train[:second_train.index("--name")] == first_train[:first_train.index("--name")]
    extra = second_train[len(first_train):]
    assert second_train[:len(first_train)] == [*first_train[:first_train.index("--name") + 1], general_model.SECOND_RUN,
                                              *first_train[first_train.index("--name") + 2:]]
    assert extra == general_model.UPSAMPLING + zoomrecord.ARMS[zoomrecord.CHOSEN] and extra
    assert second_score[-2:] == ["--scale", "auto"] and general_model.SECOND_RUN in second_score
    export = general_model.second_export_commands(args)[0]
    assert "--replace" in export and export[-2:] == ["--run", general_model.SECOND_RUN]


def test_seed_spreads_come_from_the_recorded_seed_pairs():
    import general_model
    spreads = general_model.seed_spreads()
    assert 0 < spreads["DEEPCRACK_TEST"] < 0.05 and 0 < spreads["mean leave-one-out"] < 0.05


def zoom_arrays(good: list[float]) -> dict:
    """One zoom, one image per entry of `good`: that factor's map is perfect (and surest), factor 1 or
    1/2 (whichever is not good) finds half the crack; the other factors were not allowed."""
    import numpy as np

    import scales
    import zoomrecord
    factors, k = list(scales.FACTORS), len(zoomrecord.GRID) + 1
    counts = np.zeros((1, len(good), len(factors) + 1, k, 4), np.int64)
    features = np.zeros((1, len(good), len(factors), len(zoomrecord.FEATURE_KEYS)), np.float32)
    valid = np.zeros((1, len(good), len(factors) + 1), bool)
    for n, best in enumerate(good):
        for f in (1.0, 0.5):
            i = factors.index(f)
            counts[0, n, i] = (10, 10, 10, 10) if f == best else (5, 10, 5, 10)
            found = {"fraction": 0.01, "pieces": 1, "length": 100.0, "median_width": 5.0, "mean_p": 0.9,
                     "sureness": 0.9 if f == best else 0.5}
            features[0, n, i] = [found[key] for key in zoomrecord.FEATURE_KEYS]
            valid[0, n, i] = True
        counts[0, n, -1], valid[0, n, -1] = (7, 10, 7, 10), True   # fuse
    return {"counts": counts, "features": features, "valid": valid, "zooms": np.array([1.0]),
            "live": np.array([good]), "short_side": np.full((1, len(good)), scales.SHRINK_MIN_SIDE)}


def test_zoom_replay_scores_each_photo_at_the_factor_the_rule_chose(monkeypatch):
    import scales
    monkeypatch.setattr(scales, "RULE", scales.Rule())   # the rule these records were made to test
    import scales
    import zoomrecord
    result = zoomrecord.replay(zoom_arrays([0.5, 1.0]), scales.choose)[1.0]
    assert result["fixed_1"] == pytest.approx((0.75, 0.75))        # 15 of 20 crack pixels each way
    assert result["oracle"][1:] == pytest.approx((0.75, 0.75))
    assert result["auto"] == pytest.approx((1.0, 1.0))             # each photo's perfect map
    assert result["fuse"][0] == pytest.approx(0.7)
    assert result["replayed_as_live"] == 1.0
    never_shrink = zoomrecord.replay(zoom_arrays([0.5, 1.0]), lambda found, permitted: 1.0)[1.0]
    assert never_shrink["auto"] == never_shrink["fixed_1"]


def test_zoom_replay_fuses_the_chosen_map_with_its_neighbours_where_the_record_keeps_every_window(monkeypatch):
    import scales
    monkeypatch.setattr(scales, "RULE", scales.Rule())   # the rule these records were made to test
    import numpy as np

    import scales
    import zoomrecord
    arrays = zoom_arrays([0.5, 1.0])
    n, hits = len(scales.FACTORS), (2, 3, 5, 7, 11, 13, 17)   # crack pixels found of 20, per window
    windows = np.zeros(arrays["counts"].shape[:2] + (len(zoomrecord.WINDOWS),) + arrays["counts"].shape[3:], np.int64)
    for j, hit in enumerate(hits):
        windows[:, :, j] = (hit, 20, hit, 20)
    arrays["counts"] = np.concatenate([arrays["counts"][:, :, :n], windows], axis=2)
    result = zoomrecord.replay(arrays, scales.choose)[1.0]
    # the photo that chose 1/2: down (1/2, 1/4) is window 3, centre (1, 1/2, 1/4) window 0; the one
    # that chose 1: down (1, 1/2) window 2, centre (2, 1, 1/2) window 5
    assert result["auto_down"][0] == pytest.approx((hits[3] + hits[2]) / 40)
    assert result["auto_centre"][0] == pytest.approx((hits[0] + hits[5]) / 40)
    assert "auto_down" not in zoomrecord.replay(zoom_arrays([0.5, 1.0]), scales.choose)[1.0]
    assert zoomrecord.fused_window(0.125, zoomrecord.NEIGHBOURS["down"]) is None   # nothing coarser
    assert zoomrecord.WINDOWS[zoomrecord.fused_window(2.0, zoomrecord.NEIGHBOURS["centre"])] == (2.0, 1.0)


def test_zoom_dataset_f_is_the_f_of_summed_counts():
    import numpy as np

    import zoomrecord
    counts = np.array([[3, 4, 3, 6]] * len(zoomrecord.GRID) + [[1, 2, 1, 3]])   # P 3/4, R 1/2; at t: P 1/2, R 1/3
    ods, at_t = zoomrecord.dataset_f(counts)
    assert ods == pytest.approx(2 * 0.75 * 0.5 / 1.25) and at_t == pytest.approx(2 * 0.5 / 3 / (0.5 + 1 / 3))


def summary(zoom, record) -> str:
    done = zoom.read_record(record)
    return zoom.render_summary(zoom.recipe_groups(done, record), done)


def test_zoom_summary_averages_a_recipe_over_its_sources_and_names_the_worst(tmp_path, monkeypatch):
    import scales
    monkeypatch.setattr(scales, "RULE", scales.Rule())   # the rule these records were made to test
    import json

    import zoom
    import zoomrecord
    record = tmp_path / "zoom.jsonl"
    (tmp_path / "zoom").mkdir()
    lines = []
    for source, good in (("CFD", [0.5, 1.0]), ("MASONRY", [1.0, 1.0])):
        zoomrecord.save_arrays(tmp_path / "zoom" / f"r_{source}.json.gz", zoom_arrays(good))
        lines.append(json.dumps({"experiment": f"r_{source}", "attachments": [f"zoom/r_{source}.json.gz"]}))
    record.write_text("\n".join(lines) + "\n")
    row = summary(zoom, record).splitlines()[2].split(" | ")
    # CFD: fixed 1 0.75, auto 1.0, best 0.75; MASONRY: fixed 1 = auto = best = 1.0
    assert row[:4] == ["| r", "2", "1", "0.875"] and row[4:6] == ["1.000", "0.875"]
    assert row[6] == "-0.125 / 0.000" and row[7] == "+0.125 / +0.000"
    assert "Seed spread" not in summary(zoom, record)


def test_zoom_seed_spread_is_the_largest_change_over_the_sources_both_seeds_held_out(tmp_path, monkeypatch):
    import scales
    monkeypatch.setattr(scales, "RULE", scales.Rule())   # the rule these records were made to test
    import json

    import zoom
    import zoomrecord
    record = tmp_path / "zoom.jsonl"
    (tmp_path / "zoom").mkdir()
    lines = []
    for name, good, epochs in (("r_CFD", [0.5, 1.0], 66), ("r_MASONRY", [1.0, 1.0], 60),
                               ("r_seed1_CFD", [1.0, 1.0], 25)):
        zoomrecord.save_arrays(tmp_path / "zoom" / f"{name}.json.gz", zoom_arrays(good))
        lines.append(json.dumps({"experiment": name, "attachments": [f"zoom/{name}.json.gz"],
                                 "training": {"epochs": epochs}}))
    record.write_text("\n".join(lines) + "\n")
    table = summary(zoom, record).split("Seed spread")[1].splitlines()
    # CFD, seed 0: fixed 1 and the best factor 0.75, auto 1.0; seed 1: every map at 1 perfect (1.0)
    assert table[-1] == "| r | 1 | CFD | 66 / 25 | 1 | 0.250 | 0.000 | 0.250 |"


def test_the_scales_table_gives_auto_over_scale_one_per_photo(tmp_path):
    import json

    import bench_predict
    record = tmp_path / "bench_predict.jsonl"
    scales = {"network_s": {"real": {"1": 2.0, "auto": 3.0}}, "factor": {"real": {"1": 1.0, "auto": 0.25}},
              "peak_rss_mib_auto": 700}
    lines = [{"machine": "m", "commit": "c", "medians_s": {"x": {"torch": 1.0, "onnxruntime": 2.0}}},
             {"machine": "m", "commit": "c", "scales": scales}]
    record.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = bench_predict.render_scales(record).splitlines()[2:]
    assert rows == ["| m | c | real | 2.000 | 3.000 | 1.50 | 0.25 | 700 MiB |"]


def test_width_benchmark_matches_each_predicted_crack_to_the_label_under_it():
    import numpy as np
    import widths
    label = np.zeros((80, 120), np.uint8)
    label[18:23, 10:111] = 1                                       # a labelled crack 5 px wide, 101 long
    prob = np.zeros((80, 120), np.float32)
    prob[17:24, 10:111] = 1.0                                      # predicted 7 px wide on it
    prob[59:62, 20:101] = 0.9                                      # and a false crack 3 px wide
    found = widths.photo_cracks(prob, 0.5, label)
    assert len(found) == 2
    cracks = [dict(zip(widths.FIELDS[1:], row, strict=True)) for row in found]
    on_label, false = sorted(cracks, key=lambda c: np.isnan(c["label_width"]))
    assert on_label["label_width"] == pytest.approx(5, abs=0.3) and on_label["mask_width"] == pytest.approx(7, abs=0.3)
    assert on_label["label_length"] == pytest.approx(101, abs=1.5) and on_label["length"] == pytest.approx(101, abs=1.5)
    assert on_label["mass_width"] == pytest.approx(7, rel=0.02)   # a crisp map's mass per length is its width
    assert on_label["width_at_0.9"] == pytest.approx(7, abs=0.3) and np.isnan(false["label_width"])
    assert np.isnan(false["width_at_0.9"]) and false["width_at_0.8"] == pytest.approx(3, abs=0.3)


def test_width_metric_is_the_median_over_sources_of_each_sources_median_log_error():
    import numpy as np
    import widths
    label = np.array([2.0, 2.0, 2.0])
    per_source = {"A": {"label_width": label, "mask_width": np.array([4.0, 4.0, 1.0])},    # log 2, log 2, log 2
                  "B": {"label_width": label, "mask_width": np.array([2.0, 2.0, 3.0])},    # 0, 0, log 1.5
                  "C": {"label_width": label, "mask_width": np.array([3.0, 3.0, np.nan])}}  # log 1.5 (nan left out)
    assert widths.source_error(per_source["B"]["mask_width"], label) == 0
    assert widths.metric(per_source, ["A", "B", "C"], lambda a: a["mask_width"]) == pytest.approx(np.log(1.5))


def test_ten_source_runs_never_train_on_their_group_and_count_steps_not_minutes():
    import argparse
    import tensources
    args = argparse.Namespace(data_dir="DATA")
    for name, e in tensources.EXPERIMENTS.items():
        cmds = tensources.commands(args, name)
        tests = {t for c in cmds if c[1] == "evaluate.py" for t in c[c.index("--test") + 1:c.index("--data-dir")]}
        assert tests == set(e["tests"]) and [c[-1] for c in cmds if c[1] == "evaluate.py"] == ["auto", "1"]
        if e["train"] is None:
            assert len(cmds) == 2 and cmds[0][cmds[0].index("--name") + 1] == tensources.BUNDLE
            continue
        train = cmds[0]
        trained = set(train[train.index("--dataset") + 1:train.index("--data-dir")])
        assert not trained & tests and not trained & set(tensources.GROUP_TRAIN[e["group"]])   # DEEPCRACK_TRAIN too
        epochs, size, batch = (int(train[train.index(f) + 1]) for f in ("--epochs", "--epoch-size", "--batch-size"))
        assert epochs * size // batch == tensources.STEPS
    balanced = tensources.commands(args, "balanced_MASONRY")[0]
    assert balanced[-3:] == ["group", "--groups", "UAVCRACKX=UAVCRACKX4,UAVCRACKX8,UAVCRACKX16"]
    assert tensources.commands(args, "balanced_UAVCRACKX")[0][-2:] == ["--sampling", "group"]
    surface = tensources.commands(args, "surface_UAVCRACKX")[0]   # DeepCrack and MASONRY stay groups of their own
    assert surface[-2:] == ["--groups", "ROAD=CFD,CRACKMAP,GAPS384,AIGLERN,SHADOWCRACK"]
    deepcrack = tensources.commands(args, "old_DEEPCRACK")[0]
    assert "DEEPCRACK_TRAIN" not in deepcrack and "UAVCRACKX4" not in deepcrack   # today's four sources only


def test_the_ten_source_bundle_trains_on_every_group_for_its_steps_and_is_scored_and_timed_under_auto(monkeypatch):
    import argparse

    import general_model
    import sourcegroups
    monkeypatch.setattr(sourcegroups, "CHOSEN", "depth5")
    args = argparse.Namespace(data_dir="DATA", replace=False)
    train, auto, fixed, speed = general_model.ten_commands(args)
    trained = train[train.index("--dataset") + 1:train.index("--data-dir")]
    assert set(trained) == {d for sets in sourcegroups.GROUP_TRAIN.values() for d in sets} and len(trained) == 10
    epochs, size, batch = (int(train[train.index(f) + 1]) for f in ("--epochs", "--epoch-size", "--batch-size"))
    assert epochs * size // batch == general_model.TEN_STEPS and train[-2:] == ["--depth", "5"]
    monkeypatch.setattr(sourcegroups, "CHOSEN", "balanced")   # the drone's three zooms are one group of the ten
    assert general_model.ten_commands(args)[0][-2:] == ["--groups", "UAVCRACKX=UAVCRACKX4,UAVCRACKX8,UAVCRACKX16"]
    assert [c[-1] for c in (auto, fixed)] == ["auto", "1"] and "DEEPCRACK_TEST" in auto
    assert speed[speed.index("--runs") + 1] == general_model.TEN_RUN
    export, adopt, score, half = general_model.ten_export_commands(args)
    assert export[-3:] == ["--replace", "--run", general_model.TEN_RUN] and "--adopt-scale" in adopt
    scored = score[score.index("--test") + 1:score.index("--data-dir")]
    assert scored[0] == "DEEPCRACK_TEST" and set(scored[1:]) == set(trained) - {"DEEPCRACK_TRAIN"}


def ten_source_record(path, chosen, gain, groups):
    """sourcegroups.jsonl where the chosen recipe beats today's by `gain` on `groups` (mean over test sets),
    and the baseline's seeds differ by 0.02 on MASONRY and 0.01 on UAVCRACKX (mean spread 0.015)."""
    import json

    import runner
    import sourcegroups
    line = lambda name, value, group: {"experiment": name, "ods_2px": {  # noqa: E731
        p: {t: value for t in runner.GROUP_TEST[group]} for p in sourcegroups.POLICIES}}
    lines = [line(f"{chosen}_{g}", 0.6 + gain, g) for g in groups]
    lines += [line(sourcegroups.today_name(g), 0.6, g) for g in sourcegroups.GROUP_TRAIN]
    lines += [line("base_MASONRY", 0.62, "MASONRY"), line("base_seed1_MASONRY", 0.60, "MASONRY"),
              line("base_UAVCRACKX", 0.61, "UAVCRACKX"), line("base_seed1_UAVCRACKX", 0.60, "UAVCRACKX")]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.parametrize("gain, groups, deepcrack, slower, replaced", [
    (0.03, 8, -0.005, 1.3, True),
    (0.01, 8, -0.005, 1.3, False),      # inside the seed spread (0.015)
    (0.03, 7, -0.005, 1.3, False),      # one group not measured
    (0.03, 8, -0.02, 1.3, False),       # DEEPCRACK_TEST fell by more than its seed spread (0.012)
    (0.03, 8, 0.0, 2.5, False),         # predict.py over twice today's time
])
def test_the_ten_source_bundle_replaces_only_a_winner_on_held_out_groups_deepcrack_and_speed(
        tmp_path, monkeypatch, gain, groups, deepcrack, slower, replaced):
    import json

    import general_model
    import sourcegroups
    record = tmp_path / "sourcegroups.jsonl"
    ten_source_record(record, "depth5", gain, list(sourcegroups.GROUP_TRAIN)[:groups])
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"bundled": {"median_s": 4.0}, general_model.TEN_RUN: {"median_s": 4.0 * slower}}))
    monkeypatch.setattr(sourcegroups, "CHOSEN", "depth5")
    monkeypatch.setattr(sourcegroups, "RECORD", record)
    monkeypatch.setattr(sourcegroups, "policy_scores", lambda run, tests: {"auto": {"DEEPCRACK_TEST": 0.9 + deepcrack}})
    monkeypatch.setattr(general_model, "bundle_deepcrack", lambda: 0.9)
    monkeypatch.setattr(general_model, "seed_spreads", lambda: {"DEEPCRACK_TEST": 0.012})
    monkeypatch.setattr(general_model, "TEN_SPEED_JSON", speed)
    wins, why = general_model.verdict(general_model.TEN_RUN)
    assert wins == replaced, why
    assert ("seed spread 0.015" in why) == (groups == 8) and f"{slower:.2f}x" in why


def test_the_leave_one_group_out_summary_names_only_old_groups_lost_beyond_the_seed_spread():
    import sourcegroups
    gains = {"DEEPCRACK": -0.010, "MASONRY": -0.075, "CFD": 0.12, "GAPS384": 0.08, "AIGLERN": 0.06}
    text = sourcegroups.logo_summary(gains, {"mean": 0.015})
    assert "5 held-out groups measured: +0.035" in text and "seed spread: 0.015" in text
    assert "+0.070 mean (2 of 4 groups)" in text
    assert text.endswith("(below it beyond the spread: MASONRY).")   # DEEPCRACK's -0.010 is inside it
    assert "beyond" not in sourcegroups.logo_summary(gains, None) and "spread" not in sourcegroups.logo_summary(
        gains, None)


def test_adopting_a_scale_reads_the_curves_from_the_folder_evaluate_names_for_it(tmp_path, monkeypatch):
    import argparse
    import json

    import evaluate
    import general_model
    import rundir
    import scales
    from metrics import _grid
    models, pretrained = tmp_path / "models", tmp_path / "pretrained"
    (pretrained / general_model.BUNDLE).mkdir(parents=True)
    config = {"dataset": ["CFD", "GAPS384"], "scale": 1.0, "threshold": 0.5, "thresholds_by_scale": {}}
    (pretrained / general_model.BUNDLE / "config.json").write_text(json.dumps(config))
    grid = _grid(None)[0]
    best = {"CFD": 0.3, "GAPS384": 0.3}

    def fake_evaluate(cmd, cwd, check):   # writes where evaluate.py would, for the scale it was asked
        scale = scales.scale_arg(cmd[cmd.index("--scale") + 1])
        asked = argparse.Namespace(tta=False, name=general_model.BUNDLE, scale=scale, checkpoint="best.pt",
                                   precision="auto")
        for d in cmd[cmd.index("--test") + 1:cmd.index("--data-dir")]:
            out = models / general_model.BUNDLE / "eval" / rundir.eval_folder(d, evaluate.other_settings(asked, 1.0))
            out.mkdir(parents=True)
            curve = [1.0 - abs(t - best[d]) for t in grid]
            (out / "metrics.json").write_text(json.dumps({"results": [{"tolerance": 2, "f1_curve": curve}]}))
    monkeypatch.setattr(general_model, "MODELS", models)
    monkeypatch.setattr(rundir, "PRETRAINED_DIR", pretrained)
    monkeypatch.setattr(general_model.subprocess, "run", fake_evaluate)
    monkeypatch.setattr(rundir, "stored_config", lambda c: c)
    general_model.adopt_scale("auto", "DATA")
    adopted = json.loads((pretrained / general_model.BUNDLE / "config.json").read_text())
    assert adopted["scale"] == "auto" and adopted["threshold"] == pytest.approx(0.3)
    assert adopted["thresholds_by_scale"] == {"1": 0.5, "auto": pytest.approx(0.3)}


def test_a_replaced_bundles_scores_move_aside_under_its_checksum(tmp_path, monkeypatch):
    import json

    import general_model
    import rundir
    models, pretrained = tmp_path / "models", tmp_path / "pretrained"
    (models / general_model.BUNDLE / "eval" / "CFD").mkdir(parents=True)
    (pretrained / general_model.BUNDLE).mkdir(parents=True)
    (pretrained / general_model.BUNDLE / "config.json").write_text(json.dumps({"sha256": "abcdef0123456789"}))
    monkeypatch.setattr(general_model, "MODELS", models)
    monkeypatch.setattr(rundir, "PRETRAINED_DIR", pretrained)
    general_model.keep_old_scores()
    assert (models / general_model.BUNDLE / "eval_abcdef012345" / "CFD").is_dir()
    assert not (models / general_model.BUNDLE / "eval").exists()
    (models / general_model.BUNDLE / "eval" / "GAPS384").mkdir(parents=True)   # a second export of the same bundle
    general_model.keep_old_scores()
    assert (models / general_model.BUNDLE / "eval_abcdef012345_1" / "GAPS384").is_dir()
    assert (models / general_model.BUNDLE / "eval_abcdef012345" / "CFD").is_dir()


def test_a_bundle_on_new_sources_carries_their_terms_and_counts_its_training_images():
    import modelcard
    assert modelcard.terms_line(["DEEPCRACK_TRAIN", "CFD", "CRACKMAP", "MASONRY"]) == modelcard.TERMS_LINE
    assert "GAPs384" in modelcard.terms_line(["CFD", "GAPS384"]) and "research use" in modelcard.TERMS_LINE_TEN
    table = modelcard.terms_table({"CFD": {"train": ["a", "b"], "val": ["c"]},
                                   "UAVCRACKX8": {"train": ["d"], "val": []}})
    rows = table.splitlines()
    assert rows[2] == "| CrackForest, CFD (Shi et al., IEEE T-ITS 2016) | CFD, 2 | non-commercial research use only |"
    assert rows[3].startswith("| UAV-CrackX, x8 zoom") and "UAVCRACKX8, 1 |" in rows[3]
    assert set(modelcard.SOURCE_TERMS) == {d for sets in __import__("runner").GROUP_TRAIN.values() for d in sets}


def test_timing_a_run_that_was_never_trained_names_it_and_the_fix():
    import subprocess
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_predict.py"), "--runs", "no_such_run"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "no trained run no_such_run" in result.stderr
    assert "train it first" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_ten_source_recipes_zoom_rows_check_the_auto_rule_but_never_choose_it(monkeypatch):
    import autorule
    import framezoom
    import sourcegroups
    lines = {"depth5_4000steps_CFD": {"zoom": {"source": "CFD"}}, "ten_CFD": {"zoom": {"source": "CFD"}}}
    monkeypatch.setattr(autorule, "read_record", lambda record: lines)
    monkeypatch.setattr(autorule, "load_arrays", lambda record, line: {})
    assert [name for name, _, _ in autorule.load("r")] == ["depth5_4000steps_CFD"]
    assert [name for name, _, _ in autorule.load("r", ten_sources=True)] == ["ten_CFD"]
    monkeypatch.setattr(sourcegroups, "CHOSEN", "width8")
    found = framezoom.ten_source_experiments()
    assert found["ten_UAVCRACKX4"]["run"] == "src_width8_UAVCRACKX" and found["ten_CFD"]["zooms"] == framezoom.ZOOMS
    assert all(k.startswith(autorule.TEN_PREFIX) and e["train"] is None for k, e in found.items()) and len(found) == 10


def test_a_ten_source_zoom_row_trains_its_model_only_on_a_machine_without_it(tmp_path, monkeypatch):
    """The zoom rows score tensources.py's runs; a fresh machine trains the same command first."""
    import argparse
    import framezoom
    import runner
    import tensources
    args = argparse.Namespace(data_dir="data")
    train, score = framezoom.commands(args, "ten_UAVCRACKX4")
    assert train == tensources.commands(args, f"{framezoom.sourcegroups.CHOSEN}_UAVCRACKX")[0]
    assert score[score.index("--score") + 1] == train[train.index("--name") + 1]
    monkeypatch.setattr(runner, "MODELS", tmp_path)
    assert not framezoom.already_trained(train)
    run = tmp_path / train[train.index("--name") + 1]
    run.mkdir()
    datasets = train[train.index("--dataset") + 1:train.index("--data-dir")]
    epochs, size = int(train[train.index("--epochs") + 1]), int(train[train.index("--epoch-size") + 1])
    (run / "config.json").write_text(json.dumps({"dataset": datasets, "epochs": epochs, "epoch_size": size}))
    (run / "log.csv").write_text("epoch,val_loss\n" + "".join(f"{e},0.5\n" for e in range(epochs - 1)))
    assert not framezoom.already_trained(train)      # one epoch short: cut off, trained again
    (run / "log.csv").write_text("epoch,val_loss\n" + "".join(f"{e},0.5\n" for e in range(epochs)))
    assert framezoom.already_trained(train) and not framezoom.already_trained(score)


def git_in(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


COUNT_LINES = "print(len(Path(__file__).with_name('results').joinpath('count.jsonl').read_text().splitlines()))\n"
TABLE = "<!-- table: python benchmarks/count.py -->\n1\n<!-- /table -->\n"


def record_repo(tmp_path: Path, count_py: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A committed repository with a one-line record, benchmarks/count.py (the table's command: prints the
    record's length) and `files`, as runner.commit_record finds one. Returns (repo, record)."""
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "docs").mkdir()
    shutil.copy(ROOT / "benchmarks" / "render_docs.py", repo / "benchmarks")
    record = repo / "benchmarks" / "results" / "count.jsonl"
    record.write_text('{"experiment": "a"}\n')
    (repo / "benchmarks" / "count.py").write_text(count_py)
    for name, text in files.items():
        (repo / name).write_text(text)
    git_in(repo, "init", "-q")
    git_in(repo, "config", "user.email", "t@example.com")
    git_in(repo, "config", "user.name", "t")
    git_in(repo, "add", ".")
    git_in(repo, "commit", "-qm", "start")
    return repo, record


def test_a_record_commit_carries_its_rendered_tables_and_nothing_else(tmp_path):
    """What an interrupted session leaves committed must still pass test_docs: the record and its tables go
    in one commit; prose being written and files staged by hand in the same checkout stay out of it."""
    import runner
    repo, record = record_repo(tmp_path, "from pathlib import Path\n" + COUNT_LINES,
                               {"README.md": "Intro.\n\n" + TABLE, "notes.txt": "old\n"})
    (repo / "README.md").write_text("Intro, being rewritten.\n\n" + TABLE)   # prose in progress
    (repo / "notes.txt").write_text("staged by hand\n")
    git_in(repo, "add", "notes.txt")
    runner.append_record(record, {"experiment": "b", "commit": "abc"}, commit=True)
    assert git_in(repo, "show", "HEAD:benchmarks/results/count.jsonl").count("\n") == 2
    assert git_in(repo, "show", "HEAD:README.md") == "Intro.\n\n" + TABLE.replace("\n1\n", "\n2\n")
    assert (repo / "README.md").read_text() == "Intro, being rewritten.\n\n" + TABLE.replace("\n1\n", "\n2\n")
    assert git_in(repo, "show", "HEAD:notes.txt") == "old\n"
    assert git_in(repo, "diff", "--cached", "--name-only").split() == ["notes.txt"]


def test_a_record_commit_never_undoes_a_commit_made_while_its_tables_render(tmp_path):
    """The tables take a minute to render; a commit made in the checkout meanwhile must survive the
    record's commit, which lands on top of it."""
    import runner
    commits_once = (   # the table's command commits once, as a developer would while it renders
        "import os, subprocess\nfrom pathlib import Path\n"
        "root = Path(__file__).resolve().parents[1]\n"
        "if not (root / 'done').exists():\n"
        "    (root / 'done').write_text('')\n"
        "    (root / 'notes.txt').write_text('committed meanwhile\\n')\n"
        "    env = {k: v for k, v in os.environ.items() if k != 'GIT_INDEX_FILE'}\n"
        "    subprocess.run(['git', 'commit', '-qam', 'meanwhile'], cwd=root, env=env, check=True)\n")
    repo, record = record_repo(tmp_path, commits_once + COUNT_LINES,
                               {"README.md": TABLE, "notes.txt": "old\n", ".gitignore": "done\n"})
    runner.append_record(record, {"experiment": "b", "commit": "abc"}, commit=True)
    assert git_in(repo, "log", "--format=%s").split("\n")[:2] == ["count.jsonl: b (abc)", "meanwhile"]
    assert git_in(repo, "show", "HEAD:notes.txt") == "committed meanwhile\n"
    assert git_in(repo, "show", "HEAD:benchmarks/results/count.jsonl").count("\n") == 2


def test_recorded_validation_sizes_are_rebuilt_from_the_runs_seeded_split_and_checked(tmp_path, monkeypatch):
    """Arrays recorded before validation sizes were kept get them from the photos of the run's split, as
    train.py draws it; a rebuild that disagrees with the factors the record kept valid is refused."""
    import numpy as np

    import framezoom
    import scales
    from synthetic import make_synthetic_dataset
    make_synthetic_dataset(tmp_path, "SMALL", count=10, size=(96, 128), seed=1)
    make_synthetic_dataset(tmp_path, "WIDE", count=10, size=(224, 300), seed=2)
    monkeypatch.setitem(framezoom.EXPERIMENTS, "x", {"train": ["WIDE", "SMALL"], "run": "gone"})

    def valid_of(shorts):
        return np.array([[f in scales.allowed(short, short + 50, 16) for f in scales.FACTORS] for short in shorts])
    assert framezoom.exact_validation_sides("x", {"val_valid": valid_of([224, 96])}, tmp_path).tolist() == [224, 96]
    with pytest.raises(SystemExit, match="do not match"):
        framezoom.exact_validation_sides("x", {"val_valid": valid_of([96, 224])}, tmp_path)


def test_a_zoomed_photo_keeps_its_frame_or_grows_whole():
    import framezoom
    assert framezoom.zoomed_short_side(384, 544, 4.0, frame=True) == 384
    assert framezoom.zoomed_short_side(384, 544, 4.0, frame=False) == 1536
    assert framezoom.zoomed_short_side(133, 133, 0.5, frame=True) == 66   # round() as zoom_frame sizes it
