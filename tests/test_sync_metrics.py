"""Objective and metrics (Eq. 1-11) against direct implementations and constructed cases."""

from __future__ import annotations

import math

import pytest
import torch

from avsync_ray.metrics.sync_metrics import (
    alignsync,
    as_percent,
    contrastive_loss,
    relsync,
    sync_accuracy,
    sync_probabilities,
    sync_probability,
)


def eq1_direct(scores: torch.Tensor, tau: float) -> tuple[float, float]:
    """Eq. 1 written out with loops: mean over videos and clips of -log softmax at the diagonal."""
    a2v = v2a = 0.0
    batch, clips, _ = scores.shape
    for b in range(batch):
        for k in range(clips):
            row = [math.exp(scores[b, k, i].item() / tau) for i in range(clips)]
            column = [math.exp(scores[b, i, k].item() / tau) for i in range(clips)]
            a2v -= math.log(row[k] / sum(row))
            v2a -= math.log(column[k] / sum(column))
    return a2v / (batch * clips), v2a / (batch * clips)


def test_contrastive_loss_equals_eq1():
    scores = torch.tensor([[[0.3, -0.2, 0.1], [0.5, 0.9, -1.0], [0.0, 0.2, 0.4]]], dtype=torch.float64)
    scores = torch.cat([scores, scores.flip(1)])
    out = contrastive_loss(scores, tau=0.1)
    a2v, v2a = eq1_direct(scores, 0.1)
    assert out.a2v_loss.item() == pytest.approx(a2v, rel=1e-10) and out.v2a_loss.item() == pytest.approx(v2a, rel=1e-10)
    assert out.loss.item() == pytest.approx((a2v + v2a) / 2, rel=1e-10)
    # Eq. 2 by hand: video 0's rows peak at 0, 1, 2 (3 hits); video 1's rows (reversed) peak at 2, 1, 0 (1 hit).
    assert out.a2v_accuracy.item() == pytest.approx(4 / 6)


def test_loss_is_minimal_when_the_diagonal_dominates():
    clips = 5
    diagonal = torch.eye(clips).unsqueeze(0) * 5.0
    uniform = torch.zeros(1, clips, clips)
    shifted = torch.roll(diagonal, shifts=1, dims=2)
    dominant, flat, wrong = (contrastive_loss(s, tau=0.1).loss.item() for s in (diagonal, uniform, shifted))
    assert dominant < 1e-6 and flat == pytest.approx(math.log(clips)) and wrong > flat
    assert contrastive_loss(diagonal).a2v_accuracy == 1 and contrastive_loss(shifted).a2v_accuracy == 0


def test_sync_accuracy_tolerance_on_constructed_matrices():
    clips, center = 31, 15
    scores = torch.zeros(4, clips, clips)
    peaks = [15, 20, 21, 9]  # offsets 0, +5 (inside), +6 (outside), -6 (outside)
    for b, peak in enumerate(peaks):
        scores[b, center, peak] = 1.0  # a2v: the centre audio prefers video `peak`
        scores[b, peak, center] = 1.0  # v2a: the centre video prefers audio `peak`
    result = sync_accuracy(scores, tolerance=5)
    assert result.a2v_correct.tolist() == [True, True, False, False] and result.a2v.item() == 0.5
    assert result.v2a_correct.tolist() == [True, True, False, False]
    assert sync_accuracy(scores, tolerance=6).a2v.item() == 1.0


def test_sync_probability_eq4():
    row = torch.tensor([0.0, 2.0, 1.0])
    expected = math.exp(2.0) / (math.exp(0.0) + math.exp(2.0) + math.exp(1.0))
    assert sync_probability(row).item() == pytest.approx(expected)
    assert sync_probability(torch.zeros(3)).item() == pytest.approx(1 / 3)
    matrix = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 3.0, 0.0]]])
    a2v, v2a = sync_probabilities(matrix)
    assert a2v.item() == pytest.approx(expected)
    assert v2a.item() == pytest.approx(math.exp(2.0) / (1 + math.exp(2.0) + math.exp(3.0)))


def test_relsync_and_alignsync_on_known_values():
    s_gen, s_ref = torch.tensor([1.0, 0.0]), torch.tensor([1.0, math.log(3.0)])
    torch.testing.assert_close(relsync(s_gen, s_ref), torch.tensor([0.5, 0.25]))
    # IA of the generated frames; frame 1 (a copy of the conditioning image) must not count.
    ia_gen = torch.tensor([[9.0, 0.3, 0.3], [9.0, 0.1, 0.5]])
    ia_ref = torch.tensor([0.3, 0.3])
    expected_align = torch.tensor([0.5, (torch.sigmoid(torch.tensor(-0.2)) + torch.sigmoid(torch.tensor(0.2))).item() / 2])
    torch.testing.assert_close(alignsync(s_gen, s_ref, ia_gen, ia_ref), torch.tensor([0.5, 0.25]) * expected_align)
    assert as_percent(torch.tensor(0.2221)) == pytest.approx(22.21)
    with pytest.raises(ValueError, match="frames"):
        alignsync(s_gen, s_ref, ia_gen[:, :1], ia_ref)
