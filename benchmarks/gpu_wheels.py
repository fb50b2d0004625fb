"""The wheels a CUDA machine lacks to run the pipeline, for that machine's Python and platform, in one
folder for `gpu_record.py --wheels` (a machine that reaches no package registry).

    python benchmarks/gpu_wheels.py --out WHEELS --python-version 3.12 [--installed FREEZE] [--glibc 2.28] [--leave av]

What goes in: each pin of requirements.txt that the machine lacks (torch and torchvision never: the
machine's CUDA build stays), and what those need in turn that the machine lacks or has at a version
they do not accept, each at the version installed here (`make setup` first: the versions this
project is tested with). FREEZE is the machine's `python3 -m pip list --format freeze` (or one name
a line where versions are not known); without it the machine is taken to have nothing but torch,
which is safe but carries every wheel. The needs are read from the metadata installed here, with
their markers evaluated for the machine's Python and Linux, not from a registry: no resolver runs
against the machine's torch. Wheels only; a package published only as source is built here into a
wheel if it is pure Python, and refused otherwise. WHEELS/manifest.json lists what came and its size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_record import HEAVY, ROOT, distribution_name, lacking, pinned_requirements  # noqa: E402


def target_environment(python_version: str) -> dict[str, str]:
    """The marker environment (PEP 508) of CPython ``python_version`` on x86-64 Linux."""
    return {**default_environment(), "python_version": python_version, "python_full_version": f"{python_version}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "implementation_version": f"{python_version}.0"}


def read_installed(path: Path | None) -> dict[str, str | None]:
    """{normalised name: version, or None where the list gives none} of a `pip list --format freeze`
    or a list of names, one a line."""
    if path is None:
        return {name: None for name in HEAVY}
    found = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        found[distribution_name(name.split("@")[0].strip())] = version.strip() or None
    return found


def local_metadata(name: str) -> tuple[str, list[str]]:
    """(version, Requires-Dist lines) of a distribution installed here."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError as error:
        raise SystemExit(f"gpu_wheels: {name} is not installed here; run `make setup` first") from error
    return dist.version, list(dist.requires or [])


def needed(missing: list[tuple[str, str]], machine: dict[str, str | None], environment: dict[str, str],
           metadata_of=local_metadata) -> dict[str, str]:
    """{name: version} of every distribution to carry: ``missing`` (name, version) and, through each
    one's requirements whose markers hold on the machine (extras followed), every need that is
    neither torch/torchvision nor on the ``machine`` at a version it accepts. Versions are those
    ``metadata_of`` gives (the ones installed here); a need whose version here it does not accept
    is an error, as pip would find it."""
    carry: dict[str, str] = {}
    queue = [(name, version, frozenset()) for name, version in missing]
    seen: set[tuple[str, frozenset]] = set()
    while queue:
        name, version, extras = queue.pop()
        key = (distribution_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        have, requires = metadata_of(name)
        if version is not None and have != version:
            raise SystemExit(f"gpu_wheels: {name} {have} is installed here, {version} is wanted; run `make setup` first")
        carry[distribution_name(name)] = have
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                    requirement.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras)):
                continue
            dependency = distribution_name(requirement.name)
            if dependency in HEAVY:
                continue
            if dependency in machine:
                there = machine[dependency]
                if there is None or requirement.specifier.contains(Version(there), prereleases=True):
                    continue
            local_version, _ = metadata_of(requirement.name)
            if not requirement.specifier.contains(Version(local_version), prereleases=True):
                raise SystemExit(f"gpu_wheels: {name} needs {requirement}, {local_version} is installed here")
            queue.append((requirement.name, None, frozenset(requirement.extras)))
    return dict(sorted(carry.items()))


def platforms(glibc: str) -> list[str]:
    """pip's --platform tags of x86-64 Linux with glibc ``glibc`` or older (pip matches each tag exactly)."""
    major, minor = (int(part) for part in glibc.split("."))
    return [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)] + ["manylinux2014_x86_64", "manylinux2010_x86_64",
                                                                             "manylinux1_x86_64"]


def download(carry: dict[str, str], out: Path, python_version: str, glibc: str) -> list[str]:
    """Fetch each wheel into ``out`` (binary only, for the machine); a package without a wheel is built
    here, and kept only if pure Python (its wheel then runs anywhere). The names that failed."""
    pins = [f"{name}=={version}" for name, version in carry.items()]
    flags = ["--no-deps", "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
             *[x for tag in platforms(glibc) for x in ("--platform", tag)], "-d", str(out)]
    if subprocess.run([sys.executable, "-m", "pip", "download", "-q", *flags, *pins]).returncode == 0:
        return []
    failed = []
    for pin in pins:  # one at a time, to name the ones without a wheel
        if subprocess.run([sys.executable, "-m", "pip", "download", "-q", *flags, pin], capture_output=True).returncode == 0:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, pin], capture_output=True)
            wheels = list(Path(tmp).glob("*-py3-none-any.whl")) + list(Path(tmp).glob("*-py2.py3-none-any.whl"))
            if built.returncode == 0 and wheels:
                for wheel in wheels:
                    (out / wheel.name).write_bytes(wheel.read_bytes())
                continue
        failed.append(pin)
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the wheels folder (created)")
    parser.add_argument("--python-version", required=True, help="the machine's Python, e.g. 3.12")
    parser.add_argument("--installed", type=Path, help="the machine's `pip list --format freeze` (or names, one a line)")
    parser.add_argument("--glibc", default="2.28", help="the machine's glibc: wheels for it or older (default 2.28)")
    parser.add_argument("--leave", action="append", default=[], metavar="NAME",
                        help="a requirement not to carry (as gpu_record.py --leave; e.g. av: the stages read no video)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be carried, fetch nothing")
    args = parser.parse_args(argv)
    machine = read_installed(args.installed)
    missing, kept, _ = lacking(pinned_requirements(ROOT / "requirements.txt"), machine, tuple(args.leave))
    carry = needed(missing, machine, target_environment(args.python_version))
    for name, have, pinned in kept:
        print(f"the machine's {name} {have or '(version not known)'} is used (requirements.txt pins {pinned})")
    print(f"{len(carry)} distributions to carry: {' '.join(f'{n}=={v}' for n, v in carry.items())}")
    if args.dry_run:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    failed = download(carry, args.out, args.python_version, args.glibc)
    wheels = sorted(args.out.glob("*.whl"))
    manifest = {"python_version": args.python_version, "glibc": args.glibc, "machine_list": str(args.installed) if args.installed else None,
                "distributions": carry, "wheels": {w.name: w.stat().st_size for w in wheels},
                "left": args.leave, "total_mib": round(sum(w.stat().st_size for w in wheels) / 2**20, 1), "failed": failed}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(wheels)} wheels, {manifest['total_mib']} MiB in {args.out}" + (f"; no wheel for: {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
