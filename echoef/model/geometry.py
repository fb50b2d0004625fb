"""Letterbox a frame onto the square network grid and map predictions back to its native grid.

The only resizing code of the project. The frame's physical field of view is scaled to fit the
grid with the same mm per grid pixel on both axes (so anisotropic pixels become square and the
heart keeps its shape), then padded; ``to_native`` inverts exactly that mapping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional


@dataclass(frozen=True)
class Letterbox:
    """Where a native (rows, cols) frame sits on the size x size grid."""

    native_shape: tuple[int, int]
    size: int
    top: int
    left: int
    height: int
    width: int

    def as_dict(self) -> dict:
        """Plain-dict form for saving beside predictions."""
        return asdict(self)


def letterbox(shape: tuple[int, int], spacing_mm: tuple[float, float], size: int) -> Letterbox:
    """The placement of a frame of ``shape`` and (row, col) spacing on a size x size grid."""
    extent_mm = np.array(shape, dtype=float) * np.asarray(spacing_mm, dtype=float)
    mm_per_grid_pixel = extent_mm.max() / size
    height, width = np.clip(np.round(extent_mm / mm_per_grid_pixel).astype(int), 1, size)
    top, left = (size - height) // 2, (size - width) // 2
    return Letterbox(tuple(int(n) for n in shape), size, int(top), int(left), int(height), int(width))


def to_grid(image: np.ndarray, box: Letterbox) -> torch.Tensor:
    """Resample a native image (H, W) onto the grid (bilinear, antialiased), zero-padded: (size, size)."""
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    resized = functional.interpolate(tensor, size=(box.height, box.width), mode="bilinear", align_corners=False, antialias=True)
    grid = torch.zeros((1, 1, box.size, box.size), dtype=torch.float32)
    grid[..., box.top : box.top + box.height, box.left : box.left + box.width] = resized
    return grid[0, 0]


def labels_to_grid(label: np.ndarray, box: Letterbox) -> torch.Tensor:
    """Resample a native label map onto the grid by nearest neighbour: (size, size) int64."""
    tensor = torch.as_tensor(np.asarray(label, dtype=np.float32))[None, None]
    resized = functional.interpolate(tensor, size=(box.height, box.width), mode="nearest-exact")
    grid = torch.zeros((1, 1, box.size, box.size), dtype=torch.float32)
    grid[..., box.top : box.top + box.height, box.left : box.left + box.width] = resized
    return grid[0, 0].long()


def to_native(scores: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """Map per-class grid scores (C, size, size) back to the native grid (C, H, W), bilinear."""
    crop = scores[:, box.top : box.top + box.height, box.left : box.left + box.width]
    return functional.interpolate(crop[None].float(), size=box.native_shape, mode="bilinear", align_corners=False)[0]
