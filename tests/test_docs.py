"""What README and the repository's own files say holds: every documented command is one that
exists and parses (the cheap ones are run), params.yaml is the composition of conf/, the profiles
are valid, DVC's metric view stays readable, the plot page needs no network, and README's results
are the records' numbers."""

import html.parser
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from echoef import cli, params, records

from conftest import CAMUS_2019, ROOT, echoef_in_process

README = (ROOT / "README.md").read_text()
VENV_BIN = Path(sys.executable).parent


def documented_commands() -> list[list[str]]:
    """Every command line of README's indented code blocks (4 spaces), comments dropped."""
    commands = []
    for line in README.splitlines():
        if line.startswith("    ") and not line.startswith("     ") and line.strip():
            text = line.strip().split("  #")[0].strip()
            if text.split()[0] in {"make", "echoef", "dvc", "source", "python"}:
                commands.append(shlex.split(text))
    return commands


# Placeholders of README's examples and a cheap stand-in for each.
PLACEHOLDERS = {"ROOT": str(CAMUS_2019), "PATIENT_DIR": str(CAMUS_2019 / "patient0001"), "PRED_DIR": str(CAMUS_2019),
                "DIR": "/tmp/echoef-doc-out", "NAME": "study", "/path/to/CAMUS_public": str(CAMUS_2019)}


def test_every_documented_command_exists_and_parses(tmp_path):
    commands = documented_commands()
    programs = {c[0] for c in commands}
    assert {"make", "echoef", "dvc"} <= programs and len(commands) >= 15
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M))
    for command in commands:
        words = [PLACEHOLDERS.get(w, w) for w in command]
        if words[0] == "make":
            assert set(words[1:]) <= targets, command
        elif words[0] == "source":
            assert words[1] == ".venv/bin/activate", command
        elif words[0] == "echoef":
            args = [w for w in words[1:] if w not in ("[", "]", "...") and not w.startswith("[") and not w.endswith("]")]
            if args != ["--help"]:  # that one is run below
                cli.parser().parse_args(args)  # SystemExit (a failed test) on a flag or choice that does not exist
        elif words[0] == "dvc":
            sub = [w for w in words[1:3] if not w.startswith("-")]
            result = subprocess.run([str(VENV_BIN / "dvc"), *sub, "--help"], cwd=ROOT, capture_output=True, text=True)
            assert result.returncode == 0, (command, result.stderr[-300:])
            # Every parameter a documented `-S` sets exists: composed and validated as `dvc exp run` would.
            overrides = [w.strip("'\"") for flag, w in zip(words, words[1:]) if flag == "-S"]
            # A sweep (key=a,b) is several runs of the same keys: its first value stands for them all.
            overrides = [o.split(",")[0] if re.match(r"^[^={]+=[^{\[]*,", o) else o for o in overrides]
            if overrides:
                out = tmp_path / "params.yaml"
                params.compose(out, [o.replace("=/path/to/CAMUS_public", f"={CAMUS_2019}") for o in overrides], ROOT)
                folds = params.load(out).split.folds
                if folds > 1:  # DVC itself makes one stage of each kind per fold from these params
                    fold_stages = {s for s in dvc_stage_names(tmp_path) if "_fold@" in s}
                    assert fold_stages == {f"{kind}_fold@{fold}" for kind in ("train", "infer", "ef")
                                           for fold in params.fold_ids(folds)}, command


