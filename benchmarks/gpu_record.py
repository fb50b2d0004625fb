"""One command for a GPU lent for minutes: install what is missing, run a profile through `dvc exp run`
under a deadline this script enforces itself, and always leave the logs, the run's numbers and (when
it finished) its record in the output folder.

    python3 benchmarks/gpu_record.py --out OUT [--wheels WHEELS] [--leave av] [--deadline-s 540]
                                     [--profile camus-gpu] [--data ROOT] [-S key=value ...]

It installs only what the machine lacks: the pins of requirements.txt it has no version of at all
(torch and torchvision never), each from WHEELS (benchmarks/gpu_wheels.py builds the folder for a
given machine). What the machine has at another version is kept and logged, since its numpy or
scipy may be what its torch was built with.

Made so that the two ways an earlier attempt failed cannot happen:
- The stages call `python`, which a bare machine may not have (only `python3`): this script puts
  `OUT/bin/python`, which runs the interpreter running it, first on the stages' PATH, and checks it.
- Twelve networks started at once: this script runs one `dvc exp run`, never a queue, holds a lock so
  that a second copy refuses to start, and caps `train.runtime.parallel_members` at MAX_PARALLEL.

Only the standard library is imported before the install, so it runs where torch is all there is.
Nothing in it knows about any particular lending service: it runs on any CUDA machine (or, with
--allow-cpu, on a CPU, which is how the test suite rehearses it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_PARALLEL = 2  # networks trained at once on one GPU; more has run out of memory
GRACE_S = 20  # after the deadline's SIGTERM, before SIGKILL
KEEP = ("params.yaml", "dvc.lock", "metrics", "models/train_log.json", "models/calibrator.json", "models/novelty.json",
        "reports")  # what a run leaves that is worth keeping whatever happened
SAVE_EVERY_VARIABLE, SAVE_EVERY_S = "ECHOEF_RESUME_EVERY_S", "60"  # resume.EVERY_S_VARIABLE (not importable before the install)
HEAVY = ("torch", "torchvision")  # installed with the machine's CUDA; never replaced from the wheels


class Log:
    """Every line to stdout and OUT/gpu_record.log; OUT/status.json rewritten at every step."""

    def __init__(self, out: Path):
        self.out, self.path, self.status = out, out / "gpu_record.log", {"steps": []}

    def line(self, text: str) -> None:
        stamped = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(stamped, flush=True)
        with open(self.path, "a") as handle:
            handle.write(stamped + "\n")

    def step(self, name: str, **facts) -> None:
        self.status["steps"].append({"step": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts})
        tmp = self.out / ".status.json.tmp"
        tmp.write_text(json.dumps(self.status, indent=2) + "\n")
        os.replace(tmp, self.out / "status.json")


def python_link(out: Path) -> Path:
    """OUT/bin holding `python`, a two-line script that runs this very interpreter by its own path:
    the stages' `python` whatever the machine has. Not a symbolic link: an interpreter started through
    a link outside its virtual environment does not find that environment's packages."""
    folder = out / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    return folder


def stage_environment(out: Path) -> dict:
    """The environment the stages run in: ``python_link`` first on PATH, then this interpreter's
    folder (its `dvc`); and the training's save interval (echoef/model/resume.py reads it) at
    ``SAVE_EVERY_S`` unless the caller set one, so that a run the deadline cut short and started again
    on the same machine (which keeps the git-ignored state folder) loses at most that much training."""
    path = f"{python_link(out)}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {SAVE_EVERY_VARIABLE: SAVE_EVERY_S, **os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}


def run_logged(command: list[str], log: Log, env: dict, cwd: Path, deadline: float | None = None) -> tuple[int, bool]:
    """Run ``command`` in its own process group, its output into the log line by line; at ``deadline``
    (a time.monotonic value) the group gets SIGTERM, then SIGKILL after GRACE_S. (status, timed out)."""
    log.line("$ " + " ".join(command))
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    timed_out = False
    descriptor = process.stdout.fileno()
    os.set_blocking(descriptor, False)  # raw bytes, read as they come: a text wrapper cannot read a non-blocking pipe
    buffer = ""
    while True:
        try:
            chunk = os.read(descriptor, 1 << 16).decode("utf-8", errors="replace")
        except BlockingIOError:
            chunk = ""
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        for text in lines:
            log.line("  " + text.split("\r")[-1][:500])
        if process.poll() is not None and not chunk:
            break
        if deadline is not None and time.monotonic() > deadline and not timed_out:
            timed_out = True
            log.line("deadline reached: stopping the run (SIGTERM, then SIGKILL)")
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if not chunk:
            time.sleep(0.2)
    if buffer:
        log.line("  " + buffer[:500])
    return process.wait(), timed_out


