"""Which auto rule: the scale rules replayed on benchmarks/framezoom.py's records, the rule chosen
leave-one-group-out (picked on the other groups, scored on the one left out), its plateau, and the
auto issue's acceptance read on the held-out picks. Shared by framezoom.py (which renders these tables)
and the tests; no entry point.

A rule (scales.Rule) is replayed from each photo's recorded features; the photo's counts are then those
of the chosen map (or of its mean with the map at 1: WINDOWS). Each policy is scored at its own
threshold, chosen as training chooses one (the best F on the GRID) on the model's validation images
predicted under that policy: fixed 1's from their maps at 1, auto's from the maps the rule chose.
"""
import itertools
import math

import numpy as np

import scales
from runner import RESULTS, read_record
from zoomrecord import FEATURE_KEYS, GROUPS, choosable, load_arrays

RECORD = RESULTS / "framezoom.jsonl"
TEN_PREFIX = "ten_"   # lines of the ten-source recipe's runs: they check the chosen rule, never choose it
# the chosen map fused with the map at 1 (a candidate do-no-harm rule): every pair of 1 and another factor
WINDOWS = ((2.0, 1.0), (1.0, 0.5), (1.0, 0.25), (1.0, 0.125))
FACTORS = np.array(scales.FACTORS)
ONE = scales.FACTORS.index(1.0)
# the family searched: today's rule, never departing, and every do-no-harm rule of this grid
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10, 0.15)
GATES = (None, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0)
GATE_AT = (1.0, 0.5)   # the map the width gate reads
LEGACY, NEVER = scales.Rule(), scales.Rule(legacy=False, margin=math.inf)


ENLARGING = ((False, None), (True, None), (True, 3.0), (True, 4.0), (True, 5.0), (True, 6.0))   # (enlarge, gate)


def family() -> list[scales.Rule]:
    grid = [scales.Rule(margin=m, width_gate=g, enlarge=e, enlarge_gate=eg, fuse=f, legacy=False, gate_at=at)
            for m, g, (e, eg), f, at in itertools.product(MARGINS, GATES, ENLARGING, (False, True), GATE_AT)
            if g is not None or at == 1.0]
    return [LEGACY, NEVER, *grid]


def describe(rule: scales.Rule) -> str:
    if rule == LEGACY:
        return "surest map (the scale issue's rule)"
    if rule.margin == math.inf:
        return "always 1"
    gate = "no gate" if rule.width_gate is None else \
        f"shrink if width at {scales.factor_name(rule.gate_at)} > {rule.width_gate:g} px"
    enlarge = "no enlarging" if not rule.enlarge else "enlarging" if rule.enlarge_gate is None else \
        f"enlarging if width at 1 <= {rule.enlarge_gate:g} px"
    return f"margin {rule.margin:.2f}, {gate}, {enlarge}" + (", fused with 1" if rule.fuse else "")


# ---------------------------------------------------------------- replaying a rule

def choose_many(features: np.ndarray, valid: np.ndarray, rule: scales.Rule) -> np.ndarray:
    """scales.choose for N photos at once: features (N, F, n), valid (N, F) -> the chosen factor's
    index into scales.FACTORS per photo (tests/test_autorule.py checks it against scales.choose)."""
    feats = features.astype(np.float64)
    sure, length = feats[..., FEATURE_KEYS.index("sureness")], feats[..., FEATURE_KEYS.index("length")]
    score = sure - scales.SHRINK_BONUS * np.log2(FACTORS)
    candidate = valid.copy()
    width_at_one = feats[:, ONE, FEATURE_KEYS.index("median_width")]
    if not rule.enlarge:
        candidate[:, FACTORS > 1] = False
    elif rule.enlarge_gate is not None:
        candidate[np.ix_(valid[:, ONE] & (width_at_one > rule.enlarge_gate), FACTORS > 1)] = False
    if rule.width_gate is not None:
        at = scales.FACTORS.index(rule.gate_at)
        widths = feats[:, :, FEATURE_KEYS.index("median_width")] / FACTORS
        gate = np.where(valid[:, at], widths[:, at], np.where(valid[:, ONE], widths[:, ONE], np.inf))
        candidate[np.ix_(gate <= rule.width_gate, FACTORS < 1)] = False
    # surest first, ties to the factor nearer 1, then to the earlier in FACTORS (a stable sort's order)
    order = np.argsort(np.abs(np.log2(FACTORS)), kind="stable")
    keyed = np.where(candidate & (length >= scales.MIN_LENGTH), score, -np.inf)[:, order]
    best = np.where(np.isfinite(keyed).any(1), order[keyed.argmax(1)], ONE)
    if rule.legacy:
        return best
    rows = np.arange(len(best))
    beats = score[rows, best] >= score[:, ONE] + rule.margin
    return np.where((best != ONE) & valid[:, ONE] & ~beats, ONE, best)


