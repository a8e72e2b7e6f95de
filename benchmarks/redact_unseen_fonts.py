"""Burned-in text in fonts that synth never draws, at the image edges: boxes blanked whole.

synth renders PIL's bitmap font and matplotlib's DejaVu Sans faces; a held-out set is drawn
by someone else. This draws one line per image in six other faces (Noto Sans Mono, DejaVu
Serif, Sans Condensed, Sans ExtraLight, Sans Mono Oblique, Serif Condensed Bold; Debian's
fonts-dejavu-core, fonts-dejavu-extra and fonts-noto-mono), 7-12 px, touching the bottom,
the top, the bottom-right corner or the left edge (there crossing from the border onto
the image), on 448-row ultrasound-, screen-capture- and radiograph-like frames, and
reports the lines blanked whole, the ink covered and the misses. The changed version and
the one before it are compared by running this at each commit on the same machine.

    .venv/bin/python -m benchmarks.redact_unseen_fonts --seeds 0 1 2
"""

import argparse
import collections
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from transforms.deadletter import StageError
from transforms.deid import PixelPolicy, redact_pixels

FONT_DIR = Path("/usr/share/fonts/truetype")
FONTS = [
    "noto/NotoSansMono-Regular.ttf",
    "dejavu/DejaVuSerif.ttf",
    "dejavu/DejaVuSansCondensed.ttf",
    "dejavu/DejaVuSans-ExtraLight.ttf",
    "dejavu/DejaVuSansMono-Oblique.ttf",
    "dejavu/DejaVuSerifCondensed-Bold.ttf",
]
SIZES = (7, 8, 9, 10, 12)
PLACES = ("bottom", "top", "bottom-right", "left")
TEXTS = [
    "DOE^JANE  MRN 44829103",
    "12/03/1961 14:22:07",
    "ST MARY HOSPITAL  ACC A7731",
    "SMITH, JOHN 1961-03-12",
    "ID: X9Q2-7741  DOB 03121961",
]


def _background(rng, rows: int, cols: int, kind: str) -> np.ndarray:
    if kind == "us":  # a sector of speckle
        yy, xx = np.mgrid[:rows, :cols]
        inside = (np.hypot(xx - cols / 2, yy + 20) < rows * 0.9) & (
            abs(np.arctan2(xx - cols / 2, yy + 20)) < 0.7
        )
        return np.clip(inside * rng.gamma(1.5, 40, (rows, cols)), 0, 255).astype(np.uint8)
    if kind == "sc":  # a noisy panel inside a flat border
        img = np.full((rows, cols), 30, np.uint8)
        panel = rng.normal(120, 30, (rows - 100, cols - 120))
        img[40 : rows - 60, 60 : cols - 60] = np.clip(panel, 0, 255)
        return img
    yy, xx = np.mgrid[:rows, :cols] / rows  # a radiograph's body
    body = (((yy - 0.5) / 0.42) ** 2 + ((xx - cols / rows / 2) / 0.35) ** 2 <= 1) * 160
    return np.clip(body + rng.normal(0, 12, (rows, cols)), 0, 255).astype(np.uint8)


def _case(rng, kind: str, size: int, place: str, font_file: Path):
    rows, cols = 448, int(rng.choice([448, 600, 640]))
    before = _background(rng, rows, cols, kind)
    image = Image.fromarray(before)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(font_file), size)
    text = str(rng.choice(TEXTS))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    w, h = x1 - x0, y1 - y0
    x, y = {
        "bottom": (int(rng.integers(0, cols - w)), rows - h),
        "top": (int(rng.integers(0, cols - w)), 0),
        "bottom-right": (cols - w, rows - h),
        "left": (0, int(rng.integers(0, rows - h))),
    }[place]
    shade = int(rng.choice([255, 200, 140]))
    draw.text((x - x0, y - y0), text, fill=shade, font=font)
    drawn = np.asarray(image)
    return drawn, (x, y, x + w, y + h), drawn != before, shade


def _dataset(arr: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "DOE^JANE", "44829103"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    return ds


def run(seed: int) -> tuple[collections.Counter, list]:
    rng = np.random.default_rng(seed)
    n: collections.Counter = collections.Counter()
    misses = []
    for name in FONTS:
        font_file = FONT_DIR / name
        for size in SIZES:
            for place in PLACES:
                kind = str(rng.choice(["us", "sc", "dx"]))
                arr, box, ink, shade = _case(rng, kind, size, place, font_file)
                ds = _dataset(arr.copy())
                try:
                    redact_pixels(ds, PixelPolicy())
                except StageError as e:
                    n[e.error_type] += 1
                    misses.append((name, size, place, kind, shade, e.error_type))
                    continue
                after = np.frombuffer(ds.PixelData, np.uint8).reshape(arr.shape)
                x0, y0, x1, y1 = box
                whole = bool((after[y0:y1, x0:x1] == 0).all())
                n["boxes"] += 1
                n["blanked"] += whole
                n["ink"] += int((after[ink] == 0).sum())
                n["ink total"] += int(ink.sum())
                if not whole:
                    share = float((after[y0:y1, x0:x1] == 0).mean())
                    misses.append((name, size, place, kind, shade, f"{share:.0%} of the box"))
    return n, misses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    missing = [f for f in FONTS if not (FONT_DIR / f).exists()]
    if missing:
        raise SystemExit(
            f"fonts not installed: {missing} (apt-get install fonts-dejavu-extra fonts-noto-mono)"
        )
    total: collections.Counter = collections.Counter()
    for seed in args.seeds:
        n, misses = run(seed)
        total.update(n)
        print(
            f"seed {seed}: lines blanked whole {n['blanked']}/{n['boxes']}, ink covered"
            f" {n['ink'] / max(n['ink total'], 1):.1%}, dead-lettered"
            f" {n['burned_in_text_remaining'] + n['redact_failed']}"
        )
        for m in misses:
            print("  miss:", *m)
    print(
        f"all: {total['blanked']}/{total['boxes']} lines blanked whole"
        f" ({total['blanked'] / max(total['boxes'], 1):.1%}), ink covered"
        f" {total['ink'] / max(total['ink total'], 1):.1%}"
    )


if __name__ == "__main__":
    main()
