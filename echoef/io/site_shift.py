"""A simulated other site, to measure site adaptation without one: CAMUS studies shown as another
scanner would show them and traced as other sonographers would trace them.

What it can show: how far the pipeline's EF moves when the pictures and the tracing convention change
in known ways, and how much a site's own 20 studies win back by calibration or fine-tuning. What it
cannot: a real site's anatomy, population, probe and sector geometry, frame selection and noise all
differ at once, and in ways nobody chose. A real site's numbers come only from its own studies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..domain import Label


@dataclass(frozen=True)
class SiteShift:
    """The site's differences from CAMUS (each 0 or 1 where it is 'no difference')."""

    gain: float = 0.8  # overall brightness: grey levels times this, then clipped at 255
    gamma: float = 1.5  # another compression curve: grey = 255 (g / 255) ** gamma
    speckle: float = 0.35  # extra multiplicative speckle (Rayleigh, mean 1) mixed in at this weight
    blur_mm: float = 0.6  # a wider beam: Gaussian blur of this SD, in mm
    sector_deg: float = 33.0  # half-angle of the sector shown (CAMUS's is about 37 degrees); outside is black
    es_inset_mm: float = 2.0  # the site traces the end-systolic endocardium this far inside the expert's line
    ed_inset_mm: float = 0.0  # and the end-diastolic one this far inside


def shift_image(image: np.ndarray, spacing_mm: tuple[float, float], shift: SiteShift, rng: np.random.Generator) -> np.ndarray:
    """One frame (H, W) as the site's scanner shows it: blurred, re-compressed, with other speckle and
    gain, cut to the site's narrower sector (apex at the top centre). Grey levels 0-255, float32."""
    grey = np.clip(np.asarray(image, dtype=np.float64), 0, 255) / 255
    if shift.blur_mm > 0:
        grey = ndimage.gaussian_filter(grey, sigma=[shift.blur_mm / s for s in spacing_mm])
    grey = grey ** shift.gamma
    speckle = rng.rayleigh(scale=np.sqrt(2 / np.pi), size=grey.shape)  # mean 1
    grey = grey * (1 - shift.speckle + shift.speckle * speckle) * shift.gain
    rows, cols = grey.shape
    depth = (np.arange(rows) + 0.5)[:, None] * spacing_mm[0]
    lateral = ((np.arange(cols) + 0.5) - cols / 2)[None, :] * spacing_mm[1]
    inside = np.abs(np.degrees(np.arctan2(lateral, depth))) <= shift.sector_deg
    return (np.clip(grey, 0, 1) * inside * 255).astype(np.float32)


def site_label(label: np.ndarray, phase: str, spacing_mm: tuple[float, float], shift: SiteShift) -> np.ndarray:
    """The expert's label map as the site traces it: the LV cavity's rim of the phase's inset (mm,
    measured in the plane with the pixels' own sizes) given to the myocardium, the rest unchanged."""
    inset = shift.es_inset_mm if phase == "ES" else shift.ed_inset_mm
    label = np.asarray(label).copy()
    if inset <= 0:
        return label
    lv = label == Label.LV
    distance = ndimage.distance_transform_edt(lv, sampling=spacing_mm)
    label[lv & (distance <= inset)] = Label.MYOCARDIUM
    return label