def dvc_stage_names(folder: Path) -> list[str]:
    """The stages `dvc` makes of the repository's dvc.yaml with ``folder``'s params.yaml."""
    (folder / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    dvc = str(VENV_BIN / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-f", "-q"], cwd=folder, check=True)
    listed = subprocess.run([dvc, "stage", "list", "--name-only"], cwd=folder, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def test_the_cheap_documented_commands_run(tmp_path):
    assert subprocess.run([str(VENV_BIN / "echoef"), "--help"], cwd=tmp_path, capture_output=True).returncode == 0
    result = echoef_in_process("ef", CAMUS_2019, "--out", tmp_path / "ef.csv")
    assert result.returncode == 0 and "5 patients: 5 ok" in result.stdout
    assert echoef_in_process("results", "--results", ROOT / "results").stdout == records.results_table(ROOT / "results") + "\n"


def test_params_yaml_is_the_composition_of_conf(tmp_path):
    params.compose(tmp_path / "params.yaml", [], ROOT)
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("profile", ["synthetic", "camus-cpu", "camus-gpu"])
def test_each_profile_composes_into_valid_params(profile):
    loaded = params.load_profile(profile, ROOT)  # what the benchmarks measure: conf/ composed
    assert loaded.profile == profile
    assert (loaded.data.root == "data/phantom") == (profile == "synthetic")


def test_an_unknown_profile_is_named_with_the_known_ones():
    with pytest.raises(params.ParamsError, match="no profile 'camus-cpx'.*camus-cpu, camus-gpu, synthetic"):
        params.load_profile("camus-cpx", ROOT)


def test_dvc_metrics_show_stays_readable():
    """At most 30 columns on the default run (DVC keeps scalars only: intervals as two of them)."""
    result = subprocess.run([str(VENV_BIN / "dvc"), "metrics", "show", "--json"], cwd=ROOT, capture_output=True, text=True)
    shown = json.loads(result.stdout)

    def keys(node, prefix=""):
        if isinstance(node, dict):
            return {k for key, value in node.items() for k in keys(value, f"{prefix}{key}.")}
        return {prefix.rstrip(".")}

    columns = set().union(*(keys(data["data"]) for revision in shown.values() for data in revision["data"].values()))
    assert len(columns) <= 30, sorted(columns)
    assert {"mae", "mae_low", "mae_high", "r", "r_low", "r_high", "n_failed"} <= columns


class Resources(html.parser.HTMLParser):
    """Every resource a page loads: src and href of its tags (script bodies are not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        self.found += [(tag, value) for name, value in attrs if name in ("src", "href") and value]


def remote_resources(page: Path) -> list:
    parser = Resources()
    parser.feed(page.read_text())
    remote = [(t, v) for t, v in parser.found if re.match(r"^(https?:)?//", v)]
    missing = [(t, v) for t, v in parser.found if not re.match(r"^(https?:|//|data:|#)", v) and not (page.parent / v).exists()]
    return remote + missing


def test_dvc_plots_show_needs_no_network(tmp_path):
    result = subprocess.run([str(VENV_BIN / "dvc"), "plots", "show", "-o", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    page = tmp_path / "index.html"
    assert remote_resources(page) == [] and page.read_text().count("<script>") >= 3  # vega, vega-lite, vega-embed inside
    assert "vega-embed" in page.read_text() and "https://cdn" not in page.read_text().split("<body>")[1]


def test_readme_and_the_results_page_are_the_records_numbers():
    assert records.with_readme_block(README, ROOT / "results") == README, "run: echoef results --readme README.md"
    assert records.results_page(ROOT / "results") == (ROOT / "docs/benchmarks.md").read_text(), \
        "run: echoef results --page docs/benchmarks.md"
    # Outside the generated block and code, README states no EF agreement figure of its own.
    prose = README.replace(README[README.index(records.BEGIN):README.index(records.END)], "")
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("    "))
    assert not re.findall(r"(MAE|Dice|\br) (of |= )?\d\.\d", prose)


def test_the_calibrator_decision_follows_the_rule_from_a_records_numbers(tmp_path):
    comparison = {"n": 399, "ridge_folds": 5, "mae": {"none": 5.1, "linear": 4.25, "isotonic": 4.4, "ridge": 4.1},
                  "ridge_minus_linear": {"n": 399, "mean": -0.15, "ci": [-0.31, 0.02]}}
    (tmp_path / "oof/reports").mkdir(parents=True)
    (tmp_path / "no-cv/reports").mkdir(parents=True)
    (tmp_path / "no-cv/reports/ef_full.json").write_text(json.dumps({"test": {}}))

    def lines(ci):
        (tmp_path / "oof/reports/ef_full.json").write_text(json.dumps(
            {"cv": {"calibrators": {**comparison, "ridge_minus_linear": {"n": 399, "mean": -0.15, "ci": ci}}}}))
        return records.calibrator_lines(tmp_path)

    [line] = lines([-0.31, 0.02])  # one sentence: the record without cross-validation has none
    assert "record `oof` (399 patients, ridge fitted in 5 folds)" in line
    assert "EF MAE none 5.10, linear 4.25, isotonic 4.40, ridge 4.10" in line
    assert "ridge minus linear -0.15 [-0.31, +0.02]" in line and line.endswith("the linear calibrator stays.")
    assert lines([-0.31, -0.01])[0].endswith("ridge is adopted.")
    assert not records.ridge_adopted({"ridge_minus_linear": {"ci": [float("nan"), float("nan")]}})
    assert lines([None, None])[0].endswith("[-, -] points per patient, so by the rule written before the run (ridge only "
                                           "if that interval lies wholly below zero) the linear calibrator stays.")
    assert lines([-0.31, -0.01])[0] in records.readme_block(tmp_path)


def test_a_runs_own_outputs_leave_the_commit_clean_and_code_changes_do_not(tmp_path):
    from echoef import machine

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": "x", "outs": ["models/m.pt", {"metrics/m.json": {"cache": False}}]},
        "fold": {"foreach": [0, 1], "do": {"cmd": "x", "outs": ["data/fold_${item}/ef.csv"]}}}}))
    for name in ("params.yaml", "dvc.lock", "metrics/m.json", "data/fold_1/ef.csv", "code.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("before")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    for name in ("params.yaml", "dvc.lock", "metrics/m.json", "data/fold_1/ef.csv"):
        (tmp_path / name).write_text("a run wrote this")
    assert machine.commit(tmp_path) == head
    (tmp_path / "code.py").write_text("edited")
    assert machine.commit(tmp_path) == head + "+modified"


# How a stage reports, times itself and writes its files atomically, not what it computes: editing
# these re-runs nothing (a re-run of training costs an hour on a CPU).
NOT_A_RESULT = {"echoef/errors.py", "echoef/stage.py", "echoef/io.py", "echoef/machine.py"}


def test_each_stage_depends_on_its_script_and_the_modules_it_calls():
    import ast

    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        script = next(word for word in body["cmd"].split() if word.startswith("stages/"))
        modules = set()
        for node in ast.walk(ast.parse((ROOT / script).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "echoef":
                modules |= {f"echoef/{alias.name}.py" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("echoef."):
                modules.add(node.module.replace(".", "/") + ".py")
        assert modules and all((ROOT / module).is_file() for module in modules), script
        missing = sorted(({script} | modules) - NOT_A_RESULT - set(body["deps"]))
        assert not missing, f"dvc.yaml stage {name} runs {script} but does not depend on {missing}"
