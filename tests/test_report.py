"""What an inspector gets from predict.py: one row per crack, a report that opens anywhere, output
folders of its own that never swallow the user's files, and progress over a large photo's tiles."""
import csv
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import inference
import predict
import predictor
import scales
from outputs import MARKER
from standins import Darkness, standin_config
from utils import run_cli


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """predict.py with the Darkness stand-in as every run, in tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(predictor, "load_runs", lambda name, engine, which="best.pt": (Darkness(), standin_config()))
    return tmp_path


def run(*argv) -> int:
    """predict.py's exit status, as the command line gives it."""
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: predict.main(["--name", "standin", "--device", "cpu", *map(str, argv)]))
    return stop.value.code


def flat_crack(image: np.ndarray, centre, length: float, width: int, degrees: float) -> None:
    """A dark straight crack with flat ends covering about length x width pixels, rising at `degrees`."""
    t = math.radians(degrees)
    along, across = np.array([math.cos(t), -math.sin(t)]), np.array([math.sin(t), math.cos(t)])
    corners = [np.array(centre) + a * (length - 1) / 2 * along + b * (width - 1) / 2 * across
               for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    cv2.fillPoly(image, [np.round(np.array(corners) * 16).astype(np.int32)], (25, 25, 25), shift=4)


def light_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A light textured surface with one dark pixel (a speck, not a crack), so that per-image min-max
    scaling spreads dark to light, not the texture, over [0, 1]."""
    image = np.random.default_rng(seed).integers(200, 225, (h, w, 3)).astype(np.uint8)
    image[0, 0] = 25
    return image


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# (centre, length, width px, degrees, orientation, width class at 0.25 mm/px with edges 1 3 mm)
DRAWN = [((250, 120), 300, 3, 0, "transverse", "hairline (< 1 mm)"),
         ((520, 330), 300, 6, 45, "diagonal", "medium (1-3 mm)"),
         ((130, 380), 250, 14, 90, "longitudinal", "wide (>= 3 mm)")]


def test_three_drawn_cracks_give_three_rows_of_the_right_size_orientation_and_class(standin):
    image = light_photo(600, 800)
    for centre, length, width, degrees, *_ in DRAWN:
        flat_crack(image, centre, length, width, degrees)
    cv2.circle(image, (700, 80), 2, (25, 25, 25), -1)   # a speck under --min-area: not a crack anywhere
    cv2.imwrite(str(standin / "road.png"), image)
    assert run("road.png", "--out", "out", "--mm-per-px", "0.25") == 0
    rows = read_csv(standin / "out/cracks.csv")
    assert len(rows) == 3
    drawn_area = {}
    for centre, length, width, degrees, *_ in DRAWN:
        alone = np.zeros((600, 800), np.uint8)
        flat_crack(alone, centre, length, width, degrees)
        drawn_area[degrees] = int((alone[..., 0] if alone.ndim == 3 else alone).astype(bool).sum())
    for (_, length, _, degrees, orientation, klass) in DRAWN:
        row = next(r for r in rows if r["orientation"] == orientation)
        assert float(row["length_px"]) == pytest.approx(length, rel=0.03)
        assert float(row["mean_width_px"]) == pytest.approx(drawn_area[degrees] / length, abs=0.5)
        assert float(row["angle_deg"]) == pytest.approx(degrees, abs=2)
        assert row["width_class"] == klass
    assert [int(r["crack"]) for r in rows] == [1, 2, 3]          # longest first
    summary = read_csv(standin / "out/summary.csv")[0]
    assert (summary["cracks"], summary["crack_found"]) == ("3", "1")
    assert float(summary["length_px"]) == pytest.approx(sum(float(r["length_px"]) for r in rows), abs=0.05)
    assert float(summary["longest_px"]) == max(float(r["length_px"]) for r in rows)
    mask = cv2.imread(str(standin / "out/road_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert not mask[70:90, 690:710].any()                     # the speck is out of the mask too
    assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1 == 3
    assert (standin / "out/road_overlay.jpg").exists()         # overlays by default


def photos_folder(folder: Path) -> list[str]:
    """Five photos: three with cracks of different lengths, one without, one HEIC and one WebP."""
    pytest.importorskip("pillow_heif").register_heif_opener()
    folder.mkdir()
    names = []
    for i, length in enumerate((60, 200, 120, 0, 90)):
        image = light_photo(160, 240, seed=i)
        if length:
            flat_crack(image, (120, 80), length, 4, 10 * i)
        name = ["a.jpg", "b.png", "c.heic", "clean.jpg", "d.webp"][i]
        Image.fromarray(image).save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
        names.append(name)
    return names


def test_the_report_links_only_files_beside_it_and_orders_the_photos(standin):
    names = photos_folder(standin / "photos")
    assert run("photos", "--out", "out", "--report", "--mm-per-px", "0.5") == 0
    page = (standin / "out/report.html").read_text()
    assert not re.search(r"https?:", page, re.IGNORECASE)
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4 and all((standin / "out" / src).is_file() for src in sources)
    for name in names:
        assert name in page                                      # HEIC and WebP included
    order = [page.index(f"<h3>{n}</h3>") for n in ("b.png", "c.heic", "d.webp", "a.jpg")]
    assert order == sorted(order)                                # most crack length first
    assert page.index("clean.jpg") > max(order)                  # photos without cracks last
    assert "non-commercial" not in page and "<svg" in page


def test_the_end_and_the_report_tell_how_many_photos_each_factor_took(standin, capsys):
    photos_folder(standin / "photos")
    for scale in ("0.5", "auto"):
        assert run("photos", "--out", f"out{scale}", "--report", "--scale", scale) == 0
        seen = [float(row["scale"]) for row in read_csv(standin / f"out{scale}/summary.csv")]
        told = re.search(rf"scale {scale}: (.*)", capsys.readouterr().out).group(1)
        assert told == scales.tally(seen) and f"photos per factor</td><td>{told}" in \
            (standin / f"out{scale}/report.html").read_text().replace("<th>", "<td>").replace("</th>", "</td>")
    assert told.startswith(f"{len(seen)} photos at") or ", " in told
    assert scales.tally([1.0, 0.25, 1.0, 0.125]) == "2 photos at 1, 1 at 1/4, 1 at 1/8"


def test_a_second_run_into_the_same_out_is_refused_and_overwrite_leaves_nothing_of_the_first(standin):
    photos_folder(standin / "photos")
    assert run("photos", "--out", "out") == 0
    first = {p.name for p in (standin / "out").iterdir()}
    assert MARKER in first and "b_mask.png" in first
    assert run("photos", "--out", "out") == 2
    assert {p.name for p in (standin / "out").iterdir()} == first
    cv2.imwrite(str(standin / "one.png"), light_photo(64, 64))
    assert run("one.png", "--out", "out", "--overwrite") == 0
    assert {p.name for p in (standin / "out").iterdir()} == {MARKER, "summary.csv", "cracks.csv", "cracks.geojson",
                                                              ".records", "one_prob.png", "one_mask.png",
                                                              "one_overlay.jpg"}
    assert [p.name for p in (standin / "out/.records").iterdir()] == ["one.png.json"]


def test_overwrite_deletes_nothing_without_the_marker_or_with_an_input_inside(standin):
    mine = standin / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    cv2.imwrite(str(standin / "one.png"), light_photo(64, 64))
    assert run("one.png", "--out", "mine", "--overwrite") == 2
    assert (mine / "notes.txt").read_text() == "the user's"
    assert run("one.png", "--out", "done") == 0
    cv2.imwrite(str(standin / "done/inside.png"), light_photo(64, 64))
    assert run("done/inside.png", "--out", "done", "--overwrite") == 2
    assert (standin / "done/inside.png").exists() and (standin / "done/one_mask.png").exists()


def test_default_out_is_new_per_run_and_earlier_outputs_are_not_inputs(standin, capsys):
    cv2.imwrite(str(standin / "one.png"), light_photo(64, 64))
    assert run(".") == 0
    assert run(".") == 0
    runs = sorted((standin / "predictions").iterdir())
    assert len(runs) == 2 and all((r / MARKER).is_file() for r in runs)
    assert all(re.fullmatch(r"standin-\d{8}-\d{6}(-2)?", r.name) for r in runs)
    assert [len(read_csv(r / "summary.csv")) for r in runs] == [1, 1]   # the first run's maps were skipped
    assert str(runs[1].relative_to(standin)) in capsys.readouterr().out   # printed


def test_a_large_photo_reports_its_tiles_and_the_last_line_its_speed(standin, capsys):
    cv2.imwrite(str(standin / "big.jpg"), light_photo(3000, 4000))
    assert run("big.jpg", "--out", "out") == 0
    tiles = len(inference.tile_layout(3008, predict.TILE, predict.OVERLAP)[1]) * \
        len(inference.tile_layout(4000, predict.TILE, predict.OVERLAP)[1])
    captured = capsys.readouterr()
    assert tiles > 4 and re.search(rf"tiles.*\b0/{tiles}\b", captured.err)
    assert re.search(r"photos/s", captured.out.strip().splitlines()[-1])


def jpeg_with_position(path: Path, image: np.ndarray, lat: tuple, lon: tuple, alt: float | None, taken: str) -> None:
    """A JPEG whose EXIF holds a GPS position (degrees, minutes, seconds as rationals) and a time with offset."""
    from fractions import Fraction

    from PIL import ExifTags
    exif = Image.Exif()
    gps = {ExifTags.GPS.GPSLatitudeRef: lat[0], ExifTags.GPS.GPSLatitude: tuple(map(Fraction, lat[1:])),
           ExifTags.GPS.GPSLongitudeRef: lon[0], ExifTags.GPS.GPSLongitude: tuple(map(Fraction, lon[1:]))}
    if alt is not None:
        gps.update({ExifTags.GPS.GPSAltitudeRef: b"\x01" if alt < 0 else b"\x00",
                    ExifTags.GPS.GPSAltitude: Fraction(abs(alt)).limit_denominator(1000)})
    exif[ExifTags.IFD.GPSInfo] = gps
    exif.get_ifd(ExifTags.IFD.Exif).update({ExifTags.Base.DateTimeOriginal: taken[:19].replace("-", ":", 2)
                                            .replace("T", " "), ExifTags.Base.OffsetTimeOriginal: taken[19:]})
    Image.fromarray(image).save(path, exif=exif, quality=95)


def test_positions_from_exif_go_to_summary_geojson_and_the_report(standin):
    import json
    from fractions import Fraction
    (standin / "road").mkdir()
    cracked = light_photo(160, 240)
    flat_crack(cracked, (120, 80), 150, 4, 10)
    # Santiago, south and west of Greenwich; seconds with a denominator of 1000 and 10000
    jpeg_with_position(standin / "road/a.jpg", cracked, ("S", 33, 51, Fraction(35123, 1000)),
                       ("W", 70, 39, Fraction(123457, 10000)), 520.5, "2026-05-01T14:03:22-04:00")
    jpeg_with_position(standin / "road/b.jpg", light_photo(160, 240, seed=1), ("N", 51, 28, Fraction(40512, 1000)),
                       ("E", 0, 0, Fraction(5312, 1000)), -3.25, "2026-05-02T09:00:00+01:00")
    Image.fromarray(light_photo(160, 240, seed=2)).save(standin / "road/c.jpg")   # no EXIF at all
    assert run("road", "--out", "out", "--report") == 0
    rows = {r["image"]: r for r in read_csv(standin / "out/summary.csv")}
    expected = {"a.jpg": (-(33 + 51 / 60 + 35.123 / 3600), -(70 + 39 / 60 + 12.3457 / 3600), 520.5),
                "b.jpg": (51 + 28 / 60 + 40.512 / 3600, 5.312 / 3600, -3.25)}
    for name, (lat, lon, alt) in expected.items():
        assert float(rows[name]["latitude"]) == pytest.approx(lat, abs=1e-6)
        assert float(rows[name]["longitude"]) == pytest.approx(lon, abs=1e-6)
        assert float(rows[name]["altitude_m"]) == pytest.approx(alt, abs=1e-3)
    assert rows["a.jpg"]["taken"] == "2026-05-01T14:03:22-04:00"
    assert [rows["c.jpg"][k] for k in ("latitude", "longitude", "altitude_m", "taken")] == ["", "", "", ""]
    collection = json.loads((standin / "out/cracks.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2
    points = {f["properties"]["image"]: f for f in collection["features"]}
    for name, (lat, lon, alt) in expected.items():
        x, y, z = points[name]["geometry"]["coordinates"]                  # RFC 7946: [lon, lat, alt]
        assert (x, y, z) == (pytest.approx(lon, abs=1e-6), pytest.approx(lat, abs=1e-6), pytest.approx(alt))
    assert points["a.jpg"]["properties"]["cracks"] >= 1 and points["a.jpg"]["properties"]["report_card"] == \
        "report.html#photo0"
    page = (standin / "out/report.html").read_text()
    assert "<h2>Where</h2>" in page and 'href="#photo0"' in page and "-33.859756" in page


def test_the_overlay_outlines_the_crack_and_keeps_its_pixels():
    from visuals import CRACK_COLOUR, crack_overlay
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3)).astype(np.uint8)
    crack = np.zeros((120, 200), bool)
    crack[50:58, 20:180] = True                                        # an 8 px wide crack
    overlay = crack_overlay(image, crack)
    inside = cv2.erode(crack.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert np.array_equal(overlay[inside], image[inside])              # the photo's own pixels inside the crack
    assert (overlay[48:50, 30:170] == CRACK_COLOUR).all() and (overlay[58:60, 30:170] == CRACK_COLOUR).all()
    assert np.array_equal(overlay[:40], image[:40])                     # far from it, untouched


def test_a_stopped_run_resumes_where_it_stopped_and_ends_as_an_unbroken_one(standin, monkeypatch, capsys):
    photos_folder(standin / "photos")                                 # 5 photos
    assert run("photos", "--out", "unbroken", "--report") == 0
    real, calls = predictor.Predictor.predict, []

    def stopped_at_the_fourth(self, photo, name=None):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt                                   # Ctrl-C (or a kill) on the 4th photo
        return real(self, photo, name)
    monkeypatch.setattr(predictor.Predictor, "predict", stopped_at_the_fourth)
    assert run("photos", "--out", "out", "--report") == 130
    assert len(list((standin / "out/.records").iterdir())) == 3       # 3 photos done, whole
    assert len(read_csv(standin / "out/summary.csv")) == 3            # the summaries of those, written anyway
    monkeypatch.setattr(predictor.Predictor, "predict", real)
    assert run("photos", "--resume", "out", "--report", "--threshold", "0.3") == 2   # other settings: refused
    assert "other settings" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(predictor.Predictor, "predict",
                        lambda self, photo, name=None: (calls.append(1), real(self, photo, name))[1])
    assert run("photos", "--resume", "out", "--report") == 0
    assert len(calls) == 2 and "(2 now)" in capsys.readouterr().out   # only the two left, none twice
    for name in ("summary.csv", "cracks.csv", "cracks.geojson"):
        assert (standin / "out" / name).read_bytes() == (standin / "unbroken" / name).read_bytes(), name
    made = sorted(p.relative_to(standin / "out").as_posix() for p in (standin / "out").rglob("*") if p.is_file())
    again = sorted(p.relative_to(standin / "unbroken").as_posix() for p in (standin / "unbroken").rglob("*")
                   if p.is_file())
    assert made == again and not [m for m in made if ".partial" in m]
