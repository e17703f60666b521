"""The README's picture of predict.py's report: 20 CFD photos through the bundled model with
--report --mm-per-px 0.5, report.html rendered by headless Chromium (Debian's package `chromium`),
kept small as docs/report.jpg. Each photo is given a made-up GPS position and time in its EXIF (a
road every 11 m, as a survey vehicle's camera writes them), so the report shows where they were.

    python benchmarks/report_screenshot.py --data-dir ../shared/data
    python benchmarks/report_screenshot.py --list     # the commands it runs
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "report.jpg"
PHOTOS, MM_PER_PX = 20, 0.5
WINDOW = (1100, 2400)        # css px: the settings, the summary, the histogram and the first cards
WIDTH, QUALITY = 900, 70     # the kept picture: readable, about 150 KB


def commands(photos: Path, out: Path, shot: Path, browser: str) -> list[list[str]]:
    return [[sys.executable, str(ROOT / "predict.py"), str(photos), "--out", str(out), "--report",
             "--mm-per-px", str(MM_PER_PX)],
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", (out / "report.html").as_uri()]]


def with_position(source: Path, target: Path, i: int) -> None:
    """The photo with a made-up EXIF position (the i-th point of a road heading north-east, 11 m apart)
    and time, as a survey camera writes them."""
    from fractions import Fraction

    from PIL import ExifTags, Image

    def dms(value: float) -> tuple:
        d, rest = divmod(abs(value) * 3600, 3600)
        m, sec = divmod(rest, 60)
        return Fraction(int(d)), Fraction(int(m)), Fraction(round(sec * 1000), 1000)
    lat, lon = -33.4489 + 0.00007 * i + 0.00002 * (i % 3), -70.6693 + 0.00007 * i
    exif = Image.Exif()
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "S", ExifTags.GPS.GPSLatitude: dms(lat),
                                  ExifTags.GPS.GPSLongitudeRef: "W", ExifTags.GPS.GPSLongitude: dms(lon),
                                  ExifTags.GPS.GPSAltitudeRef: b"\x00", ExifTags.GPS.GPSAltitude: Fraction(570)}
    exif.get_ifd(ExifTags.IFD.Exif).update({ExifTags.Base.DateTimeOriginal: f"2026:05:01 10:{i:02d}:00",
                                            ExifTags.Base.OffsetTimeOriginal: "-04:00"})
    with Image.open(source) as image:
        image.save(target, exif=exif, quality=95)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    args = p.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmds = commands(tmp / "photos", tmp / "out", tmp / "shot.png", browser)
        if args.list:
            print(f"# the first {PHOTOS} photos of {args.data_dir / 'CFD' / 'images'} copied to PHOTOS, each given "
                  "a made-up GPS position and time")
            print(*(" ".join(c) for c in cmds), sep="\n")
            return
        if not shutil.which(browser):
            sys.exit("needs headless Chromium: apt-get install chromium")
        (tmp / "photos").mkdir()
        for i, photo in enumerate(sorted((args.data_dir / "CFD" / "images").iterdir())[:PHOTOS]):
            with_position(photo, tmp / "photos" / photo.name, i)
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=cmd[0] == browser)
        shot = cv2.imread(str(tmp / "shot.png"))
        small = cv2.resize(shot, (WIDTH, round(shot.shape[0] * WIDTH / shot.shape[1])), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(OUT), small, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
