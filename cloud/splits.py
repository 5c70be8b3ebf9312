"""Which split (train / val / test) a clip belongs to: one rule for statistics and training.

The split follows the clip's `group_id` (its device or imported recording), never the clip, so
one recorder never sits on two sides. A hash rather than a stored column keeps it stable as
clips arrive: a group's first clip and its thousandth land in the same split, with no table to
keep in step.
"""

from __future__ import annotations

import hashlib
from itertools import accumulate
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
PERCENT: tuple[int, ...] = (80, 10, 10)  # of groups, in SPLITS order
_UPPER_BOUNDS = tuple(accumulate(PERCENT))


def split_of(group_id: str) -> Split:
    """The split of every clip in this group, from a SHA-256 of the group id."""
    bucket = int.from_bytes(hashlib.sha256(group_id.encode()).digest()[:8], "big") % 100
    return next(s for s, bound in zip(SPLITS, _UPPER_BOUNDS, strict=True) if bucket < bound)
