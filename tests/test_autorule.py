"""benchmarks/autorule.py: the vectorised replay of a scale rule must choose what scales.choose chooses,
photo by photo, and each policy must be scored at the threshold its own validation maps chose."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import autorule  # noqa: E402
import scales  # noqa: E402
from zoomrecord import FEATURE_KEYS, GRID  # noqa: E402


def random_features(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of n photos' maps, with ties in sureness and lengths around MIN_LENGTH."""
    rng = np.random.default_rng(seed)
    found = np.zeros((n, len(scales.FACTORS), len(FEATURE_KEYS)), np.float32)
    found[..., FEATURE_KEYS.index("sureness")] = rng.choice([0.5, 0.6, 0.615, 0.63, 0.7, 0.9], (n, len(scales.FACTORS)))
    found[..., FEATURE_KEYS.index("length")] = rng.choice([0.0, 10.0, 16.0, 300.0], (n, len(scales.FACTORS)))
    found[..., FEATURE_KEYS.index("median_width")] = rng.choice([2.0, 4.0, 5.0, 9.0, 20.0], (n, len(scales.FACTORS)))
    valid = rng.random((n, len(scales.FACTORS))) < 0.8
    valid[:, scales.FACTORS.index(1.0)] = True   # 1 is always allowed
    return found, valid


@pytest.mark.parametrize("rule", [autorule.LEGACY, autorule.NEVER,
                                  scales.Rule(margin=0.03, legacy=False),
                                  scales.Rule(margin=0.0, width_gate=5.0, legacy=False),
                                  scales.Rule(margin=0.05, width_gate=4.0, enlarge=False, legacy=False),
                                  scales.Rule(margin=0.015, enlarge=False, fuse=True, legacy=False),
                                  scales.Rule(margin=0.02, width_gate=5.0, enlarge_gate=4.0, legacy=False),
                                  scales.Rule(margin=0.01, width_gate=8.0, gate_at=0.5, legacy=False)])
def test_the_vectorised_replay_chooses_what_scales_choose_chooses(rule):
    found, valid = random_features(3000, seed=len(autorule.describe(rule)))
    fast = autorule.choose_many(found, valid, rule)
    for n in range(len(found)):
        permitted = [f for i, f in enumerate(scales.FACTORS) if valid[n, i]]
        maps = {f: dict(zip(FEATURE_KEYS, found[n, scales.FACTORS.index(f)].tolist(), strict=True)) for f in permitted}
        assert scales.FACTORS[fast[n]] == scales.choose(maps, permitted, rule), (n, maps)


def arrays_for(val_hits: dict[float, int], test_hits: dict[float, int], sureness: dict[float, float],
               short: int = 384) -> dict:
    """One photo in the validation and test blocks (the same maps): the map at each factor finds
    `hits` of 20 crack pixels at thresholds below 0.5 and none above, with the given sureness; the
    photo's short side is `short` px."""
    k, n = len(GRID) + 1, len(scales.FACTORS)
    windows = autorule.WINDOWS

    def block(hits):
        counts = np.zeros((1, n + len(windows), k, 4), np.int64)
        for f, hit in hits.items():
            counts[0, scales.FACTORS.index(f), :k // 2] = (hit, 20, hit, 20)
        for j, window in enumerate(windows):   # fused: the mean of the two maps' hits
            counts[0, n + j, :k // 2] = np.mean([counts[0, scales.FACTORS.index(f), 0] for f in window], 0)
        return counts
    found = np.zeros((1, n, len(FEATURE_KEYS)), np.float32)
    for f, s in sureness.items():
        found[0, scales.FACTORS.index(f)] = [{"sureness": s, "length": 100.0}.get(key, 5.0) for key in FEATURE_KEYS]
    valid = np.zeros((1, n + len(windows)), bool)
    valid[0, [scales.FACTORS.index(f) for f in sureness]] = True
    valid[0, n:] = True
    return {"counts": block(test_hits)[None], "features": found[None], "valid": valid[None],
            "val_counts": block(val_hits), "val_features": found, "val_valid": valid,
            "zooms": np.array([1.0]), "windows": np.array([list(w) for w in windows]),
            "short_side": np.array([[short]]), "val_short_side": np.array([short])}


def test_each_policy_is_scored_at_its_own_validated_threshold():
    arrays = arrays_for({1.0: 10, 0.5: 20}, {1.0: 12, 0.5: 16}, {1.0: 0.5, 0.5: 0.9})
    legacy = autorule.replay(arrays, autorule.LEGACY)[1.0]
    assert legacy["auto"] == pytest.approx((0.8, 0.8)) and legacy["fixed_1"] == pytest.approx((0.6, 0.6))
    assert legacy["best"] == (0.5, pytest.approx(0.8)) and legacy["factors"][scales.FACTORS.index(0.5)] == 1
    cautious = autorule.replay(arrays, scales.Rule(margin=0.5, legacy=False))[1.0]   # 0.9 + bonus < 0.5 + 0.5
    assert cautious["auto"] == cautious["fixed_1"]
    fused = autorule.replay(arrays, scales.Rule(margin=0.0, fuse=True, legacy=False))[1.0]
    assert fused["auto"][0] == pytest.approx(0.7)   # (12 + 16) / 2 of 20


def test_the_replay_never_shrinks_a_photo_under_the_shrink_gate():
    """scales.candidates() strikes shrinking below SHRINK_MIN_SIDE; the replay of recorded maps must too,
    and a replay given another gate (the gate sweep) strikes below that one instead."""
    for short, shrunk in ((scales.SHRINK_MIN_SIDE, True), (scales.SHRINK_MIN_SIDE - 1, False)):
        arrays = arrays_for({1.0: 10, 0.5: 20}, {1.0: 12, 0.5: 16}, {1.0: 0.5, 0.5: 0.9}, short=short)
        legacy = autorule.replay(arrays, autorule.LEGACY)[1.0]
        assert (legacy["factors"][scales.FACTORS.index(0.5)] == 1) is shrunk
        assert legacy["best"][0] == 0.5   # the fixed factors stay what the network allows: 1/2 scores best
        assert (0.5 in scales.candidates(short, 2 * short)) is shrunk and 0.5 in scales.allowed(short, 2 * short)
        for gate, shrunk_there in ((short, True), (short + 1, False)):
            moved = autorule.replay(arrays, autorule.LEGACY, min_side=gate)[1.0]
            assert (moved["factors"][scales.FACTORS.index(0.5)] == 1) is shrunk_there