def chosen_counts(counts: np.ndarray, windows: list[tuple], chosen: np.ndarray, fuse: bool) -> np.ndarray:
    """(N, K, 4): each photo's counts of its chosen map, or of that map fused with the map at 1."""
    rows = np.arange(len(chosen))
    picked = counts[rows, chosen]
    if not fuse:
        return picked
    n = len(FACTORS)
    fused_index = {i: n + windows.index(tuple(sorted({1.0, f}, reverse=True)))
                   for i, f in enumerate(scales.FACTORS) if f != 1.0}
    out = picked.copy()
    for i, j in fused_index.items():
        out[chosen == i] = counts[chosen == i, j]
    return out


def f_curve(counts: np.ndarray) -> np.ndarray:
    """F per threshold column of summed (K, 4) counts."""
    cnt_p, sum_p, cnt_r, sum_r = (counts[:, i].astype(np.float64) for i in range(4))
    p = np.divide(cnt_p, sum_p, out=np.zeros_like(cnt_p), where=sum_p > 0)
    r = np.divide(cnt_r, sum_r, out=np.zeros_like(cnt_r), where=sum_r > 0)
    return np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)


def policy_scores(test: np.ndarray, val: np.ndarray) -> tuple[float, float]:
    """(ODS F on the GRID, F at the threshold validation chose on the GRID) of per-photo counts."""
    grid = test.shape[1] - 1   # the last column is the model's own threshold, not on the GRID
    t = int(f_curve(val.sum(0))[:grid].argmax())
    curve = f_curve(test.sum(0))
    return float(curve[:grid].max()), float(curve[t])


def windows_of(arrays: dict) -> list[tuple]:
    return [tuple(f for f in row if f > 0) for row in arrays["windows"].tolist()]


def replay(arrays: dict, rule: scales.Rule, min_side: int | None = None) -> dict[float, dict]:
    """Per zoom: fixed 1 and auto under `rule` as (ODS F, F at own threshold), the best fixed factor
    (factor, ODS F), and how many photos went to each factor. `min_side`: the shortest photo side auto
    shrinks (default scales.SHRINK_MIN_SIDE)."""
    windows = windows_of(arrays)
    val_pick = choose_many(arrays["val_features"], choosable(arrays, None, min_side), rule)
    val_auto = chosen_counts(arrays["val_counts"], windows, val_pick, rule.fuse)
    val_one = arrays["val_counts"][:, ONE]
    results = {}
    for zi, z in enumerate(arrays["zooms"].tolist()):
        counts, valid = arrays["counts"][zi], arrays["valid"][zi][:, :len(FACTORS)]
        pick = choose_many(arrays["features"][zi], choosable(arrays, zi, min_side), rule)
        fixed = {f: f_curve(counts[:, i].sum(0))[:-1].max() for i, f in enumerate(scales.FACTORS) if valid[:, i].all()}
        best = max(fixed, key=fixed.get)
        results[z] = {"fixed_1": policy_scores(counts[:, ONE], val_one),
                      "auto": policy_scores(chosen_counts(counts, windows, pick, rule.fuse), val_auto),
                      "best": (best, float(fixed[best])),
                      "factors": np.bincount(pick, minlength=len(FACTORS)).tolist()}
    return results


def load(record=RECORD, ten_sources: bool = False) -> list[tuple[str, str, dict]]:
    """(experiment, source, arrays) of the record's lines, read once for many replays: those the rule is
    chosen on, or (ten_sources) those of the ten-source recipe's held-out runs."""
    return [(name, line["zoom"]["source"], load_arrays(record, line)) for name, line in read_record(record).items()
            if name.startswith(TEN_PREFIX) == ten_sources]


def rows(loaded: list, rule: scales.Rule, min_side: int | None = None) -> list[dict]:
    """Every (experiment, zoom) replayed under `rule`."""
    return [{"experiment": name, "source": source, "group": GROUPS[source], "zoom": z, **r}
            for name, source, arrays in loaded for z, r in replay(arrays, rule, min_side).items()]


# ---------------------------------------------------------------- choosing a rule

MAX_GAP_WIDENING = 0.02   # the acceptance: ODS F - F at t no more than this wider under auto than under 1
MAX_HARM = 0.01           # ... and at native zoom, auto no more than this below fixed 1 on any source


