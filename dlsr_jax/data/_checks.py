"""Argument checks shared by the data modules."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np


def check_pos_int(value: Any, name: str, allow_zero: bool = False) -> None:
  ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
  if not ok or value < (0 if allow_zero else 1):
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"{name} must be a {kind} int, got {value!r}")


def check_rows(rows: Tuple[int, int], n: int, source: str) -> None:
  start, stop = rows
  if not 0 <= start < stop <= n:
    raise ValueError(f"rows [{start}, {stop}) out of range for {source!r} with {n} images "
                     "(need 0 <= start < stop <= N)")
