"""How hard the synthetic lesion task is: lesion contrast, size and noise, and the SKE mode.

``Difficulty`` scales the phantom's lesion and noise; it changes pixel values only, never
which files, studies, labels or identities a corpus holds (the random draws stay the same,
only what they are multiplied by changes). ``easy`` is the corpus as it was first written
(a small CNN reaches ROC AUC 1.0 on it, which measures nothing); ``standard``, the default,
is tuned so that the project's CNN lands near 0.9 at the demo's scale.

Signal-known-exactly (``ske``): every image is a ``SKE_SIZE``-pixel square of white
gaussian noise around a flat background, and a positive adds the same gaussian blob at the
centre. The ideal observer (the prewhitening matched filter ``t = s · g``) then reaches
``AUC = Φ(d' / √2)`` with ``d' = ‖s‖ / sigma``: an analytic ceiling to compare a trained
network against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

PHANTOM, SKE = "phantom", "ske"
SKE_SIZE = 64  # pixels a side; the demo's image size, so ingest does not resample
SKE_BACKGROUND = 0.5
SKE_AMPLITUDE = 0.04  # lesion peak at contrast 1, in [0, 1] image units
SKE_SIGMA = 2.5  # lesion gaussian standard deviation at size 1, in pixels
SKE_NOISE = 0.1  # white noise standard deviation at noise 1


@dataclass(frozen=True)
class Difficulty:
    """Multipliers of the lesion's contrast, the lesion's size and the noise.

    In ``phantom`` mode they scale the phantom's own ranges (contrast 0.25-0.45 of the body
    intensity, width 3-8 % of the image, noise 0.015); in ``ske`` mode the SKE constants.
    """

    contrast: float = 1.0
    size: float = 1.0
    noise: float = 1.0
    mode: str = PHANTOM

    def __post_init__(self) -> None:
        if self.mode not in (PHANTOM, SKE):
            raise ValueError(f"difficulty mode must be {PHANTOM} or {SKE}")
        for name in ("contrast", "size", "noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"difficulty {name} must be a number > 0, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Difficulty:
        """``"standard"``, ``"easy"``, ``"hard"``, ``"ske"``, then ``key=value`` overrides:
        ``"ske,contrast=1.5"``, ``"contrast=0.3,noise=2"`` (overrides start from standard).

        Raises:
            ValueError: an unknown part or a value out of range (one line).
        """
        result = PRESETS[DEFAULT_NAME]
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep and name in PRESETS:
                result = PRESETS[name]
            elif sep and name in ("contrast", "size", "noise"):
                try:
                    number = float(value)
                except ValueError:
                    raise ValueError(f"difficulty {name}={value!r}: not a number") from None
                result = replace(result, **{name: number})  # type: ignore[arg-type]
            else:
                presets = ", ".join(PRESETS)
                raise ValueError(
                    f"difficulty part {part!r}: use a preset ({presets}) or contrast=, size=, "
                    "noise="
                )
        return result

    def __str__(self) -> str:
        prefix = "ske," if self.mode == SKE else ""
        return f"{prefix}contrast={self.contrast:g},size={self.size:g},noise={self.noise:g}"

    def describe(self) -> dict:
        """What a corpus was generated with (and, for SKE, the ideal observer's figures)."""
        out = {"mode": self.mode, "contrast": self.contrast, "size": self.size}
        out["noise"] = self.noise
        if self.mode == SKE:
            out.update({"d_prime": self.d_prime(), "ideal_auc": self.ideal_auc()})
        return out

    # --- signal-known-exactly ------------------------------------------------------------
    @property
    def ske_sigma(self) -> float:
        return SKE_NOISE * self.noise

    def ske_signal(self) -> np.ndarray:
        """The lesion every SKE positive carries, ``SKE_SIZE`` square, [0, 1] units."""
        centre = (SKE_SIZE - 1) / 2
        yy, xx = np.mgrid[:SKE_SIZE, :SKE_SIZE] - centre
        width = SKE_SIGMA * self.size
        return SKE_AMPLITUDE * self.contrast * np.exp(-(yy**2 + xx**2) / (2 * width**2))

    def d_prime(self) -> float:
        """The ideal observer's detectability, ``‖s‖ / sigma`` (SKE on white noise)."""
        return float(np.linalg.norm(self.ske_signal()) / self.ske_sigma)

    def ideal_auc(self) -> float:
        """``Φ(d' / √2)``: the best ROC AUC any observer can reach on the SKE task."""
        return 0.5 * (1 + math.erf(self.d_prime() / 2))  # Φ(x) = (1 + erf(x / √2)) / 2

    def ske_image(self, rng: np.random.Generator, lesion: bool) -> np.ndarray:
        """One SKE image in [0, 1]: background + white noise (+ the signal)."""
        img = SKE_BACKGROUND + rng.normal(0, self.ske_sigma, (SKE_SIZE, SKE_SIZE))
        if lesion:
            img = img + self.ske_signal()
        return np.clip(img, 0.0, 1.0)


DEFAULT_NAME = "standard"
PRESETS = {
    "easy": Difficulty(),
    # Measured (benchmarks/RESULTS.md): at 200 patients and 224 px, with the burned-in text
    # in the borders, the CNN reaches test ROC AUC 0.900 here (0.971 at contrast 0.7, the
    # preset until 2026-12-07; 1.00 at easy).
    DEFAULT_NAME: Difficulty(contrast=0.5),
    "hard": Difficulty(contrast=0.4, size=0.8, noise=1.5),
    SKE: Difficulty(mode=SKE),
}
DEFAULT = PRESETS[DEFAULT_NAME]
