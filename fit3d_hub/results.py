"""Results rows: what the evaluation tree writes and the model cards read.

A results JSON is ``{"results": [row, ...], ...}`` with one row per figure:
``task``, ``dataset`` (id), ``dataset_name``, ``metric``, ``value``, ``variant`` (a model
mode or a baseline) and ``protocol``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fit3d_hub.errors import RepoFormatError
from fit3d_hub.jsonio import read_json_object
from fit3d_hub.schema import MODES

BASELINES = ("zero-motion", "identity")
"""Rows that use no learned features (eval.correspondence reports them beside the model's)."""


@dataclass(frozen=True)
class Result:
    """One measured figure."""

    task: str
    dataset: str
    dataset_name: str
    metric: str
    value: float
    variant: str = "concat"
    protocol: str = "unspecified"
    """The probe protocol ("paper", "quick"); only "paper" figures compare with the paper's."""

    def to_row(self) -> dict:
        return asdict(self)


def load_results(path: str | Path) -> list[Result]:
    """Read a results JSON; errors name the file, the row and the field."""
    path = Path(path)
    payload = read_json_object(path, missing="no such results file")
    rows = payload.get("results")
    if not isinstance(rows, list):
        raise RepoFormatError(f"{path}: expected an object with a 'results' list")
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: results[{i}]"
        if not isinstance(row, dict):
            raise RepoFormatError(f"{where}: expected an object")
        for key in ("task", "dataset", "metric"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise RepoFormatError(f"{where}: field {key!r} must be a non-empty string")
        value = row.get("value")
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            raise RepoFormatError(f"{where}: field 'value' must be a finite number; got {value!r}")
        variant = row.get("variant", "concat")
        if variant not in MODES + BASELINES:
            raise RepoFormatError(f"{where}: field 'variant' must be one of "
                                  f"{', '.join(MODES + BASELINES)}")
        protocol = row.get("protocol") or payload.get("protocol") or "unspecified"
        if not isinstance(protocol, str):
            raise RepoFormatError(f"{where}: field 'protocol' must be a string")
        out.append(Result(row["task"], row["dataset"], row.get("dataset_name") or row["dataset"],
                          row["metric"], float(value), variant, protocol))
    return out
