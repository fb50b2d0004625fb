"""Command line: ``python -m echoef ef ROOT --out FILE.csv`` and ``python -m echoef predict ...``.

Exit status: 0 when at least one study was measured, 1 when none was, 2 for a usage error (reported
as one line before any work is done). One bad study never stops a batch: it gets a status.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from .. import runfiles
from ..errors import CheckpointError, DeviceError, ParamsError, StudyError, UsageError
from ..io import camus, imagefile
from ..io.atomic import check_ownable, claim_folder, read_json, text_column, write_csv, write_json, write_text
from ..io.untrusted import read_bounded
from ..measure import review, simpson
from ..measure.ef import VIEW_COLUMNS, is_measured, label_maps, patient_ef
from ..params import PRECISIONS, Infer, build
from . import batch

DEFAULT_CALIBRATOR = runfiles.CALIBRATOR
EF_COLUMNS = ["patient", "method", "edv_ml", "esv_ml", "ef", "ef_ref", "status", *VIEW_COLUMNS, "detail"]
PREDICT_COLUMNS = ["patient", "method", "edv_ml", "esv_ml", "ef", "ef_calibrated", "ef_low", "ef_high", "status", "review", "novelty_score",
                   "frames", "cine", "beats", "ef_beat_mean", "ef_beat_sd", "n_beats", "ef_ref", "ed_ref_frame", "es_ref_frame",
                   "ed_error_frames", "es_error_frames", "beat_error_frames", *VIEW_COLUMNS, "detail", "made_by"]
# The columns of a predict row that hold text; every other holds a number or nothing (read_row checks).
TEXT_COLUMNS = {"patient", "method", "status", "review", "frames", "cine", "beats", "detail", "made_by"}


def measure_folder(folder: Path, labels: Path | None, method: str, repeated: dict[Path, str]) -> dict:
    """The `ef` row of one patient folder (module level: worker processes run it)."""
    if folder in repeated:
        raise StudyError("duplicate_patient", f"same patient number as {repeated[folder]}")
    study = camus.read_study(folder, labels_dir=labels)
    ef_ref, note = camus.reference_ef(study.info, study.cfg_error)
    return {"patient": study.patient, **patient_ef(label_maps(study.frames), method), "ef_ref": ef_ref, "detail": note}


def ef_command(args) -> int:
    """EF of every patient folder under ROOT from its masks (expert, or ``--labels`` elsewhere)."""
    if not args.root.is_dir():
        raise UsageError(f"{args.root} is not a folder (give the CAMUS root holding database_nifti/ or patient folders)")
    if args.labels is not None and not args.labels.is_dir():
        raise UsageError(f"--labels {args.labels} is not a folder")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    out = batch.replaceable_file(args.out, "--out", "an EF table this command wrote", _is_ef_table)
    folders = camus.find_patients(args.root)
    if not folders:
        raise UsageError(f"no patientXXXX folder under {args.root}")
    measure = functools.partial(measure_folder, labels=args.labels, method=args.method, repeated=camus.duplicates(folders))
    rows = batch.each_study(folders, _folder_name, measure, "ef", workers=args.jobs)
    table = pd.DataFrame(rows, columns=EF_COLUMNS)
    table["method"] = args.method
    write_csv(out, table)
    print(f"ef: {batch.summary_line(table, 'patients')}; written to {out}")
    return batch.exit_status(table)


def _is_ef_table(path: Path) -> bool:
    """Whether a file is a table ``ef`` wrote (its header line is the EF table's)."""
    return batch.head_text(path).split("\n", 1)[0].strip() == ",".join(EF_COLUMNS)


def _is_calibrator(path: Path) -> bool:
    """Whether a file is a calibrator (one ``--calibrator`` would take), which site-calibrate may replace."""
    try:
        _calibrator(path)
        return True
    except UsageError:
        return False


def _folder_name(folder: Path) -> str:
    return folder.name


def _studies(args) -> list:
    """The studies asked for: patient folders, files named per view and phase or per view (a loop),
    and the DICOM files of --dicom grouped by patient and study. Two studies of one name are refused
    (both would write DIR/<name>/), the later one as a status."""
    from ..io import echonet
    from .studies import StudyFiles, from_dicom_folder, from_echonet, from_folder, read_views

    studies = []
    for folder in args.inputs:
        studies += from_echonet(folder, args.split) if echonet.file_list(folder) else [from_folder(folder)]
    if args.split and not any(echonet.file_list(folder) for folder in args.inputs):
        raise UsageError("--split chooses the videos of an EchoNet-Dynamic folder (FileList.csv, Videos/); none was given")
    phases = {key: path for key, path in ((("2CH", "ED"), args.a2c_ed), (("2CH", "ES"), args.a2c_es),
                                          (("4CH", "ED"), args.a4c_ed), (("4CH", "ES"), args.a4c_es)) if path}
    loops = {view: path for view, path in (("2CH", args.a2c), ("4CH", args.a4c)) if path}
    if phases or loops:
        studies.append(StudyFiles(args.patient, phases=phases, loops=loops))
    if args.dicom:
        if not args.dicom.is_dir():
            raise UsageError(f"--dicom {args.dicom} is not a folder")
        studies += from_dicom_folder(args.dicom, read_views(args.views))
    seen = set()
    for study in studies:
        if study.name.casefold() in seen:  # casefold: one folder on a case-insensitive file system
            study.problem = StudyError("duplicate_study", f"another study given is also named {study.name}")
        seen.add(study.name.casefold())
    return studies


def _phase_frames(values: list[str]) -> dict[str, tuple[int, int]]:
    """--phase-frames 2CH:ED:ES values -> {view: (ED, ES)}."""
    given = {}
    for value in values or []:
        view, _, rest = value.upper().partition(":")
        ed, _, es = rest.partition(":")
        if view not in camus.VIEWS or not batch.is_index(ed) or not batch.is_index(es):
            raise UsageError(f"--phase-frames {value}: give VIEW:ED:ES, e.g. 2CH:0:14 (frame indices from 0)")
        given[view] = (int(ed), int(es))
    return given


def _calibrator(path: Path) -> dict:
    from ..stats import calibration

    try:
        return calibration.validate(read_json(path))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UsageError(f"--calibrator {path}: refused: {str(error).splitlines()[0][:200]}") from error


def _novelty(path: Path | None, model: Path) -> dict | None:
    """The unlike-training reference: the file given (refused if unusable), else the bundle's (with
    --model DIR) or the workspace run's (with its model file), else None: no study is then flagged as
    unlike the training data, and predict says so."""
    from ..model import novelty

    if path is None:
        path = model / "novelty.json" if model.is_dir() else runfiles.NOVELTY
        if not path.is_file():
            print("warning: no unlike-training reference (a bundle's novelty.json, or --novelty): "
                  "studies are not checked against the training data", file=sys.stderr)
            return None
    try:
        return novelty.validate(read_json(path))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UsageError(f"--novelty {path}: refused: {str(error).splitlines()[0][:200]}") from error


def predict_command(args) -> int:
    """Segment new studies with the trained model; label maps, EF (raw and calibrated), overlays."""
    # torch and the network are imported here, where they are needed: `echoef ef` and `--help` stay light.
    from ..model.network import load_checkpoint, model_fingerprint
    from ..model.runtime import precision_name, resolve_device
    from ..stats import calibration
    from .predict import predict_study

    studies = _studies(args)
    if not studies:
        raise UsageError("give patient folders, image files (--2ch-ed/--2ch-es/--4ch-ed/--4ch-es), loops (--2ch/--4ch) "
                         "or a folder of DICOM files (--dicom)")
    low, high = imagefile.SPACING_RANGE_MM  # what every reader accepts from a file, so from the user too
    if args.spacing_mm is not None and not all(math.isfinite(s) and low <= s <= high for s in args.spacing_mm):
        raise UsageError(f"--spacing-mm {args.spacing_mm}: give two pixel sizes (row, column) in mm, each from {low} to {high}")
    check_ownable(args.out, "--out")  # a folder of someone else's is refused before anything else
    phase_frames = _phase_frames(args.phase_frames)
    if args.batch_size < 1:  # checked before any work, so that the message names the flag and not params.yaml
        raise UsageError(f"--batch-size {args.batch_size}: give the number of frames per batch, 1 or more")
    studies = batch.shard(studies, args.shard, lambda s: s.name)
    device = resolve_device(args.device)
    models, state = load_checkpoint(args.model, device)
    bundled = args.model / "calibrator.json"
    calibrator_name = bundled if args.model.is_dir() and args.calibrator is None else args.calibrator or DEFAULT_CALIBRATOR
    calibrator = _calibrator(calibrator_name)
    reference = _novelty(args.novelty, args.model)
    config = build(Infer, {"batch_size": args.batch_size, "tta": args.tta, "tta_scales": [1.0], "precision": args.precision})
    size = state["model_config"]["input_size"]
    out = claim_folder(batch.writable_folder(args.out))  # only once every argument is known to be usable

    if state.get("trained_on", {}).get("synthetic"):
        print(f"warning: {args.model} was trained on the synthetic cohort only: its EF on real studies means nothing",
              file=sys.stderr)
    if note := review.wide_interval(calibrator):
        print(f"warning: {calibrator_name}: {note}", file=sys.stderr)

    settings = {"model": model_fingerprint(args.model), "calibrator": calibration.fingerprint(calibrator),
                "novelty": calibration.fingerprint(reference or {}),
                "tta": config.tta, "precision": precision_name(config.precision, device), "device": device,
                "spacing_mm": args.spacing_mm, "code": _code_version()}

    def predict(study) -> dict:
        done = batch.study_row_path(out, study.name)
        given = {**(study.traced_frames if args.traced_frames else {}), **phase_frames}
        made_by = made_by_key(settings, {view: given.get(view) for view in sorted(study.loops)})
        if done.is_file() and not args.force and read_row(done).get("made_by") == made_by:
            return read_row(done)  # written by an earlier run with the same model and settings: resumed
        row = {**predict_study(study, models, size, calibrator, config, out, args.spacing_mm, given, reference), "made_by": made_by}
        write_json(done, row)
        return row

    table = pd.DataFrame(batch.each_study(studies, lambda s: s.name, predict, "predict"), columns=PREDICT_COLUMNS)
    write_summary(table, out, "summary" if args.shard is None else f"summary-{args.shard.replace('/', '-of-')}")
    agreement = write_cohort_report(table, out) if args.shard is None else None
    print(f"predict: {batch.summary_line(table, 'studies')}; in {out}" + ("" if args.shard is None else
          f" (shard {args.shard}; echoef merge {out} joins the shards)") + unlike_line(table) + agreement_line(agreement))
    return batch.exit_status(table)


def _code_version() -> str:
    """The installed package's version (a source tree run without installing has none)."""
    try:
        return version("echoef")
    except PackageNotFoundError:
        return "not installed"


def made_by_key(settings: dict, study_settings: dict) -> str:
    """What made a study's row, as 16 hex digits: the model's and calibrator's fingerprints, the code's
    version, and every setting that changes its numbers. A resumed run reuses a row only if it matches."""
    content = json.dumps({**settings, "study": study_settings}, sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def write_summary(table: pd.DataFrame, folder: Path, name: str) -> None:
    """A predict summary as ``folder/<name>.csv`` and the same rows as ``<name>.json``."""
    write_csv(folder / f"{name}.csv", table)
    write_json(folder / f"{name}.json", table.to_dict(orient="records"))


def write_cohort_report(table: pd.DataFrame, folder: Path) -> dict | None:
    from ..reporting.cohort import write_cohort_report as write  # matplotlib only where a report is drawn

    return write(table, folder)


def unlike_line(table: pd.DataFrame) -> str:
    """How many studies were flagged as unlike the training data ('' when none was)."""
    count = int(text_column(table, "review").str.contains("unlike_training").sum())
    return f"; {count} unlike the training data (review)" if count else ""


def agreement_line(report: dict | None) -> str:
    """The headline of a cohort's agreement report for the command's last line ('' without one)."""
    if not report or "ef" not in report:
        return ""
    s = report["ef"]
    return f"; against the given reference EF: MAE {s['mae']:.1f}, bias {s['bias']:+.1f}, r {s['r']:.2f} (n {s['n']}; agreement.md)"


def read_row(path: Path) -> dict:
    """A study's row file as ``predict`` wrote it (``DIR/<study>/<study>_row.json``), or a row whose
    status says why it cannot be used (a truncated or hand-edited file, a row of another study)."""
    study = path.parent.name
    try:
        row = read_json(path)
        if not isinstance(row, dict) or not isinstance(row.get("status"), str):
            raise ValueError("not a row of predict")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        return {"patient": study, "status": "unreadable_row", "detail": f"{path.name}: {str(error)[:150]}"}
    if row.get("patient") != study:
        return {"patient": study, "status": "unreadable_row",
                "detail": f"{path.name} is the row of {str(row.get('patient'))[:80]!r}, not of the folder it is in"}
    if wrong := [column for column in PREDICT_COLUMNS if not _row_value_fits(column, row.get(column))]:
        return {"patient": study, "status": "unreadable_row",
                "detail": f"{path.name}: {', '.join(wrong)[:120]} not of the kind predict writes (a number or empty, or text)"}
    return {column: row.get(column) for column in PREDICT_COLUMNS}


def _row_value_fits(column: str, value) -> bool:
    """Whether a row file's value is what predict writes in that column: text (at most 64 kB) in a
    text column, a finite number (not true/false) in a number column, or nothing."""
    if value is None:
        return True
    if column in TEXT_COLUMNS:
        return isinstance(value, str) and len(value) <= 1 << 16
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def merge_command(args) -> int:
    """One summary of every study written under DIR (by the shards of a cohort, or by resumed runs):
    one row per study folder, whatever its row file holds."""
    if not args.folder.is_dir():
        raise UsageError(f"{args.folder} is not a folder (give the --out of predict)")
    claim_folder(args.folder, "merge")
    paths = sorted(args.folder.glob("*/*_row.json"))
    paths = [path for path in paths if path.name == f"{path.parent.name}_row.json"]
    if not paths:
        raise UsageError(f"no study under {args.folder} (predict writes DIR/<study>/<study>_row.json)")
    table = pd.DataFrame([read_row(path) for path in paths], columns=PREDICT_COLUMNS)
    made_by = set(table["made_by"].dropna())
    if len(made_by) > 1:
        print(f"warning: the rows were made by {len(made_by)} different models, calibrators or settings "
              "(column made_by); predict --force into one folder makes them alike", file=sys.stderr)
    write_summary(table, args.folder, "summary")
    agreement = write_cohort_report(table, args.folder)
    print(f"merge: {batch.summary_line(table, 'studies')}; in {args.folder / 'summary.csv'}" + agreement_line(agreement))
    return batch.exit_status(table)


def site_command(args) -> int:
    """A site's own calibrator from a table of its studies' predicted and reference EF."""
    from .. import domain
    from ..stats import agreement, calibration

    try:
        table = pd.read_csv(io.BytesIO(read_bounded(args.table)))
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UsageError(f"{args.table}: not a readable CSV table ({str(error).splitlines()[0][:150]})") from error
    missing = [column for column in ("ef", "ef_ref") if column not in table]
    if missing:
        raise UsageError(f"{args.table}: needs the columns ef (predicted, as predict writes it) and ef_ref (the site's "
                         f"reference); {', '.join(missing)} missing")
    for column in ("ef", "ef_ref"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    usable = table["ef"].between(0, 100) & table["ef_ref"].between(0, 100)
    if "status" in table:
        usable &= table["status"].astype(str).map(is_measured)
    table = table[usable]
    if "patient" in table:  # a study counted twice would sit on both sides of the cross-fitting
        repeated = sorted(set(table.loc[table["patient"].duplicated(), "patient"].astype(str)))
        if repeated:
            raise UsageError(f"{args.table}: {len(repeated)} stud{'y' if len(repeated) == 1 else 'ies'} in more than one row "
                             f"({', '.join(repeated[:3])}{', ...' if len(repeated) > 3 else ''}); keep one row per study "
                             "(tables of shards joined twice?)")
    methods = set(table["method"].astype(str)) if "method" in table else set()
    if len(methods) > 1 or not methods <= set(domain.EF_METHODS):
        raise UsageError(f"{args.table}: rows of {len(methods)} EF methods ({', '.join(sorted(methods))[:120]}); "
                         "a calibrator is for one method: keep the rows of one")
    if not 0.5 <= args.level <= 0.999:
        raise UsageError(f"--level {args.level}: give the interval's coverage, from 0.5 to 0.999")
    try:
        calibrator, report = agreement.site_calibrator(table, args.method, args.level)
        calibration.validate(calibrator)
    except ValueError as error:
        raise UsageError(f"{args.table}: {str(error).splitlines()[0][:200]}") from error
    out = batch.replaceable_file(args.out, "--out", "a calibrator", _is_calibrator)
    write_json(out, {**calibrator, "fingerprint": calibration.fingerprint(calibrator)})
    diff = report["after_minus_before"]
    half = calibrator["interval"].get("half_width")
    print(f"site-calibrate: {args.method} on {report['n']} studies ({calibrator['ef_method']}); cross-fitted EF MAE "
          f"{report['mae_before']:.2f} -> {report['mae_after']:.2f} (after - before {diff['mean']:+.2f} "
          f"[{diff['ci'][0]:+.2f}, {diff['ci'][1]:+.2f}] per study); {100 * args.level:.0f}% interval "
          + (f"± {half:.1f}" if half is not None else "none (too few studies)") + f"; written to {out}")
    return batch.EXIT_OK


def site_tune_command(args) -> int:
    """A bundle fine-tuned on a site's traced studies, judged on studies kept aside."""
    from ..model.finetune import FineTune
    from ..model.runtime import resolve_device
    from .site import site_tune

    if not args.inputs:
        raise UsageError("give the site's traced studies: CAMUS-layout patient folders (with _gt label maps) or an "
                         "EchoNet-Dynamic folder (with VolumeTracings.csv)")
    if not (1 <= args.epochs <= 200 and 0 < args.lr <= 0.1 and 0.1 <= args.aside <= 0.5):
        raise UsageError("--epochs 1-200, --lr above 0 up to 0.1, --aside 0.1-0.5 (the share of studies kept aside to judge by)")
    check_ownable(args.out, "--out", replace=True)
    batch.writable_folder(args.out.absolute().parent)  # the bundle itself appears whole, or not at all
    out = args.out
    settings = FineTune(epochs=args.epochs, lr=args.lr, seed=args.seed)
    report = site_tune(args.inputs, args.model, out, settings, args.aside, resolve_device(args.device), args.precision)
    d = report["lv_dice_after_minus_before"]
    ef_text = (f"; EF MAE {report['ef_mae_before']:.1f} -> {report['ef_mae_after']:.1f} on {report['n_with_reference_ef']}"
               if report["n_with_reference_ef"] else "")
    print(f"site-tune: trained on {report['n_trained']} studies, judged on {report['n_aside']} kept aside: LV Dice "
          f"{report['lv_dice_before']:.3f} -> {report['lv_dice_after']:.3f} ({d['mean']:+.3f} [{d['ci'][0]:+.3f}, "
          f"{d['ci'][1]:+.3f}]){ef_text}; {'better' if report['better'] else 'NOT shown better: keep the base bundle'}; "
          f"bundle in {out}")
    return batch.EXIT_OK


def export_command(args) -> int:
    """A portable bundle of the workspace's trained run."""
    from .bundle import export

    check_ownable(args.out, "--out", replace=True)  # before any work: a user's folder is never replaced
    out = batch.writable_folder(args.out)
    export(out, args.model, args.calibrator or DEFAULT_CALIBRATOR, args.train_log, args.params, args.metrics, args.full,
           args.novelty)
    print(f"export: bundle in {out} (weights.safetensors, model.json, calibrator.json, MODEL_CARD.md); "
          f"use it with: echoef predict ... --model {out}")
    return batch.EXIT_OK


def record_command(args) -> int:
    """A run record of the workspace's finished run under RESULTS/NAME."""
    from ..reporting import records

    out = records.make(args.name, args.workspace, args.results, args.run_command, args.replace)
    print(f"record: {out}")
    return batch.EXIT_OK


def results_command(args) -> int:
    """The run records as a Markdown table; with --readme / --page, README's results block and the
    current-results page rewritten from them."""
    from ..reporting import records

    if not args.results.is_dir():
        raise UsageError(f"{args.results} is not a folder of run records")
    if args.readme:
        try:
            readme = records.with_readme_block(args.readme.read_text(), args.results)
        except OSError as error:
            raise UsageError(f"--readme {args.readme}: {error.strerror or error}") from error
        except ValueError as error:  # str.index: a marker is missing
            raise UsageError(f"--readme {args.readme} has no generated results block ({records.BEGIN} ... "
                             f"{records.END}); add the two lines where the table belongs") from error
        write_text(args.readme, readme)
    if args.page:
        page = batch.replaceable_file(args.page, "--page", "a results page this command wrote",
                                      lambda path: records.is_results_page(batch.head_text(path)))
        write_text(page, records.results_page(args.results))
    if not (args.readme or args.page):
        print(records.results_table(args.results))
    return batch.EXIT_OK


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="echoef", description="EchoEF: LV ejection fraction from apical echo",
                                          epilog="exit status: 0 some study measured, 1 none measured, 2 usage error")
    commands = main_parser.add_subparsers(dest="command", required=True)
    ef = commands.add_parser("ef", help="EF from the masks of a CAMUS-layout folder (2019 or 2023 release)")
    ef.add_argument("root", type=Path, help="CAMUS root (holding database_nifti/ or patient folders)")
    ef.add_argument("--out", type=Path, required=True, help="CSV to write")
    ef.add_argument("--labels", type=Path, default=None,
                    help="folder of predicted masks named like the expert ones (patientXXXX/patientXXXX_2CH_ED_gt.nii.gz)")
    ef.add_argument("--method", default="simpson_biplane", choices=simpson.METHODS)
    ef.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes to share the patients (default and most: one per core)")
    predict = commands.add_parser("predict", help="segment new studies and estimate EF with the trained pipeline")
    predict.add_argument("inputs", type=Path, nargs="*",
                         help="CAMUS-layout patient folders (2019 or 2023), or an EchoNet-Dynamic folder (FileList.csv, "
                              "Videos/, VolumeTracings.csv): each video a 4CH loop, with an agreement report")
    for view in camus.VIEWS:
        predict.add_argument(f"--{view.lower()}", dest=f"a{view[0]}c", type=Path,
                             help=f"a {view} cine loop (multi-frame DICOM, a NIfTI/MetaImage sequence, or a video: AVI, MP4, MOV, MKV, "
                                  "WebM): ED and ES found by LV area")
    predict.add_argument("--phase-frames", action="append", metavar="VIEW:ED:ES",
                         help="a loop's ED and ES frame indices instead of finding them, e.g. 2CH:0:14")
    predict.add_argument("--traced-frames", action="store_true",
                         help="measure each loop on the ED and ES frames its site traced (EchoNet-Dynamic VolumeTracings.csv) "
                              "instead of finding them")
    predict.add_argument("--split", help="only the videos of this Split of an EchoNet-Dynamic folder (e.g. TEST)")
    predict.add_argument("--dicom", type=Path, help="a folder of DICOM files: one study per patient and study UID")
    predict.add_argument("--views", type=Path,
                         help="CSV (file, view) naming the view of each DICOM file whose name does not say it (2ch, a2c, 4ch, a4c)")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    for view, phase in camus.FRAME_KEYS:
        predict.add_argument(f"--{view.lower()}-{phase.lower()}", dest=f"a{view[0]}c_{phase.lower()}", type=Path,
                             help=f"a {view} {phase} image file (NIfTI, MetaImage; PNG/JPEG/TIFF/BMP with --spacing-mm)")
    predict.add_argument("--patient", default="study", help="name for the study given as files")
    predict.add_argument("--spacing-mm", type=float, nargs=2, metavar=("ROW", "COL"),
                         help="pixel size of image files that carry none (PNG, JPEG, TIFF, BMP); headers keep their own")
    predict.add_argument("--model", type=Path, default=runfiles.MODEL, help="a model file, or a bundle folder of echoef export")
    predict.add_argument("--calibrator", type=Path, help=f"default: the bundle's with --model DIR, else {DEFAULT_CALIBRATOR}")
    predict.add_argument("--novelty", type=Path, help="the unlike-training reference (novelty.json): default the bundle's "
                                                      f"with --model DIR, else {runfiles.NOVELTY}")
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--tta", action="store_true", help="average over three image gammas (test-time augmentation)")
    predict.add_argument("--force", action="store_true", help="predict studies already written in DIR again (default: resume)")
    predict.add_argument("--shard", metavar="I/N", help="only this share of the studies (0 <= I < N), for N copies in parallel")
    predict.add_argument("--precision", default="auto", choices=PRECISIONS,
                         help="bf16: mixed precision (auto: bf16 where the GPU or CPU has native bfloat16, else float32)")
    site = commands.add_parser("site-calibrate", help="a site's own calibrator from its studies' predicted and reference EF")
    site.add_argument("table", type=Path, help="CSV with ef (predicted) and ef_ref (the site's reference), e.g. predict's "
                                               "summary.csv with a column added; status and method are used when present")
    site.add_argument("--out", type=Path, required=True, help="the calibrator (JSON) for predict --calibrator and export")
    site.add_argument("--method", default="linear", choices=("linear", "isotonic"), help="default: linear")
    site.add_argument("--level", type=float, default=0.9, help="coverage of the prediction interval (default 0.9)")
    tune = commands.add_parser("site-tune", help="fine-tune a bundle on a site's traced studies; judged on studies kept aside")
    tune.add_argument("inputs", type=Path, nargs="*", help="CAMUS-layout patient folders with label maps, or an "
                                                          "EchoNet-Dynamic folder with VolumeTracings.csv")
    tune.add_argument("--model", type=Path, required=True, help="the bundle to start from (echoef export)")
    tune.add_argument("--out", type=Path, required=True, help="the new bundle's folder")
    tune.add_argument("--epochs", type=int, default=30)
    tune.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4, a tenth of training's)")
    tune.add_argument("--aside", type=float, default=0.3, help="share of the studies kept aside to judge by (default 0.3)")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    tune.add_argument("--precision", default="auto", choices=PRECISIONS)
    merge = commands.add_parser("merge", help="join the studies written by several predict runs (shards) into one summary")
    merge.add_argument("folder", type=Path)
    export = commands.add_parser("export", help="pack the trained run (weights, calibrator, model card) into a folder")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--model", type=Path, default=runfiles.MODEL)
    export.add_argument("--calibrator", type=Path)
    export.add_argument("--train-log", type=Path, default=runfiles.TRAIN_LOG)
    export.add_argument("--novelty", type=Path, default=runfiles.NOVELTY)
    export.add_argument("--params", type=Path, default=runfiles.PARAMS)
    export.add_argument("--metrics", type=Path, default=runfiles.EF_METRICS)
    export.add_argument("--full", type=Path, default=runfiles.EF_FULL)
    record = commands.add_parser("record", help="keep a finished run's numbers as a record under results/NAME")
    record.add_argument("name")
    record.add_argument("--workspace", type=Path, default=Path("."), help="the repository that ran (default: here)")
    record.add_argument("--results", type=Path, default=Path("results"))
    record.add_argument("--command", dest="run_command", default="dvc repro",
                        help="the command that made the run, as the record will state it")
    record.add_argument("--replace", action="store_true",
                        help="make an existing record of this name again (without it an existing record is kept)")
    results = commands.add_parser("results", help="the Markdown table of the run records (or README and the results page from them)")
    results.add_argument("--results", type=Path, default=Path("results"))
    results.add_argument("--readme", type=Path, help="rewrite this README's generated results block")
    results.add_argument("--page", type=Path, help="rewrite this current-results page (docs/benchmarks.md)")
    return main_parser


COMMANDS = {"ef": ef_command, "predict": predict_command, "merge": merge_command, "site-calibrate": site_command,
            "site-tune": site_tune_command,
            "export": export_command,
            "record": record_command, "results": results_command}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ParamsError, CheckpointError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return batch.EXIT_USAGE
    except KeyboardInterrupt:
        print(f"echoef {args.command}: interrupted; rows already written are kept (predict resumes from them)", file=sys.stderr)
        return batch.EXIT_INTERRUPTED
