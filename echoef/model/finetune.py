"""Site fine-tuning: a trained ensemble's networks trained a little further on a site's own traced
frames, so that its masks follow that site's images and tracing convention.

A site may trace every structure (CAMUS label maps) or the LV cavity alone (EchoNet-Dynamic's
tracings): there a pixel outside the outline is known only not to be LV (``NOT_LV``), and the loss
asks just that of it, so myocardium and atrium keep what the networks learned. The weights after the
last epoch are kept (no epoch is chosen on the studies that then judge them); whether they are better
is decided on studies kept aside (``app.site``), never on those trained on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.nn import functional

from ..io.camus import Label
from ..params import Augment, Optimisation, Train
from .network import PhaseStack, softmax_batches
from .overlap import dice
from .runtime import seed_everything
from .training import Trainer

NOT_LV = 255  # label of a pixel known only to be outside the LV cavity (a site that traces the LV alone)
SMOOTH = 1.0  # soft Dice's smoothing, in pixels


class SiteLoss(torch.nn.Module):
    """Cross-entropy where the label is known, -log(1 - p(LV)) where only 'not LV' is, plus the soft
    Dice of the LV cavity (the structure EF is measured on)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        known = target != NOT_LV
        log_probs = functional.log_softmax(logits, 1)
        cross_entropy = functional.nll_loss(log_probs, torch.where(known, target, 0), reduction="none")
        p_lv = log_probs[:, Label.LV].exp()
        outside = -torch.log1p(-p_lv.clamp(max=1 - 1e-6))
        pixel = torch.where(known, cross_entropy, outside).mean()
        truth = (target == Label.LV).float()
        overlap = (p_lv * truth).sum((1, 2))
        dice = 1 - (2 * overlap + SMOOTH) / (p_lv.sum((1, 2)) + truth.sum((1, 2)) + SMOOTH)
        return pixel + dice.mean()


def lv_dice(model: PhaseStack, images: torch.Tensor, labels: torch.Tensor, batch_size: int, precision: str) -> np.ndarray:
    """Each frame's LV-cavity Dice with the site's tracing (frames without LV in both: NaN)."""
    model.eval()
    predicted = torch.cat([probs.argmax(1) for probs in softmax_batches(model, images, batch_size, False, precision)])
    return dice(predicted, labels.to(predicted.device), labels=(Label.LV,))[:, 0].cpu().numpy()


class SiteTrainer(Trainer):
    """The pipeline's trainer on a site's frames: its loss ``SiteLoss``, validated by the LV Dice of
    the frames kept aside (reported per epoch), keeping the last epoch's weights."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = SiteLoss()

    def validate(self) -> np.ndarray:
        images, labels = self.val_set
        dice = lv_dice(self.evaluated, images, labels, self.config.optimisation.batch_size, self.precision)
        return np.array([np.nanmean(dice), np.nan, np.nan])

    def end_epoch(self, epoch: int, loss: float, dice_scores: np.ndarray) -> None:
        super().end_epoch(epoch, loss, dice_scores)
        self.best = {"lv_dice": float(dice_scores[0]), "epoch": epoch,
                     "state": {k: v.detach().cpu().clone() for k, v in self.evaluated.state_dict().items()}}


@dataclasses.dataclass(frozen=True)
class FineTune:
    """How far to train: epochs over the site's frames, the peak learning rate (a tenth of training's:
    the networks are to move, not to forget), frames per step, and the random seed."""

    epochs: int = 30
    lr: float = 3e-4
    batch_size: int = 8
    seed: int = 0


def train_config(network, settings: FineTune, device: str, precision: str, threads: int = 0) -> Train:
    """The ``params.Train`` of a fine-tuning: training's mild augmentation, no EMA."""
    from ..params import Runtime

    return Train(seed=settings.seed, network=network,
                 optimisation=Optimisation(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                                           weight_decay=1e-4, dice_weight=1.0, ce_weight=1.0, ema_decay=0.0,
                                           ef_weight=0.0, es_weight=0.0),
                 augment=Augment(rotation_deg=10, scale=0.1, gamma=0.2, blur_sigma_px=0.0, noise_std=0.05),
                 runtime=Runtime(device=device, threads=threads, processes=1, parallel_members=1, precision=precision))


def fine_tune(models: list[PhaseStack], sets: dict[int, tuple], config: Train, device: str, log=None) -> list[dict]:
    """Train each member further on ``sets[phases_per_input]`` = ((train images, labels), (kept-aside
    images, labels)) in that member's input order; returns per member {state_dict, history}."""
    results = []
    for member, model in enumerate(models):
        seed_everything(config.seed + member, device)
        train_set, aside = sets[model.phases_per_input]
        member_config = dataclasses.replace(config, seed=config.seed + member)
        trainer = SiteTrainer(model, train_set, aside, member_config, device,
                              (lambda epoch, row, m=member: log(m, epoch, row)) if log else None)
        state, _, history = trainer.run()
        results.append({"state_dict": state, "history": history})
    return results