def objective(found: list[dict], groups: set[str]) -> float:
    """The mean over `groups` of each group's mean auto 2 px ODS F over its rows (sources and zooms)."""
    by_group = {}
    for r in found:
        if r["group"] in groups:
            by_group.setdefault(r["group"], []).append(r["auto"][0])
    return float(np.mean([np.mean(v) for v in by_group.values()]))


def keeps_the_limits(found: list[dict], groups: set[str]) -> bool:
    """On `groups`: the gap between ODS F and F at t no more than MAX_GAP_WIDENING wider than under fixed 1
    at any row, and at native zoom no source more than MAX_HARM below fixed 1 (the acceptance's limits,
    asked of the groups a rule is picked on)."""
    rows_in = [r for r in found if r["group"] in groups]
    gap = max((r["auto"][0] - r["auto"][1]) - (r["fixed_1"][0] - r["fixed_1"][1]) for r in rows_in)
    harm = max(r["fixed_1"][0] - r["auto"][0] for r in rows_in if r["zoom"] == 1.0)
    return gap <= MAX_GAP_WIDENING and harm <= MAX_HARM


def pick(scored: dict[scales.Rule, list[dict]], groups: set[str]) -> scales.Rule:
    """The rule of the family with the best objective on `groups` among those keeping the limits there
    (all of them where none does; ties: the first in family())."""
    allowed = [rule for rule in scored if keeps_the_limits(scored[rule], groups)] or list(scored)
    return max(allowed, key=lambda rule: objective(scored[rule], groups))


def leave_one_group_out(scored: dict[scales.Rule, list[dict]]) -> dict[str, tuple[scales.Rule, list[dict]]]:
    """{group: (the rule picked on every other group, that rule's rows on this group)}."""
    groups = sorted({r["group"] for r in next(iter(scored.values()))})
    picked = {}
    for held in groups:
        rule = pick(scored, set(groups) - {held})
        picked[held] = (rule, [r for r in scored[rule] if r["group"] == held])
    return picked


def score_family(loaded: list) -> dict[scales.Rule, list[dict]]:
    return {rule: rows(loaded, rule) for rule in family()}


# ---------------------------------------------------------------- tables

def render_rows(found: list[dict]) -> str:
    """One line per (experiment, zoom): both policies at their own thresholds, the best fixed factor and
    where auto sent the photos."""
    out = ["| experiment | zoom | fixed 1: ODS / F at t | auto: ODS / F at t | best fixed factor: ODS | "
           "auto - fixed 1 | photos per factor (" + ", ".join(scales.factor_name(f) for f in scales.FACTORS) + ") |",
           "|---|---|---|---|---|---|---|"]
    for r in found:
        best = f"{scales.factor_name(r['best'][0])}: {r['best'][1]:.3f}"
        out.append(f"| {r['experiment']} | {r['zoom']:g} | {r['fixed_1'][0]:.3f} / {r['fixed_1'][1]:.3f} | "
                   f"{r['auto'][0]:.3f} / {r['auto'][1]:.3f} | {best} | "
                   f"{r['auto'][0] - r['fixed_1'][0]:+.3f} | {', '.join(map(str, r['factors']))} |")
    return "\n".join(out)


def render_picks(picked: dict[str, tuple]) -> str:
    out = ["| held-out group | rule picked on the other groups | auto - fixed 1 on the held-out rows: mean / worst |",
           "|---|---|---|"]
    for group, (rule, held) in picked.items():
        gains = [r["auto"][0] - r["fixed_1"][0] for r in held]
        out.append(f"| {group} | {describe(rule)} | {np.mean(gains):+.3f} / {min(gains):+.3f} |")
    return "\n".join(out)


