"""The experiment scripts' own logic: what they train on and score on must be what they say."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

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
