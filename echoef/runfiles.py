"""The files of a pipeline run, named once: what the DVC stages write (dvc.yaml spells the same paths
in its cmds and outs; a test checks each against it), and what the command line, the run records and
the benchmarks read from a finished run. Paths are relative to the run's workspace."""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
LOCK = Path("dvc.lock")
INGESTED = Path("data/ingested")  # one frame file per patient (framefile.patient_path), cohort.csv, exclusions.csv
COHORT = INGESTED / "cohort.csv"
SPLIT = Path("data/split.json")
PREDICTIONS = Path("data/predictions")  # one frame file of predicted labels per patient
SEGMENTATION_DICE = Path("data/segmentation_dice.csv")
EF_TABLE = Path("data/ef.csv")
EF_CV_TABLE = Path("data/ef_cv.csv")
CV_FOLDS = Path("data/cv")  # data/cv/<fold>/...
FOLD_REVIEW_SIGNALS = Path("predictions/review_signals.csv")  # in a fold's folder: its out-of-fold patients' review signals
MODEL = Path("models/segmenter.pt")
TRAIN_LOG = Path("models/train_log.json")
CALIBRATOR = Path("models/calibrator.json")
NOVELTY = Path("models/novelty.json")  # the unlike-training reference and threshold (model.novelty)
NOVELTY_FEATURES = Path("data/novelty_features.csv")
EF_METRICS = Path("metrics/ef.json")
EF_CV_METRICS = Path("metrics/ef_cv.json")
SEGMENTATION_METRICS = Path("metrics/segmentation.json")
SEGMENTATION_CV_METRICS = Path("metrics/segmentation_cv.json")
INGEST_METRICS = Path("metrics/ingest.json")
EF_FULL = Path("reports/ef_full.json")
SEGMENTATION_FULL = Path("reports/segmentation_full.json")
SEGMENTATION_CV_FULL = Path("reports/segmentation_cv_full.json")

# What a run record keeps of a finished run (records.make): its parameters, lock, metrics, full
# statistics, calibrator, unlike-training reference and training log; the per-patient table is made from EF_TABLE.
RECORDED = (PARAMS, LOCK, EF_METRICS, EF_CV_METRICS, SEGMENTATION_METRICS, SEGMENTATION_CV_METRICS, INGEST_METRICS,
            EF_FULL, SEGMENTATION_FULL, SEGMENTATION_CV_FULL, CALIBRATOR, NOVELTY, TRAIN_LOG)