def render_plateau(scored: dict[scales.Rule, list[dict]], chosen: scales.Rule) -> str:
    """Mean over groups of auto - fixed 1 (and the worst group's) for every margin and gate, at the
    chosen rule's enlarging and fusing."""
    groups = sorted({r["group"] for r in scored[chosen]})
    out = ["| margin | " + " | ".join("no gate" if g is None else f"gate {g:g} px" for g in GATES) + " |",
           "|---" * (len(GATES) + 1) + "|"]
    for m in MARGINS:
        cells = []
        for g in GATES:
            found = scored[scales.Rule(margin=m, width_gate=g, enlarge=chosen.enlarge, enlarge_gate=chosen.enlarge_gate,
                                       fuse=chosen.fuse, legacy=False, gate_at=chosen.gate_at if g else 1.0)]
            gains = [np.mean([r["auto"][0] - r["fixed_1"][0] for r in found if r["group"] == grp]) for grp in groups]
            cells.append(f"{np.mean(gains):+.3f} / {min(gains):+.3f}")
        out.append(f"| {m:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def acceptance(held: list[dict]) -> str:
    """The auto issue's acceptance 1-2 read on held-out rows: at native zoom, auto - fixed 1 per
    source; per zoom, the mean and worst shortfall to the best fixed factor and the widest gap change."""
    out = ["| zoom | sources | fixed 1 | auto | best fixed factor | auto short of best: mean / worst | "
           "auto - fixed 1: mean / worst (source) | ODS - F at t gap, auto - fixed 1: worst |", "|---" * 8 + "|"]
    for z in sorted({r["zoom"] for r in held}):
        at = [r for r in held if r["zoom"] == z]
        short = [r["best"][1] - r["auto"][0] for r in at]
        gain = [r["auto"][0] - r["fixed_1"][0] for r in at]
        gap = [(r["auto"][0] - r["auto"][1]) - (r["fixed_1"][0] - r["fixed_1"][1]) for r in at]
        worst = at[int(np.argmin(gain))]["source"]
        out.append(f"| {z:g} | {len(at)} | {np.mean([r['fixed_1'][0] for r in at]):.3f} | "
                   f"{np.mean([r['auto'][0] for r in at]):.3f} | {np.mean([r['best'][1] for r in at]):.3f} | "
                   f"{np.mean(short):.3f} / {max(short):.3f} | {np.mean(gain):+.3f} / {min(gain):+.3f} ({worst}) | "
                   f"{max(gap):+.3f} |")
    return "\n".join(out)


def render_tables(record=RECORD) -> str:
    """docs/zoom.md's tables of the camera's zoom, from the record alone, in parts: (1) the rules, (2)
    every row under the live rule, (3) the leave-one-group-out picks, (4) the plateau, (5-7) the
    acceptance read under the held-out picks, the live rule and the scale issue's rule."""
    loaded = load(record)
    if not loaded:
        return "(no framezoom.py rows recorded yet)"
    scored = score_family(loaded)
    scored.setdefault(scales.RULE, rows(loaded, scales.RULE))
    picked = leave_one_group_out(scored)
    everywhere = pick(scored, {r["group"] for r in scored[LEGACY]})
    held = [r for _, found in picked.values() for r in found]
    return "\n\n".join([
        f"Live rule (scales.RULE): {describe(scales.RULE)}. Picked on every group: {describe(everywhere)} "
        f"({len(family())} rules searched, {len({r['group'] for r in held})} groups).",
        render_rows(scored[scales.RULE]), render_picks(picked), render_plateau(scored, everywhere),
        acceptance(held), acceptance(scored[scales.RULE]), acceptance(scored[LEGACY])])


SHRINK_SIDES = (0, 128, 160, 192, 224, 256, 320)   # px: the shrink gates compared (0: none)


def limits_read(found: list[dict]) -> str:
    """The mean over groups, the worst harm at native zoom (source) and the widest gap change of rows."""
    native = [r for r in found if r["zoom"] == 1.0]
    worst = max(native, key=lambda r: r["fixed_1"][0] - r["auto"][0])
    gap = max((r["auto"][0] - r["auto"][1]) - (r["fixed_1"][0] - r["fixed_1"][1]) for r in found)
    return (f"{objective(found, {r['group'] for r in found}):.4f} | {worst['auto'][0] - worst['fixed_1'][0]:+.3f} "
            f"({worst['source']}) | {gap:+.3f}")


def render_shrink_gates(record=RECORD) -> str:
    """The live rule with auto's shrink gate (scales.SHRINK_MIN_SIDE) moved: on the rows the rule was
    chosen on and on the ten-source recipe's, the mean over groups and the acceptance's two limits."""
    chosen_on, ten = load(record), load(record, ten_sources=True)
    out = ["| shortest side auto shrinks (px) | rule's rows: mean over groups | worst auto - fixed 1 at native zoom "
           "| widest gap change | ten-source rows: mean over groups | worst auto - fixed 1 at native zoom | "
           "widest gap change |", "|---" * 7 + "|"]
    for side in SHRINK_SIDES:
        live = " (live)" if side == scales.SHRINK_MIN_SIDE else ""
        cells = [limits_read(rows(loaded, scales.RULE, side)) if loaded else "- | - | -" for loaded in (chosen_on, ten)]
        out.append(f"| {side or 'no gate'}{live} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def render_ten_tables(record=RECORD) -> str:
    """The ten-source recipe's held-out runs under the live rule: every row, then the auto issue's acceptance."""
    loaded = load(record, ten_sources=True)
    if not loaded:
        return "(the ten-source recipe's held-out runs are not scored yet)"
    found = rows(loaded, scales.RULE)
    return render_rows(found) + "\n\n" + acceptance(found)
