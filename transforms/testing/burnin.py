"""Burned-in text as scanners and PACS print it: demographics, dates, institution, markers.

``burn_text`` draws a few lines into every frame of an image in one of several fonts (PIL's
bitmap font and matplotlib's DejaVu TrueType fonts), sizes, contrasts and corners (mostly in
the borders, as exports put them; sometimes one line over the anatomy), and
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
    """Draws the lines as a device's overlay, in every frame, and a laterality marker.

    Placement follows real exports: the patient's name and ID in one corner, the other
    lines in the diagonally opposite corner, a laterality marker at a side edge; and in
    about one image in eight, one line over the anatomy (an annotation typed onto it).

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
    size = int(np.clip(rng.uniform(0.04, 0.06) * min(rows, cols), 11, 40))
    font = _font(font_name, size)
    contrast = float(rng.uniform(0.7, 1.0))
    corner = int(rng.integers(4))  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    over_anatomy = rng.random() < 0.125
    canvas = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(canvas)
    placed: list[tuple[tuple[int, int, int, int], str, bool]] = []
    # A device shortens a line to fit rather than cut a glyph at the edge.
    lines = [(_fit(draw, t, font, cols - 6), phi) for t, phi in lines]
    heights = [draw.textbbox((0, 0), t, font=font) for t, _ in lines]
    step = max(b[3] for b in heights) + max(2, size // 4)
    # Name and ID in the chosen corner, the rest in the opposite one (other edge, other side).
    columns = [(corner, list(zip(lines[:2], heights[:2], strict=True)))]
    rest = list(zip(lines[2:], heights[2:], strict=True))
    if over_anatomy and rest:
        (text, phi), bbox = rest.pop(int(rng.integers(len(rest))))
        w, h = int(bbox[2] - bbox[0]), int(bbox[3])
        ax = int(rng.integers(cols // 4, max(cols // 4 + 1, 3 * cols // 4 - w)))
        ay = int(rng.integers(rows // 4, max(rows // 4 + 1, 3 * rows // 4 - h)))
        if ax + w < cols - 3 and ay + step < rows:
            placed.append(_draw(canvas, draw, (ax, ay), text, font, phi))
    columns.append((corner ^ 3, rest))
    for where, column in columns:
        y = 3 if where < 2 else rows - 3 - step * len(column)
        for (text, phi), bbox in column:
            width = bbox[2] - bbox[0]
            x = 3 if where % 2 == 0 else cols - 3 - width
            if x >= 0 and y >= 0 and y + step <= rows:
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


# --- hard text: what detectors miss -------------------------------------------------------

# Each kind renders one way that burned-in text is hard to find: glyphs 6-10 px tall, lines
# flush against an edge, low contrast, dark text on a light screen, coloured text on RGB,
# text over textured anatomy, and a multi-frame run with text on some frames only.
HARD_KINDS = ("small", "edge", "low_contrast", "inverted", "colour", "textured", "some_frames")
# Bands of a line's ink height in pixels, for recall per size.
SIZE_BANDS = ((6, 10), (11, 20), (21, 48))
_COLOURS = ((1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.2, 0.2), (1.0, 0.6, 0.0))


@dataclass(frozen=True)
class HardCase:
    """A rendered image with hard text: frames (n, rows, cols[, 3]) of 8-bit display values
    in [0, 255] (``rgb`` when coloured), the box of every line actually drawn, which
    covers the whole line and its antialiased edges, the ink (pixels at least a quarter
    covered by a glyph, per frame) and the patient's fields the text was made from."""

    kind: str
    frames: np.ndarray
    rgb: bool
    boxes: list[TextBox]
    ink: np.ndarray
    fields: dict


def size_band(box: tuple[int, int, int, int]) -> str:
    """The size band of a line's box, by its height: ``6-10``, ``11-20`` or ``21-48``."""
    height = box[3] - box[1]
    for lo, hi in SIZE_BANDS:
        if height <= hi:
            return f"{lo}-{hi}"
    return f"{SIZE_BANDS[-1][0]}-{SIZE_BANDS[-1][1]}"


def _anatomy(rows: int, cols: int, rng: np.random.Generator, texture: float) -> np.ndarray:
    """A body-like field in [0, 1]: an ellipse of soft tissue with bone-like bands, speckle
    and, with ``texture``, fine trabecular structure of that strength."""
    yy, xx = np.mgrid[:rows, :cols] / max(rows, cols)
    cy, cx = rows / max(rows, cols) / 2, cols / max(rows, cols) / 2
    body = (((yy - cy) / (0.45 * rows / max(rows, cols))) ** 2 + ((xx - cx) / 0.4) ** 2) <= 1
    img = body * 0.45
    for _ in range(3):  # bone-like bands
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.2, 0.2)
        d = np.abs((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle) - offset)
        img = img + body * 0.25 * (d < rng.uniform(0.02, 0.05))
    if texture:
        fine = np.zeros((rows, cols))
        for _ in range(6):
            f = rng.uniform(20, 90)
            fine += np.sin(f * xx + rng.uniform(0, 6)) * np.sin(f * 0.8 * yy + rng.uniform(0, 6))
        img = img + body * texture * fine / 6
    img = img + rng.normal(0, 0.02, (rows, cols))
    return np.clip(img, 0, 1)


def _line_layer(
    rows: int, cols: int, lines: list[str], font, rng, place: str, margin: int
) -> list[tuple[np.ndarray, tuple[int, int, int, int], str]]:
    """Each line as an antialiased alpha layer (0-1) with the box of its nonzero alpha."""
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    lines = [_fit(probe, t, font, cols - 2 * margin - 2) for t in lines]
    bboxes = [tuple(round(v) for v in probe.textbbox((0, 0), t, font=font)) for t in lines]
    ink = max(b[3] - b[1] for b in bboxes)
    step = ink + max(2, ink // 3)
    edge = str(rng.choice(["top", "bottom", "left", "right"])) if place == "edge" else ""
    if place == "center":
        y = int(rng.integers(rows // 4, max(rows // 4 + 1, rows * 3 // 4 - step * len(lines))))
    elif edge == "bottom" or (place == "corner" and rng.integers(2)):
        y = rows - margin - step * (len(lines) - 1) - ink
    else:
        y = margin
    out = []
    right = edge == "right" or (place == "corner" and bool(rng.integers(2)))
    for text, bbox in zip(lines, bboxes, strict=True):
        width = bbox[2] - bbox[0]
        if place == "center":
            x = int(rng.integers(cols // 5, max(cols // 5 + 1, cols * 4 // 5 - width)))
        else:
            x = cols - margin - width if right else margin
        canvas = Image.new("L", (cols, rows), 0)
        # Ink placed so that its top-left is at (x, y): edge lines touch the edge exactly.
        ImageDraw.Draw(canvas).text((x - bbox[0], y - bbox[1]), text, fill=255, font=font)
        alpha = np.asarray(canvas, np.float32) / 255
        ys, xs = np.nonzero(alpha > 0)
        if len(ys) and y >= 0 and y + ink <= rows:
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            out.append((alpha, box, text))
        y += step
    return out


def hard_case(kind: str, rng: np.random.Generator, rows: int = 448, cols: int = 448) -> HardCase:
    """One image of ``kind`` (see HARD_KINDS) with a few lines of PHI-like text.

    Text is antialiased (as devices draw it) and its boxes cover every pixel it touched.
    Sizes are drawn from 6 to 40 px of ink height (6-10 px for ``small``).
    """
    fields = {
        "family": str(rng.choice(["MORALES", "OKAFOR", "LINDQVIST", "NAKAMURA", "BRENNAN"])),
        "given": str(rng.choice(["ANA", "PETER", "YUKI", "GRACE", "TOMAS"])),
        "pid": f"PID{int(rng.integers(10**5, 10**6))}",
        "date": f"{int(rng.integers(1990, 2025))}{int(rng.integers(1, 13)):02d}"
        f"{int(rng.integers(1, 29)):02d}",
        "time": f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}00",
        "institution": str(rng.choice(["Riverside General", "St Anne Clinic", "North Imaging"])),
        "accession": f"AC{int(rng.integers(10**5, 10**6))}",
    }
    lines = [t for t, _ in text_lines(fields, rng)]
    name = str(rng.choice([f for f in FONTS if f != "bitmap"]))
    ink = int(rng.integers(6, 11)) if kind == "small" else int(rng.integers(6, 41))
    font = _font(name, max(6, round(ink / 0.78)))  # DejaVu's caps are ~0.73 of the size
    texture = 0.35 if kind == "textured" else 0.0
    background = _anatomy(rows, cols, rng, texture)
    n = 6 if kind == "some_frames" else 1
    frames = np.stack([np.clip(background + rng.normal(0, 0.01, background.shape), 0, 1)] * n)
    if kind == "inverted":
        frames = 1 - 0.85 * frames  # a light screen, dark anatomy and dark text
    place = {"edge": "edge", "textured": "center"}.get(kind, "corner")
    margin = 0 if kind == "edge" else int(rng.integers(2, 8))
    layers = _line_layer(rows, cols, lines, font, rng, place, margin)
    on = sorted(rng.choice(n, size=max(1, n // 3), replace=False)) if n > 1 else [0]
    rgb = kind == "colour"
    if rgb:
        frames = np.repeat(frames[..., np.newaxis], 3, axis=3)
    if kind == "low_contrast" and layers:  # a uniform text panel, as screens draw them
        x0 = max(0, min(b[0] for _, b, _ in layers) - 4)
        y0 = max(0, min(b[1] for _, b, _ in layers) - 4)
        x1, y1 = max(b[2] for _, b, _ in layers) + 4, max(b[3] for _, b, _ in layers) + 4
        frames[on, y0:y1, x0:x1] = rng.uniform(0.05, 0.5)
    boxes = []
    inked = np.zeros(frames.shape[:3], bool)
    value: float | np.ndarray
    for alpha, box, text in layers:
        for f in on:
            inked[f] |= alpha >= 0.25
            under = frames[f][alpha > 0]
            under = under.mean(axis=-1) if rgb else under
            if kind == "low_contrast":
                value = float(np.median(under)) + float(rng.uniform(0.1, 0.2))
            elif kind == "inverted":
                value = float(rng.uniform(0.0, 0.15))
            elif rgb:
                value = np.array(_COLOURS[int(rng.integers(len(_COLOURS)))])
            elif np.percentile(under, 5) > 0.5:  # wholly on a bright region: dark text
                value = float(rng.uniform(0.0, 0.1))
            else:
                value = float(rng.uniform(0.8, 1.0))
            a = alpha[..., np.newaxis] if rgb else alpha
            frames[f] = frames[f] * (1 - a) + value * a
            boxes.append(TextBox(int(f), box, text, True))
    return HardCase(kind, np.round(frames * 255).astype(np.uint8), rgb, boxes, inked, fields)
