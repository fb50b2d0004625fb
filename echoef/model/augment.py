"""Training augmentation on the network grid: small rotations and scalings about the sector apex,
gamma, gain, blur and noise; and the gamma that test-time augmentation reuses."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.nn import functional

from .network import apply_gamma

if TYPE_CHECKING:  # the type of its configuration only: augmenting loads no parameters
    from ..params import Augment


def gaussian_blur(images: torch.Tensor, sigma_px: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each image of (N, C, H, W) by its own Gaussian sigma (N,) in pixels (0: unchanged), with
    a kernel truncated at ``radius`` pixels and edges replicated."""
    n, c, height, width = images.shape
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma_px.clamp(min=1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    flat = images.reshape(1, n * c, height, width)
    flat = functional.conv2d(functional.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    flat = functional.conv2d(functional.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, height, width)


def augment(images: torch.Tensor, labels: torch.Tensor, config: Augment, generator: torch.Generator,
            phases_per_input: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random small rotation/scaling about the sector apex, gamma, gain, blur and noise, per input
    (the ``phases_per_input`` consecutive frames of one input share their draws, as they share a probe).

    images (N, 1, S, S) float, labels (N, S, S) long; draws come from ``generator``, which lives on
    the images' device (no host round trip per batch).
    """
    n = images.shape[0]

    def uniform(low, high):
        draws = torch.rand(n // phases_per_input, generator=generator, device=generator.device)
        return (low + (high - low) * draws).repeat_interleave(phases_per_input)

    angle = uniform(-1, 1) * math.radians(config.rotation_deg)
    scale = 1 + uniform(-1, 1) * config.scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Rotate and scale about the top centre of the grid (the probe, (x, y) = (0, -1) in
    # affine_grid's coordinates): input = A (output - p) + p.
    theta = torch.stack([torch.stack([cos, -sin, -sin], 1), torch.stack([sin, cos, cos - 1], 1)], 1)
    grid = functional.affine_grid(theta, images.shape, align_corners=False)
    images = functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = functional.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    gamma = torch.exp(uniform(-1, 1) * config.gamma).view(n, 1, 1, 1)
    gain = (1 + 0.2 * uniform(-1, 1)).view(n, 1, 1, 1)
    images = apply_gamma(images, gamma) * gain
    if config.blur_sigma_px > 0:  # no draw when off, so runs without blur keep their random stream
        sigma_px = uniform(0, config.blur_sigma_px)
        images = gaussian_blur(images, sigma_px, math.ceil(3 * config.blur_sigma_px))
    noise = torch.randn(images.shape, generator=generator, device=generator.device)
    images = images + config.noise_std * uniform(0, 1).view(n, 1, 1, 1) * noise
    return images, labels