def distribution_name(text: str) -> str:
    """A distribution's name as pip compares them (PEP 503): case, '-', '_' and '.' alike."""
    return re.sub(r"[-_.]+", "-", text).lower()


def pinned_requirements(path: Path) -> list[tuple[str, str]]:
    """(name, version) of each ``name==version`` line of a requirements file, torch and torchvision
    left out: the machine's own CUDA build of those stays."""
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and "==" in line and distribution_name(line.split("==")[0].strip()) not in HEAVY:
            name, version = (part.strip() for part in line.split("==", 1))
            pins.append((name, version))
    return pins


def lacking(pins: list[tuple[str, str]], installed: dict[str, str | None], leave: tuple[str, ...] = ()
            ) -> tuple[list[tuple[str, str]], list[tuple[str, str | None, str]], list[tuple[str, str]]]:
    """What to install: the pins whose distribution the machine lacks altogether, less those named in
    ``leave``; what is kept, (name, the machine's version or None if not known, the pinned one) for
    each installed at another version; and what is left out as asked. A GPU machine's numpy, pandas
    or scipy were built with its torch and are not replaced: replacing them would need their wheels
    too, and could break what imports them there."""
    leave = {distribution_name(name) for name in leave}
    missing, kept, left = [], [], []
    for name, version in pins:
        if distribution_name(name) not in installed:
            (left if distribution_name(name) in leave else missing).append((name, version))
        elif installed[distribution_name(name)] != version:
            kept.append((name, installed[distribution_name(name)], version))
    return missing, kept, left


def installed_distributions() -> dict[str, str]:
    """{normalised name: version} of what this interpreter has installed."""
    from importlib import metadata

    return {distribution_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
            if dist.metadata["Name"]}


def install_lacking(wheels: Path | None, leave: tuple[str, ...], installed: dict[str, str | None], log: Log, env: dict,
                    deadline: float | None = None) -> int:
    """Install from ``wheels`` the pins of requirements.txt the machine lacks (``lacking``), less the
    names in ``leave``; then this project, if the stages could not import it. Logged and stepped
    ('install'); pip's status (1 when something is missing and there is no wheels folder)."""
    missing, kept, left = lacking(pinned_requirements(ROOT / "requirements.txt"), installed, leave)
    left = [f"{name}=={version}" for name, version in left]
    for name, have, pinned in kept:
        log.line(f"kept the machine's {name} {have or '(version not known)'} (requirements.txt pins {pinned})")
    if left:
        log.line(f"left out as asked (--leave): {', '.join(left)}")
    status = 0
    if missing and wheels is None:
        log.line(f"missing, and no --wheels to install them from: {', '.join(f'{n}=={v}' for n, v in missing)}")
        status = 1
    elif missing:
        # Only what is missing, at its pin; pip takes each one's own needs from the machine where it
        # has them and from the wheels otherwise (benchmarks/gpu_wheels.py builds such a folder).
        status, _ = run_logged([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
                                *[f"{name}=={version}" for name, version in missing]], log, env, ROOT, deadline)
    if status == 0 and importlib.util.find_spec("echoef") is None:  # the stages import it, PYTHONPATH counted
        status, _ = run_logged([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                                "-e", str(ROOT)], log, env, ROOT, deadline)
    log.step("install", status=status, installed=[f"{n}=={v}" for n, v in missing], left=left,
             kept=[{"name": n, "machine": have, "pinned": pinned} for n, have, pinned in kept])
    return status


# Prints the train.runtime.parallel_members that the profile and overrides ask for (argv: repo, overrides).
PARALLEL_ASKED = """
import sys, tempfile
from pathlib import Path
from echoef import params
with tempfile.TemporaryDirectory() as tmp:
    params.compose(Path(tmp) / "params.yaml", sys.argv[2:], Path(sys.argv[1]))
    print(params.load(Path(tmp) / "params.yaml").train.runtime.parallel_members)
"""


