"""What README and the repository's own files say holds: every documented command is one that
exists and parses (the cheap ones are run), params.yaml is the composition of conf/, the profiles
are valid, DVC's metric view stays readable, the plot page needs no network, and README's results
are the records' numbers."""

import html.parser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import echoef
from echoef import params
from echoef.app import cli, codedeps
from echoef.reporting import records

from conftest import CAMUS_2019, ROOT, SHARED, echoef_in_process

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
            assert {w for w in words[1:] if "=" not in w} <= targets, command  # VAR=value sets a make variable
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


def test_the_calibrator_default_sentence_is_the_rules_choice_from_the_records_numbers(tmp_path):
    def decision(ci):
        return {"record": "results/oof-run", "current": "linear on val", "n_out_of_fold": 349, "out_of_fold": {
            "linear on val": {"mae": 4.52, "minus_current": {"n": 349, "mean": 0.0, "ci": [0.0, 0.0]}},
            "none": {"mae": 4.31, "minus_current": {"n": 349, "mean": -0.21, "ci": ci}}}}
    (tmp_path / "default").mkdir()
    (tmp_path / "default/calibrator_decision.json").write_text(json.dumps(decision([-0.4, 0.02])))
    [line] = records.calibrator_default_lines(tmp_path)
    assert line == ("Calibrator default, record `default`: on the out-of-fold predictions of the 349 training patients "
                    "of `oof-run`, EF MAE linear on val 4.52; none 4.31 (-0.21 [-0.40, +0.02]) (candidate minus current "
                    "per patient); so by the rule (a candidate only if its interval lies wholly below zero) the choice "
                    "is linear on val.")
    (tmp_path / "default/calibrator_decision.json").write_text(json.dumps(decision([-0.4, -0.02])))
    assert records.calibrator_default_lines(tmp_path)[0].endswith("the choice is none.")
    assert records.calibrator_default_lines(tmp_path)[0] in records.readme_block(tmp_path)


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


