"""Where and when a photo was taken, from the EXIF a phone or drone writes: GPS latitude and longitude
(decimal degrees, south and west negative), altitude (m, below sea level negative) and
DateTimeOriginal with its offset (ISO 8601). predict.py puts them in summary.csv (always the columns,
empty where a photo has none) and cracks.geojson (RFC 7946: one Point per positioned photo).
"""
from pathlib import Path

from PIL import ExifTags, Image, UnidentifiedImageError

COLUMNS = ["latitude", "longitude", "altitude_m", "taken"]


def ratio(value) -> float:
    """An EXIF rational (Pillow's IFDRational, or a (numerator, denominator) pair) as a float."""
    if isinstance(value, tuple):
        return value[0] / value[1]
    return float(value)


def degrees(dms, ref: str) -> float:
    """(degrees, minutes, seconds) and N/S/E/W to signed decimal degrees."""
    d, m, s = (ratio(v) for v in dms)
    value = d + m / 60 + s / 3600
    return -value if ref.strip().upper() in ("S", "W") else value


def taken_at(exif_ifd: dict) -> str:
    """DateTimeOriginal ("YYYY:MM:DD HH:MM:SS") with OffsetTimeOriginal as ISO 8601, or ""."""
    stamp = str(exif_ifd.get(ExifTags.Base.DateTimeOriginal, "")).strip("\x00 ")
    if len(stamp) < 19 or stamp[4] != ":" or stamp[7] != ":":
        return ""
    iso = f"{stamp[:4]}-{stamp[5:7]}-{stamp[8:10]}T{stamp[11:19]}"
    offset = str(exif_ifd.get(ExifTags.Base.OffsetTimeOriginal, "")).strip("\x00 ")
    return iso + (offset if len(offset) == 6 and offset[0] in "+-" and offset[3] == ":" else "")


def position(gps: dict) -> dict:
    """latitude, longitude and altitude_m from a GPS IFD ("" for each that is missing or malformed)."""
    found = dict.fromkeys(COLUMNS[:3], "")
    try:
        found["latitude"] = round(degrees(gps[ExifTags.GPS.GPSLatitude], gps[ExifTags.GPS.GPSLatitudeRef]), 8)
        found["longitude"] = round(degrees(gps[ExifTags.GPS.GPSLongitude], gps[ExifTags.GPS.GPSLongitudeRef]), 8)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return dict.fromkeys(COLUMNS[:3], "")
    try:
        below = gps.get(ExifTags.GPS.GPSAltitudeRef, b"\x00") in (b"\x01", 1)
        altitude = ratio(gps[ExifTags.GPS.GPSAltitude])
        found["altitude_m"] = round(-altitude if below else altitude, 3)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return found


def read_where_and_when(path: Path) -> dict:
    """{latitude, longitude, altitude_m, taken} of a photo's EXIF, "" where it has none."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            gps = dict(exif.get_ifd(ExifTags.IFD.GPSInfo))
            exif_ifd = dict(exif.get_ifd(ExifTags.IFD.Exif))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return dict.fromkeys(COLUMNS, "")
    return {**position(gps), "taken": taken_at(exif_ifd)}


def geojson(rows: list[dict], anchors: dict[str, str] | None = None) -> dict:
    """An RFC 7946 FeatureCollection: one Point [lon, lat(, alt)] per positioned row, its properties the
    row and, where the report has one, its card's anchor."""
    features = []
    for row in rows:
        if row.get("latitude") in ("", None) or row.get("longitude") in ("", None):
            continue
        point = [row["longitude"], row["latitude"]] + ([row["altitude_m"]] if row.get("altitude_m") != "" else [])
        properties = {**row, **({"report_card": anchors[row["image"]]} if anchors and row["image"] in anchors else {})}
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": point},
                         "properties": properties})
    return {"type": "FeatureCollection", "features": features}
