"""Overlap of label maps: the Dice of each heart structure, the one Dice of the project (training
validates with it, inference and evaluation report it)."""

from __future__ import annotations

import torch

from ..io.camus import HEART_LABELS, Label

DICE_NAMES = {Label.LV: "lv", Label.MYOCARDIUM: "myo", Label.ATRIUM: "la"}


def dice(pred, truth, labels=HEART_LABELS) -> torch.Tensor:
    """Dice of each label per sample: label maps ``pred`` and ``truth`` (N, H, W), tensors or arrays,
    give (N, len(labels)) float64 (NaN where both lack the label). The one Dice of the project:
    training validates with it, inference reports it."""
    pred, truth = torch.as_tensor(pred), torch.as_tensor(truth)
    scores = []
    for label in labels:
        p, t = pred == label, truth == label
        inter = (p & t).flatten(1).sum(1).double()
        total = p.flatten(1).sum(1).double() + t.flatten(1).sum(1).double()
        scores.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.nan))
    return torch.stack(scores, 1)
