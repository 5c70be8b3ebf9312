"""Episodes from per-window scores: k-of-n smoothing and hysteresis.

One window above threshold is noise; an episode starts when `k` of the last `n` windows reach
the threshold and ends after `release` consecutive windows below `threshold * hysteresis`.
`evaluate` counts false alarms per hour with exactly this logic, as the edge raises events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class EpisodeTracker:
    threshold: float
    k: int = 2
    n: int = 3
    release: int = 4
    hysteresis: float = 0.8
    active: bool = False
    _recent: deque[bool] = field(default_factory=deque)
    _below: int = 0

    def update(self, score: float) -> str | None:
        """Feed one window's score; returns 'start', 'end' or None."""
        self._recent.append(score >= self.threshold)
        if len(self._recent) > self.n:
            self._recent.popleft()
        if not self.active:
            if sum(self._recent) >= self.k:
                self.active, self._below = True, 0
                return "start"
            return None
        self._below = self._below + 1 if score < self.threshold * self.hysteresis else 0
        if self._below >= self.release:
            self.active = False
            self._recent.clear()
            return "end"
        return None


def count_episodes(scores: list[float], threshold: float) -> int:
    tracker = EpisodeTracker(threshold)
    return sum(tracker.update(s) == "start" for s in scores)
