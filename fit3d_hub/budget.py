"""The memory budget: sizes that come from a file or a flag are checked before allocation.

A 2 KB config.json can declare a model of a terabyte, an 80 KB PNG a 9000x9000 image, a
small pickle gigabytes of inflated tensors. Every such size is estimated first and compared
with one budget, ``FIT3D_HUB_MAX_BYTES`` (default 16 GiB; ``"64GiB"``, ``"500MB"`` or a
byte count), so hostile or mistaken input fails in one line instead of exhausting memory.
"""

from __future__ import annotations

import os
import re

from fit3d_hub.errors import BudgetError, UsageError

ENV = "FIT3D_HUB_MAX_BYTES"
DEFAULT = 16 * 2**30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, where: str = ENV) -> int:
    """``"16GiB"``, ``"500MB"``, ``"1e9"`` or ``"1024"`` as a byte count."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    try:
        if match is None:
            raise ValueError
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    except (ValueError, KeyError):
        raise UsageError(f"{where}: expected a size such as 16GiB, 500MB or 1000000; "
                         f"got {text!r}") from None
    if not value >= 1 or value == float("inf"):
        raise UsageError(f"{where}: expected a positive size; got {text!r}")
    return int(value)


def memory_budget() -> int:
    """The budget in bytes (``FIT3D_HUB_MAX_BYTES``, else 16 GiB)."""
    raw = os.environ.get(ENV)
    return parse_bytes(raw) if raw else DEFAULT


def human(nbytes: float) -> str:
    """``nbytes`` with a binary unit, for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_bytes(nbytes: float, where: str, what: str) -> None:
    """Raise :class:`BudgetError` naming ``where`` (a file and field, or a flag) when
    ``what`` would need more than the budget."""
    budget = memory_budget()
    if nbytes > budget:
        raise BudgetError(f"{where}: {what} needs about {human(nbytes)}, over the memory "
                          f"budget of {human(budget)} (set {ENV} to raise it)")