def capped(asked: int, log: Log) -> list[str]:
    """The override that keeps the networks trained at once at MAX_PARALLEL or fewer ([] when the
    parameters ask no more)."""
    if asked <= MAX_PARALLEL:
        return []
    log.line(f"train.runtime.parallel_members {asked} asked: {MAX_PARALLEL} at most at once on one GPU")
    return [f"train.runtime.parallel_members={MAX_PARALLEL}"]


def keep_outputs(workspace: Path, out: Path, log: Log) -> list[str]:
    """Copy what the run left (KEEP) into OUT/run/; the names copied."""
    copied = []
    for name in KEEP:
        source = workspace / name
        target = out / "run" / name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        else:
            continue
        copied.append(name)
    log.line(f"kept in {out / 'run'}: {', '.join(copied) or 'nothing (the run made none of it)'}")
    return copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="logs, status.json, the run's numbers and its record")
    parser.add_argument("--wheels", type=Path, help="a folder of wheels to install what is missing from (pip --no-index)")
    parser.add_argument("--leave", action="append", default=[], metavar="NAME",
                        help="a requirement not to install though missing (e.g. av: the stages read no video)")
    parser.add_argument("--deadline-s", type=float, default=540, help="the whole command's time, install included")
    parser.add_argument("--profile", default="camus-gpu")
    parser.add_argument("--data", help="the CAMUS folder (data.root), if not the profile's")
    parser.add_argument("--name", default=None, help="the experiment's and record's name (default: the profile's)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a rehearsal)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="a parameter, as dvc exp run -S takes it")
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.deadline_s
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        print(f"gpu_record: {lock} exists: another run is using {out} (remove the file if none is)", file=sys.stderr)
        return 2
    os.write(descriptor, str(os.getpid()).encode())
    os.close(descriptor)
    log = Log(out)
    name = args.name or args.profile
    try:
        env = stage_environment(out)
        found = subprocess.run(["python", "-c", "import sys; print(sys.prefix)"], env=env, capture_output=True, text=True)
        log.line(f"python on the stages' PATH runs in: {found.stdout.strip() or found.stderr.strip()[:200]}")
        log.step("python", ok=found.returncode == 0 and found.stdout.strip() == sys.prefix)
        if not log.status["steps"][-1]["ok"]:
            return 1
        if install_lacking(args.wheels, tuple(args.leave), installed_distributions(), log, env, deadline):
            return 1
        check = ("import torch, echoef, dvc; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), "
                 "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')")
        status, _ = run_logged([sys.executable, "-c", check], log, env, ROOT)
        cuda = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"], env=env,
                              capture_output=True, text=True).stdout.strip() == "True"
        log.step("environment", status=status, cuda=cuda)
        if status or not (cuda or args.allow_cpu):
            log.line("no CUDA GPU (give --allow-cpu to rehearse on a CPU)" if not status else "the environment does not import")
            return 1
        overrides = [f"profile={args.profile}", *([f"data.root={args.data}"] if args.data else []), *args.overrides]
        asked = subprocess.run([sys.executable, "-c", PARALLEL_ASKED, str(ROOT), *overrides], env=env, capture_output=True, text=True)
        if asked.returncode:
            log.line(f"the parameters do not compose: {asked.stderr.strip().splitlines()[-1][:300] if asked.stderr.strip() else '?'}")
            log.step("parameters", status=asked.returncode)
            return 1
        overrides += capped(int(asked.stdout.strip()), log)
        command = [sys.executable, "-m", "dvc", "exp", "run", "-n", name, *[x for o in overrides for x in ("-S", o)]]
        status, timed_out = run_logged(command, log, env, ROOT, deadline - 30)  # 30 s left to keep what it made
        log.step("dvc exp run", status=status, timed_out=timed_out, seconds=round(time.monotonic() - start))
        keep_outputs(ROOT, out, log)
        if status == 0 and not timed_out:
            status, _ = run_logged([sys.executable, "-m", "echoef", "record", name, "--results", str(out / "results"), "--replace",
                                    "--command", "python3 benchmarks/gpu_record.py " + " ".join(sys.argv[1:] if argv is None else argv)],
                                   log, env, ROOT)
            log.step("record", status=status)
        return 0 if status == 0 and not timed_out else 1
    finally:
        log.line(f"done in {time.monotonic() - start:.0f} s; logs and status in {out}")
        lock.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
