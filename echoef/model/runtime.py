"""Where the network runs and in what precision, and seeding: what does not change what a CPU run
computes, only where and how fast."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch

from ..errors import DeviceError


def resolve_device(name: str) -> str:
    """'cuda' if asked for (or 'auto' and available), else 'cpu'."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.runtime.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def has_native_bf16(device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU with bf16 units (Ampere or newer)
    or a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower than float32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch offers these CPU checks only as private helpers; where one is missing, answer no (float32 is safe).
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """bfloat16 where the network runs in mixed precision, None for float32: 'bf16' always, 'auto' on
    hardware with native bf16 (``has_native_bf16``), 'fp32' never. Warns if 'bf16' will be emulated."""
    native = has_native_bf16(device)
    if precision == "bf16" and not native:
        # Measured on CPU: about 2 times slower than float32 with AVX512 alone, 11 times with AVX2.
        warnings.warn(f"bf16 on {torch.device(device).type} without native bfloat16 is emulated and slower than "
                      "float32; set train.runtime.precision / infer.precision to auto or fp32", stacklevel=3)
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and native) else None


def precision_name(precision: str, device) -> str:
    """What ``precision`` runs as on ``device``, for logs: 'bf16' or 'float32' (resolves 'auto')."""
    return "bf16" if autocast_dtype(precision, device) else "float32"


def autocast(precision: str, device) -> torch.autocast:
    """The autocast context for ``precision`` on ``device``; a disabled one for float32."""
    dtype = autocast_dtype(precision, device)
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def seed_everything(seed: int, device: str = "cpu") -> None:
    """Seed Python, numpy and torch. On CPU ask for deterministic kernels (runs repeat bit for bit);
    on CUDA let cuDNN pick its fastest kernels instead (seeded, not bitwise repeatable)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cuda = torch.device(device).type == "cuda"
    torch.use_deterministic_algorithms(not cuda, warn_only=True)
    torch.backends.cudnn.benchmark = cuda


def start_processes(device: str) -> tuple[str, bool, int]:
    """Under torchrun with several processes: one process group, one GPU per process (or gloo on
    CPU). Returns (this process's device, whether it writes the outputs, the number of processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, True, 1
    import torch.distributed as distributed

    distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return device, distributed.get_rank() == 0, distributed.get_world_size()


def end_processes(world: int) -> None:
    """Leave the process group ``start_processes`` joined (nothing with one process)."""
    if world > 1:
        import torch.distributed as distributed

        distributed.destroy_process_group()

