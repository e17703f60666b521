"""report.html: one self-contained page an inspector can open, file and send with its folder.

Standard library only (html.escape and f-strings): the page is a few tables, cards and one inline
SVG histogram, too little to earn a template package. Images are the overlays written beside it,
linked by relative paths; the page references nothing on the network (no http, no CDN, no script)."""
import html
import os
import time
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child, .settings th { text-align: left; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: 0.8em 1em; margin: 1.2em 0; }
.card img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.muted { color: #666; } .settings td { text-align: left; }
"""
HISTOGRAM_BINS = 12


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def table(header: list[str], rows: list[list], css: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><tr>{head}</tr>{body}</table>'


def unit(settings: dict) -> tuple[str, float]:
    """Lengths and widths shown in mm when the photos' scale is known, else in pixels."""
    return ("mm", settings["mm_per_px"]) if settings["mm_per_px"] else ("px", 1.0)


def settings_table(settings: dict, photos: int) -> str:
    rows = [["model", f"{esc(settings['model'])} ({esc(settings['arch'])})"],
            ["threshold", f"{settings['threshold']:g}"], ["scale", esc(settings["scale"])],
            ["photos per factor", esc(settings.get("factors") or "-")],
            ["mm per pixel", esc(settings["mm_per_px"] or "not given: sizes in pixels")],
            ["smallest crack counted", f"{settings['min_area']} px"],
            ["width classes", esc(", ".join(settings["width_classes"] or ["need --mm-per-px"]))],
            ["model's terms", esc(settings["terms"] or "see the run's own sources")],
            ["photos", str(photos)], ["made", time.strftime("%Y-%m-%d %H:%M")]]
    return table(["setting", "value"], rows, "settings")


def total_length(photo: dict) -> float:
    return photo["summary"]["length_px"]


def summary_table(photos: list[dict], settings: dict) -> str:
    name, k = unit(settings)
    rows = []
    for i, p in enumerate(photos):
        s = p["summary"]
        rows.append([f'<a href="#photo{i}">{esc(s["image"])}</a>', s["cracks"], f"{s['length_px'] * k:.1f}",
                     f"{s['longest_px'] * k:.1f}", f"{s['max_width_px'] * k:.2f}", esc(s["scale"])])
    return table(["photo", "cracks", f"total length ({name})", f"longest ({name})", f"max width ({name})",
                  "scale"], rows)


def class_counts(cracks: list[dict], settings: dict) -> str:
    if not settings["width_classes"]:
        return ""
    counts = {c: 0 for c in settings["width_classes"]}
    for crack in cracks:
        counts[crack["width_class"]] += 1
    return "<p>" + ", ".join(f"{esc(c)}: <b>{n}</b>" for c, n in counts.items()) + "</p>"


def card(i: int, photo: dict, out_dir: Path, settings: dict) -> str:
    name, k = unit(settings)
    s = photo["summary"]
    image = ""
    if photo["overlay"]:
        src = Path(photo["overlay"]).relative_to(out_dir).as_posix()
        image = f'<img src="{esc(src)}" alt="{esc(s["image"])} with its cracks numbered" loading="lazy">'
    rows = [[c["crack"], f"{c['length_px'] * k:.1f}", f"{c['mean_width_px'] * k:.2f}",
             f"{c['median_width_px'] * k:.2f}", f"{c['max_width_px'] * k:.2f}", esc(c["orientation"]),
             esc(c.get("width_class", "")), f"{c['x']}, {c['y']}"] for c in photo["cracks"]]
    cracks = table(["crack", f"length ({name})", f"mean width ({name})", f"median width ({name})",
                    f"max width ({name})", "orientation", "width class", "x, y (px)"], rows)
    return (f'<div class="card" id="photo{i}"><h3>{esc(s["image"])}</h3>'
            f'<p class="muted">{s["width"]} x {s["height"]} px, seen at scale {esc(s["scale"])}; '
            f'{s["cracks"]} crack(s), {s["length_px"] * k:.1f} {name} in all</p>'
            f"{class_counts(photo['cracks'], settings)}{image}{cracks}</div>")


def histogram(photos: list[dict], settings: dict) -> str:
    """An inline SVG of the cracks' mean widths."""
    name, k = unit(settings)
    widths = [c["mean_width_px"] * k for p in photos for c in p["cracks"]]
    if not widths:
        return "<p>No cracks were found.</p>"
    top = max(widths) * 1.0001 or 1.0
    counts = [0] * HISTOGRAM_BINS
    for w in widths:
        counts[int(w / top * HISTOGRAM_BINS)] += 1
    bar, height = 50, 160
    bars = "".join(
        f'<rect x="{40 + i * bar}" y="{10 + height - n / max(counts) * height:.1f}" width="{bar - 4}" '
        f'height="{n / max(counts) * height:.1f}" fill="#c0208f"><title>{n}</title></rect>'
        f'<text x="{40 + i * bar + bar / 2 - 2}" y="{height + 26}" font-size="10" text-anchor="middle">'
        f"{top * i / HISTOGRAM_BINS:.2g}</text>"
        for i, n in enumerate(counts))
    width = 60 + HISTOGRAM_BINS * bar
    caption = f"mean width of each crack ({name}; {len(widths)} cracks, up to {max(counts)} per bar)"
    return (f'<svg width="{width}" height="{height + 50}" role="img">{bars}'
            f'<text x="{width / 2}" y="{height + 45}" font-size="12" text-anchor="middle">{esc(caption)}</text></svg>')


def cracked_in_order(photos: list[dict]) -> list[dict]:
    """The photos with cracks, most crack length first: the order of the report's cards."""
    return [p for p in sorted(photos, key=total_length, reverse=True) if p["cracks"]]


def card_anchors(photos: list[dict]) -> dict[str, str]:
    """{photo's summary name: "report.html#photoN"}, its card in the report."""
    return {p["summary"]["image"]: f"report.html#photo{i}" for i, p in enumerate(cracked_in_order(photos))}


def positioned(photos: list[dict]) -> list[dict]:
    return [p for p in photos if p["summary"].get("latitude") not in ("", None)]


def positions(photos: list[dict]) -> str:
    """Where the positioned photos were taken: a table and an inline SVG of the points (longitude right,
    latitude up, scaled to their bounding box: no map tiles, nothing from the network), a photo with
    cracks red and linked to its card."""
    found = positioned(photos)
    if not found:
        return ""
    anchors = card_anchors(photos)
    rows = [[esc(p["summary"]["image"]), f"{p['summary']['latitude']:.6f}", f"{p['summary']['longitude']:.6f}",
             esc(p["summary"]["altitude_m"]), esc(p["summary"]["taken"]), p["summary"]["cracks"]] for p in found]
    lats = [p["summary"]["latitude"] for p in found]
    lons = [p["summary"]["longitude"] for p in found]
    span = max(max(lats) - min(lats), max(lons) - min(lons)) or 1e-6
    size, pad = 360, 20
    dots = []
    for p in found:
        s = p["summary"]
        x = pad + (s["longitude"] - min(lons)) / span * (size - 2 * pad)
        y = size - pad - (s["latitude"] - min(lats)) / span * (size - 2 * pad)
        dot = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{"#c0208f" if s["cracks"] else "#2a7"}">'
               f'<title>{esc(s["image"])}: {s["cracks"]} crack(s)</title></circle>')
        anchor = anchors.get(s["image"], "").replace("report.html", "")
        dots.append(f'<a href="{anchor}">{dot}</a>' if anchor else dot)
    svg = (f'<svg width="{size}" height="{size}" role="img" style="border:1px solid #ccc">{"".join(dots)}'
           f'<text x="{pad}" y="{size - 4}" font-size="10">{span * 111_320:.0f} m across (north up)</text></svg>')
    return ("<h2>Where</h2>" + svg + table(["photo", "latitude", "longitude", "altitude (m)", "taken", "cracks"], rows))


