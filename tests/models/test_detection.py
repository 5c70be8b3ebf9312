from __future__ import annotations

from models.detection import EpisodeTracker, count_episodes


def test_a_single_spike_is_not_an_episode() -> None:
    assert count_episodes([0.1, 0.9, 0.1, 0.1, 0.1, 0.1], threshold=0.5) == 0


def test_two_of_three_windows_start_an_episode_and_quiet_ends_it() -> None:
    tracker = EpisodeTracker(threshold=0.5)
    events = [tracker.update(s) for s in [0.6, 0.2, 0.7, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9]]
    assert events == [None, None, "start", None, None, None, None, "end", None]


def test_hysteresis_keeps_an_episode_through_dips_above_the_release_level() -> None:
    # 0.45 is below the threshold but above threshold * 0.8: the episode holds.
    assert count_episodes([0.9, 0.9] + [0.45] * 10 + [0.9, 0.9], threshold=0.5) == 1


def test_separate_bursts_are_separate_episodes() -> None:
    burst, quiet = [0.9, 0.9, 0.9], [0.0] * 6
    assert count_episodes(burst + quiet + burst + quiet, threshold=0.5) == 2
