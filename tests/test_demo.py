"""The demo's learning checks (pure: judged from the summaries and tables its steps return, no Ray)."""

from __future__ import annotations

import pytest

from avsync_ray.config.base import load_config
from avsync_ray.config.demo import DemoConfig, DemoLearningChecks
from avsync_ray.demo import avsyncd_failure, classifier_failure, psync_failure, psync_windows

CHECKS = DemoLearningChecks(min_heldout_accuracy=0.5, min_psync_margin=0.3, max_avsyncd_loss_ratio=0.8)


def _evaluation(a2v, v2a, skipped=0):
    return {"a2v_accuracy": a2v, "v2a_accuracy": v2a, "skipped": skipped, "protocol": {"num_clips": 31, "shift_s": 0.04, "tolerance": 5}}


def test_the_demo_preset_checks_learning_by_default():
    assert load_config(DemoConfig, "demo").checks == DemoLearningChecks()


def test_a_classifier_passes_only_when_both_directions_beat_the_bar():
    assert classifier_failure(CHECKS, _evaluation(0.5, 0.9375)) is None
    message = classifier_failure(CHECKS, _evaluation(0.875, 0.1875))  # a dead start: every score alike
    assert message.startswith("the sync classifier did not learn") and "v2a 0.188" in message and "chance is 0.35" in message
    assert "no held-out clip" in classifier_failure(CHECKS, _evaluation(None, None, skipped=16))


def test_psync_windows_counts_only_windows_that_reached_the_psync_rules():
    labels = ["sync", "sync", "cuts", "sync", "shifted", "shifted", "shifted", "silent", "sharp", "not-synthetic"]
    reasons = ["", "low_sync_a2v", "", "too_static", "low_sync_v2a", "", "low_sync_a2v", "too_quiet", "too_sharp", ""]
    assert psync_windows(labels, reasons) == {"in_sync": {"reached": 3, "kept": 2}, "shifted": {"reached": 3, "kept": 1}}


@pytest.mark.parametrize(
    ("in_sync", "shifted", "failed"),
    [((10, 10), (10, 0), False), ((10, 8), (10, 5), False), ((10, 8), (10, 6), True), ((10, 0), (10, 0), True), ((10, 10), (10, 10), True)],
)
def test_psync_must_keep_in_sync_windows_more_than_shifted_ones(in_sync, shifted, failed):
    windows = {"in_sync": dict(zip(("reached", "kept"), in_sync)), "shifted": dict(zip(("reached", "kept"), shifted))}
    message = psync_failure(CHECKS, windows)
    assert (message is not None) == failed
    if failed:
        assert f"kept {in_sync[1]}/{in_sync[0]} in-sync and {shifted[1]}/{shifted[0]} shifted" in message


def test_psync_without_windows_of_both_kinds_cannot_pass():
    message = psync_failure(CHECKS, {"in_sync": {"reached": 5, "kept": 5}, "shifted": {"reached": 0, "kept": 0}})
    assert "cannot be judged" in message


def test_avsyncd_must_lower_its_loss_by_the_ratio():
    assert avsyncd_failure(CHECKS, [1.0, 0.9, 0.8]) is None
    assert "went from 1.0000 to 0.8100" in avsyncd_failure(CHECKS, [1.0, 0.5, 0.81])
    assert "cannot be judged" in avsyncd_failure(CHECKS, [1.0])
