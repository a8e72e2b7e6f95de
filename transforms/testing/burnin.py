"""Burned-in text as scanners and PACS print it: demographics, dates, institution, markers.

``burn_text`` draws a few lines into every frame of an image in one of several fonts (PIL's
bitmap font and matplotlib's DejaVu TrueType fonts), sizes, contrasts and corners, and
returns the tight pixel box of each line, so tests and benchmarks know exactly where the
planted text is. Deterministic for a given rng state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Kinds whose images carry burned-in text in the corpus (radiographs, ultrasound,
# screenshots, angiography runs).
BURNED_KINDS = ("CR", "DX", "US", "SC", "XA")
# Text on a radiograph needs room: these kinds are drawn at least this large.
MIN_SIDE = {"CR": 160, "DX": 160, "US": 120, "SC": 128, "XA": 128}
FONTS = ("bitmap", "DejaVuSans", "DejaVuSansMono", "DejaVuSerif", "DejaVuSans-Bold")
_DATE_FORMATS = ("{y}-{m}-{d}", "{d}/{m}/{y}", "{m}/{d}/{y}", "{d}.{m}.{y}", "{y}{m}{d}")


@dataclass(frozen=True)
class TextBox:
    """One planted line: where (frame, tight pixel box x0, y0, x1, y1 end-exclusive),
    what, and whether it identifies the patient (a laterality marker does not)."""

    frame: int
    box: tuple[int, int, int, int]
    text: str
    phi: bool


@functools.cache
def _font(name: str, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if name == "bitmap":
        return ImageFont.load_default_imagefont()  # PIL's built-in 6x11 bitmap font
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"
    return ImageFont.truetype(str(path), size)


def text_lines(fields: dict[str, str], rng: np.random.Generator) -> list[tuple[str, bool]]:
    """The lines a device prints, from the patient's fields, as (text, identifies?).

    Args:
        fields: ``family``, ``given``, ``pid``, ``date`` (YYYYMMDD), ``time`` (HHMMSS),
            ``institution``, ``accession``.
    """
    y, m, d = fields["date"][:4], fields["date"][4:6], fields["date"][6:8]
    date = str(rng.choice(_DATE_FORMATS)).format(y=y, m=m, d=d)
    name = str(rng.choice(["{f}^{g}", "{f}, {g}", "{f} {g}"])).format(
        f=fields["family"], g=fields["given"]
    )
    lines = [(name, True), (f"ID: {fields['pid']}", True)]
    optional = [
        (f"{date} {fields['time'][:2]}:{fields['time'][2:4]}", True),
        (fields["institution"].upper()[:28], True),
        (f"ACC {fields['accession']}", True),
    ]
    picked = rng.permutation(len(optional))[: int(rng.integers(1, 4))]
    lines += [optional[i] for i in sorted(picked)]
    return lines


def burn_text(
    arr: np.ndarray,
    lines: list[tuple[str, bool]],
    rng: np.random.Generator,
    top: int,
    monochrome1: bool = False,
    frames: bool = False,
) -> tuple[np.ndarray, list[TextBox]]:
    """Draws the lines in one corner of every frame and a laterality marker opposite.

    Args:
        arr: stored pixels, (rows, cols), (rows, cols, 3), or frames first if ``frames``.
        top: the brightest stored value (255, 4095, 16383, ...).
        monochrome1: text is stored dark, so that it displays white.

    Returns:
        The image with text and the boxes of the lines actually drawn (a line that would
        not fit is left out).
    """
    stack = arr if frames else arr[np.newaxis]
    rows, cols = stack.shape[1:3]
    font_name = str(rng.choice(FONTS))
    size = int(np.clip(rng.uniform(0.05, 0.08) * min(rows, cols), 11, 40))
    font = _font(font_name, size)
    contrast = float(rng.uniform(0.7, 1.0))
    corner = int(rng.integers(4))  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    canvas = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(canvas)
    placed: list[tuple[tuple[int, int, int, int], str, bool]] = []
    # A device shortens a line to fit rather than cut a glyph at the edge.
    lines = [(_fit(draw, t, font, cols - 6), phi) for t, phi in lines]
    heights = [draw.textbbox((0, 0), t, font=font) for t, _ in lines]
    step = max(b[3] for b in heights) + max(2, size // 4)
    y = 3 if corner < 2 else rows - 3 - step * len(lines)
    for (text, phi), bbox in zip(lines, heights, strict=True):
        width = bbox[2] - bbox[0]
        x = 3 if corner % 2 == 0 else cols - 3 - width
        if x < 0 or y < 0 or y + step > rows:
            y += step
            continue
        placed.append(_draw(canvas, draw, (x, y), text, font, phi))
        y += step
    marker = str(rng.choice(["L", "R"]))
    mx = cols - 6 - size if corner % 2 == 0 else 6
    placed.append(_draw(canvas, draw, (mx, rows // 2), marker, font, False))
    mask = np.asarray(canvas) > 127
    # Devices draw text to stand out: bright on a dark background, dark on a bright one
    # (as displayed: MONOCHROME1 shows low values bright).
    shown = stack[..., 0] if stack.ndim == 4 else stack
    background = float(np.mean(shown[:, mask])) / top if mask.any() else 0.0
    bright = (1 - background if monochrome1 else background) < 0.55
    level = contrast if bright else 1 - contrast
    value = round(top * (1 - level)) if monochrome1 else round(top * level)
    out = stack.copy()
    out[:, mask] = value
    boxes = [TextBox(f, box, text, phi) for f in range(len(out)) for box, text, phi in placed]
    return (out if frames else out[0]), boxes


def _fit(draw, text: str, font, width: int) -> str:
    while len(text) > 1 and draw.textbbox((0, 0), text, font=font)[2] > width:
        text = text[:-1]
    return text.rstrip()


def _draw(canvas, draw, xy, text, font, phi) -> tuple[tuple[int, int, int, int], str, bool]:
    before = np.asarray(canvas).copy()
    draw.text(xy, text, fill=255, font=font)
    ys, xs = np.nonzero((np.asarray(canvas) > 127) & ~(before > 127))
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return box, text, phi
