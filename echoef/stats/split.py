"""Patient-level train/val/test assignment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..errors import SplitError
from ..io.atomic import remove_stage_output, text_column, write_json
from ..measure.ef import ef_class
from ..params import fold_ids


def strata(cohort: pd.DataFrame, min_count: int = 3) -> pd.Series:
    """Stratum of each patient: EF class and 2CH image quality, merged while a stratum is tiny."""
    labels = pd.Series(ef_class(cohort["ef_ref"].to_numpy()).astype(str), index=cohort.index)
    with_quality = labels + "_" + text_column(cohort, "quality_2ch")
    # Stratification needs a few patients per stratum; fall back to EF class, then to none.
    for candidate in (with_quality, labels):
        if candidate.value_counts().min() >= min_count:
            return candidate
    return pd.Series("all", index=cohort.index)


def assign(cohort: pd.DataFrame, lists: dict[str, list[str]] | None, val_fraction: float,
           test_fraction: float, seed: int) -> dict[str, list[str]]:
    """{'train','val','test'} patient lists: the dataset's own lists when given, else stratified."""
    patients = set(cohort["patient"])
    if lists is not None:
        split = {k: sorted(p for p in v if p in patients) for k, v in lists.items()}
        unlisted = patients - set().union(*split.values())
        split["train"] = sorted(set(split["train"]) | unlisted)  # ingested but unlisted: training only
    else:
        if val_fraction + test_fraction >= 1:
            raise SplitError(f"split.val_fraction + split.test_fraction = {val_fraction + test_fraction} leaves no training patient")
        rest, test = _stratified(cohort, test_fraction, seed)
        train, val = _stratified(rest, val_fraction / (1 - test_fraction), seed)
        split = {"train": sorted(train["patient"]), "val": sorted(val["patient"]), "test": sorted(test["patient"])}
    for name, members in split.items():
        if not members:
            raise SplitError(f"the split leaves the {name} set empty ({len(patients)} patients); "
                             "adjust split.val_fraction / split.test_fraction or add patients")
    if len(set().union(*split.values())) != sum(len(v) for v in split.values()):
        raise SplitError("a patient is in two sets of the split lists")
    return split


def _stratified(table: pd.DataFrame, fraction: float, seed: int):
    labels = strata(table)
    n_held = max(1, int(round(fraction * len(table))))
    stratify = labels if labels.nunique() > 1 and n_held >= labels.nunique() else None
    try:
        return train_test_split(table, test_size=n_held, random_state=seed, stratify=stratify)
    except ValueError as error:
        raise SplitError(f"cannot split {len(table)} patients ({error})") from error


def assign_folds(cohort: pd.DataFrame, patients: list[str], k: int, inner_fraction: float, seed: int) -> dict:
    """K folds over ``patients`` stratified by EF class and quality, and for each fold an inner
    validation part of its training folds (for checkpoint selection): JSON-ready dict."""
    table = cohort[cohort["patient"].isin(patients)].sort_values("patient").reset_index(drop=True)
    if len(table) < 2 * k:
        raise SplitError(f"split.folds = {k} needs at least {2 * k} train+val patients, there are {len(table)}")
    labels = strata(table, min_count=k)
    fold_of = {}
    for fold, (_, held) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(table, labels)):
        fold_of.update({p: fold for p in table["patient"].iloc[held]})
    inner_val = {}
    for fold in range(k):
        rest = table[table["patient"].map(fold_of) != fold]
        _, inner = _stratified(rest, inner_fraction, seed)
        inner_val[str(fold)] = sorted(inner["patient"])
    return {"k": k, "fold_of": fold_of, "inner_val": inner_val}


def fold_sets(folds: dict, fold: int) -> dict[str, list[str]]:
    """Training, inner-validation and held-out ('oof': predicted out of fold) patients of one fold."""
    held = sorted(p for p, f in folds["fold_of"].items() if f == fold)
    inner = folds["inner_val"][str(fold)]
    train = sorted(p for p, f in folds["fold_of"].items() if f != fold and p not in set(inner))
    return {"train": train, "val": inner, "oof": held}


def write_splits(cohort: pd.DataFrame, lists: dict[str, list[str]] | None, config, split_path: Path, folds_path: Path,
                 sets_dir: Path) -> tuple[dict, dict]:
    """The split stage's files: the train/val/test lists (the dataset's own ``lists`` if it has them,
    else stratified by ``config``, a ``params.Split``), each train+val patient's fold (``{"k": 0}``
    without cross-validation; test untouched) and one sets file per fold in ``sets_dir``."""
    sets = assign(cohort, lists, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    write_json(split_path, {**sets, "source": "database_split" if lists else "stratified"})
    k = config.folds
    folds = (assign_folds(cohort, sets["train"] + sets["val"], k, inner_fraction=config.inner_val_fraction, seed=config.seed)
             if k > 1 else {"k": 0})
    write_json(folds_path, folds)
    remove_stage_output(sets_dir, ("fold_*.json",), "--sets")
    Path(sets_dir).mkdir(parents=True)
    for fold, name in enumerate(fold_ids(folds["k"])):
        write_json(Path(sets_dir) / f"{name}.json", fold_sets(folds, fold))
    return sets, folds