def test_each_stage_depends_on_all_the_code_it_reaches():
    """dvc.yaml's code deps are the import graph's (``make deps`` writes them): a module reached only
    through another (``overlap`` through ``segmentation``) re-runs the stage when edited."""
    found = codedeps.differences(ROOT, yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert not found, "run `make deps`: " + "; ".join(f"{name} missing {m}, superfluous {s}" for name, (m, s) in found.items())


def test_the_code_deps_follow_imports_through_other_modules():
    infer = codedeps.code_deps(ROOT, "stages/infer.py")
    assert "echoef/model/overlap.py" in infer and "echoef/io/framefile.py" in infer and "echoef/domain.py" in infer
    assert "stages/infer.py" in infer and {"echoef/errors.py", "echoef/stage.py", "echoef/model/__init__.py"} <= set(infer)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for main, fold in (("train", "train_fold"), ("infer", "infer_fold"), ("ef", "ef_fold")):  # one list per script
        code = [{d for d in stage.get("do", stage)["deps"] if codedeps.is_code(d)} for stage in (stages[main], stages[fold])]
        assert code[0] == code[1]


def test_an_independent_deps_check_finds_nothing_missing():
    """The shared checker (../shared/tools/deps_check.py: its own walk of the imports, type-checking
    and function-level imports and the packages on the way included) agrees with dvc.yaml."""
    checker = SHARED.parent / "tools" / "deps_check.py"
    result = subprocess.run([sys.executable, str(checker)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "0 missing deps" in result.stdout, result.stdout


def test_the_deps_check_names_what_a_hand_written_list_misses(tmp_path):
    for folder in ("echoef", "stages"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    document = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    document["stages"]["infer"]["deps"].remove("echoef/model/overlap.py")
    document["stages"]["infer"]["deps"].append("echoef/io/phantom.py")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(document))
    result = subprocess.run([sys.executable, "-m", "echoef.app.codedeps", "dvc.yaml", "--check"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "infer: missing ['echoef/model/overlap.py']; superfluous ['echoef/io/phantom.py']" in result.stdout
    subprocess.run([sys.executable, "-m", "echoef.app.codedeps", "dvc.yaml"], cwd=tmp_path, check=True, capture_output=True)
    assert subprocess.run([sys.executable, "-m", "echoef.app.codedeps", "dvc.yaml", "--check"], cwd=tmp_path).returncode == 0


def test_dvc_reruns_a_stage_when_a_module_it_reaches_only_through_others_changes(tmp_path):
    """In a copy: the infer stage committed as up to date, then one line of echoef/model/overlap.py (imported
    by segmentation, never by stages/infer.py) changed: `dvc status` names infer, and not ingest."""
    for folder in ("echoef", "stages", "conf"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in ("infer", "ingest"):  # stand-ins for their inputs and outputs: only the code is compared
        for entry in stages[stage]["deps"] + [next(iter(o)) if isinstance(o, dict) else o
                                              for key in ("outs", "metrics") for o in stages[stage].get(key, [])]:
            path = tmp_path / str(entry).replace("${data.root}", "data/phantom")
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                if entry.endswith((".py", ".json", ".ok", ".pt", ".csv")):
                    path.write_text("stand-in")
                else:
                    path.mkdir()
                    (path / "x").write_text("stand-in")
    dvc = str(VENV_BIN / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=tmp_path, check=True)
    for stage in ("infer", "ingest"):
        subprocess.run([dvc, "commit", "-f", "-q", stage], cwd=tmp_path, check=True, capture_output=True)

    def status(stage):
        out = subprocess.run([dvc, "status", stage, "--json"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    assert status("infer") == {} and status("ingest") == {}
    overlap = tmp_path / "echoef" / "model" / "overlap.py"
    overlap.write_text(overlap.read_text() + "\n# an edit\n")
    changed = status("infer")
    assert "infer" in changed and {"changed deps": {"echoef/model/overlap.py": "modified"}} in changed["infer"]
    assert status("ingest") == {}


def test_the_layer_contract_refuses_a_wrong_way_import(tmp_path):
    """`make lint` keeps the layers: in a copy, the file-writing module importing the command line breaks it."""
    shutil.copytree(ROOT / "echoef", tmp_path / "echoef", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = [str(VENV_BIN / "lint-imports"), "--no-cache"]
    assert subprocess.run(lint, cwd=tmp_path, capture_output=True, env={"PYTHONPATH": str(tmp_path)}).returncode == 0
    io_module = tmp_path / "echoef" / "io" / "atomic.py"
    io_module.write_text(io_module.read_text() + "\n\ndef _wrong_way():\n    from ..app import cli  # noqa: F401\n")
    result = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1 and "echoef.io.atomic -> echoef.app.cli" in result.stdout


def test_the_design_module_map_names_every_module():
    text = (ROOT / "docs/design.md").read_text()
    mapped, folder = set(), ""
    for line in text.split("    echoef/\n", 1)[1].split("    stages/", 1)[0].splitlines():
        if match := re.match(r"^      (\w+)/ ", line):
            folder = match.group(1) + "/"
        elif match := re.match(r"^      \(root\)", line):
            folder = ""
        elif match := re.match(r"^ +(\w+)\.py ", line):
            mapped.add(folder + match.group(1))
    modules = {str(path.relative_to(ROOT / "echoef").with_suffix("")) for path in (ROOT / "echoef").rglob("*.py")
               if path.stem != "__init__"}
    assert mapped == modules, f"docs/design.md misses {sorted(modules - mapped)}, names gone {sorted(mapped - modules)}"


def test_the_run_files_are_the_ones_dvc_yaml_writes():
    """Each file of echoef/runfiles.py that a stage writes is an out (or metric) of a dvc.yaml stage,
    spelled the same in its cmd: the CLI, records and benchmarks read what the pipeline writes."""
    from echoef import runfiles

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    written = {}
    for name, stage in stages.items():
        for key in ("outs", "metrics"):
            for out in stage.get(key, []):
                written[str(next(iter(out)) if isinstance(out, dict) else out)] = (name, stage["cmd"])
    named = {key: str(value) for key, value in vars(runfiles).items() if key.isupper() and isinstance(value, Path)}
    # the inputs and lock, a file inside an out, a folder of folds, a file inside each fold's out
    not_outs = {"PARAMS", "LOCK", "COHORT", "CV_FOLDS", "FOLD_REVIEW_SIGNALS"}
    for key, path in named.items():
        if key in not_outs:
            continue
        assert path in written, f"runfiles.{key} = {path} is no output of dvc.yaml"
        assert path in written[path][1], f"stage {written[path][0]} writes {path} but its cmd does not name it"
    assert str(runfiles.COHORT).startswith(str(runfiles.INGESTED) + "/")
    fold_signals = f"{runfiles.CV_FOLDS}/${{key}}/{runfiles.FOLD_REVIEW_SIGNALS}"
    assert fold_signals in stages["infer_fold"]["do"]["cmd"]
    assert any(fold_signals.startswith(f"{out}/") for out in stages["infer_fold"]["do"]["outs"])
    assert all(isinstance(path, Path) and str(path) in named.values() for path in runfiles.RECORDED)


def test_scripts_of_the_flat_layout_still_import():
    """`echoef.camus` and `from echoef import network` find the moved modules themselves (no copies)."""
    code = ("import echoef.camus, echoef.io.camus\nfrom echoef import network\nfrom echoef.ef import patient_ef\n"
            "import echoef.model.network, echoef.measure.ef\n"
            "assert echoef.camus is echoef.io.camus and network is echoef.model.network\n"
            "assert patient_ef is echoef.measure.ef.patient_ef and echoef.io.camus.__spec__.name == 'echoef.io.camus'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    moved = {path.stem for folder in ("app", "reporting", "stats", "model", "measure", "io") for path in (ROOT / "echoef" / folder).glob("*.py")}
    # Every module of the flat layout is found by its old name (io.py became the io package: it cannot keep
    # its name); modules written since were never flat.
    assert set(echoef.MOVED) <= moved - {"__init__", "atomic"} and len(echoef.MOVED) == 32