def write_report(out_dir: Path, settings: dict, photos: list[dict], failed: list[Path]) -> Path:
    """out_dir/report.html: settings, a summary table, one card per photo with cracks (most crack length
    first), photos without cracks last, unreadable files, the width histogram and, where photos carry
    GPS positions, where they were taken."""
    photos = sorted(photos, key=total_length, reverse=True)
    cracked = cracked_in_order(photos)
    clean = [p for p in photos if not p["cracks"]]
    cards = "".join(card(i, p, out_dir, settings) for i, p in enumerate(cracked))
    lists = f"<h2>Photos without cracks ({len(clean)})</h2><p>" + (
        ", ".join(esc(p["summary"]["image"]) for p in clean) or "none") + "</p>"
    if failed:
        lists += f"<h2>Unreadable ({len(failed)})</h2><p>" + ", ".join(esc(f) for f in failed) + "</p>"
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Crack report</title>"
            f"<style>{STYLE}</style></head><body><h1>Crack report</h1>"
            f"<p>{len(cracked)} of {len(photos)} photo(s) show cracks.</p>"
            f"{settings_table(settings, len(photos))}<h2>Photos with cracks, most crack length first</h2>"
            f"{summary_table(cracked, settings)}<h2>Crack widths</h2>{histogram(photos, settings)}{positions(photos)}"
            f"{cards}{lists}</body></html>")
    path = out_dir / "report.html"
    partial = path.with_name(f".partial-{os.getpid()}-report.html")   # whole, even with two ranks merging
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path
