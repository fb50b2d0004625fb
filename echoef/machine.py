"""What a timing or a result was measured on: CPU model and the instruction sets that change speed
and numbers (AVX2, AVX-512, AVX512-BF16, AMX), GPU, Python and the project's commit."""

from __future__ import annotations

import fnmatch
import os
import platform
import re
import subprocess
from pathlib import Path

from . import runfiles

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu() -> dict:
    """{'model', 'cores', 'flags'} of this machine's CPU (Linux /proc/cpuinfo; the platform's words elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def pipeline_files(repo: Path = Path(".")) -> list[str]:
    """Paths a pipeline run rewrites, as fnmatch patterns: params.yaml, dvc.lock and every output
    dvc.yaml declares (``${...}`` of a templated one as ``*``)."""
    import yaml

    try:
        stages = yaml.safe_load((Path(repo) / "dvc.yaml").read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return [str(runfiles.PARAMS), str(runfiles.LOCK)]
    paths = [str(runfiles.PARAMS), str(runfiles.LOCK)]
    for stage in stages.values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind, []):
                paths.append(re.sub(r"\$\{[^}]*\}", "*", out if isinstance(out, str) else next(iter(out))))
    return paths


def commit(repo: Path = Path(".")) -> str:
    """The checked-out commit, '+modified' when a tracked file differs from it; the files a pipeline
    run rewrites (``pipeline_files``) do not count, so a run's own record names a clean commit."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                                 text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    outputs = pipeline_files(repo)
    dirty = [line[3:] for line in changed
             if not any(fnmatch.fnmatch(line[3:], out) or fnmatch.fnmatch(line[3:], out.rstrip("/") + "/*") for out in outputs)]
    return head + ("+modified" if dirty else "")


def environment(device: str = "cpu") -> dict:
    """What a run's numbers depend on besides the code and parameters: CPU (model, instruction sets),
    GPU, Python and torch."""
    import torch

    gpu = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None
    return {"cpu": cpu(), "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__}


def describe() -> str:
    """One line for a benchmark's output: CPU, cores, flags, Python."""
    info = cpu()
    return (f"{info['model']}, {info['cores']} cores, flags {' '.join(info['flags']) or 'none of ' + ', '.join(CPU_FLAGS)}; "
            f"Python {platform.python_version()}")
