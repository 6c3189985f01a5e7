"""The synchronisation objective and metrics of the paper (supplementary §1-2) as pure tensor functions.

Scores are the classifier's unbounded logits. ``scores[b, p, q] = score(audio clip p, video clip q)`` of
video ``b``, the K clips shifted in time by a fixed step. Results are fractions; multiply by 100 (or use
:func:`as_percent`) where the paper reports percentages. Used by training, curation and evaluation alike.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ContrastiveOutput(NamedTuple):
    loss: torch.Tensor  # (a2v_loss + v2a_loss) / 2, what training minimises
    a2v_loss: torch.Tensor
    v2a_loss: torch.Tensor
    a2v_accuracy: torch.Tensor
    v2a_accuracy: torch.Tensor


class SyncAccuracy(NamedTuple):
    a2v: torch.Tensor  # fraction of videos whose audio found its video within the tolerance
    v2a: torch.Tensor
    a2v_correct: torch.Tensor  # (B,) bool per video
    v2a_correct: torch.Tensor


def _check_square(scores: torch.Tensor) -> None:
    if scores.ndim != 3 or scores.shape[1] != scores.shape[2]:
        raise ValueError(f"scores must be (batch, K, K), got {tuple(scores.shape)}")


def contrastive_loss(scores: torch.Tensor, tau: float = 0.1) -> ContrastiveOutput:
    """Eq. 1 and Eq. 2: only the time-shifted clips of the same video are negatives.

    a2v: for audio clip p, cross-entropy over the K videos ``scores[b, p, :] / tau`` with target p;
    v2a: for video clip q, over the K audios ``scores[b, :, q] / tau`` with target q. Accuracies are the
    fraction of exact argmax hits."""
    _check_square(scores)
    batch, clips, _ = scores.shape
    target = torch.arange(clips, device=scores.device).repeat(batch)
    a2v_logits = scores.reshape(batch * clips, clips) / tau
    v2a_logits = scores.transpose(1, 2).reshape(batch * clips, clips) / tau
    a2v_loss = F.cross_entropy(a2v_logits, target)
    v2a_loss = F.cross_entropy(v2a_logits, target)
    return ContrastiveOutput(
        loss=(a2v_loss + v2a_loss) / 2,
        a2v_loss=a2v_loss,
        v2a_loss=v2a_loss,
        a2v_accuracy=(a2v_logits.argmax(dim=1) == target).float().mean(),
        v2a_accuracy=(v2a_logits.argmax(dim=1) == target).float().mean(),
    )


def sync_accuracy(scores: torch.Tensor, tolerance: int = 5) -> SyncAccuracy:
    """The evaluation protocol (§1.3): with K clips (31, 0.04 s apart), the centre audio is scored against all
    K videos (a2v) and the centre video against all K audios (v2a); a prediction counts if its argmax is
    within ``tolerance`` clips (5 = +-0.2 s) of the centre."""
    _check_square(scores)
    center = scores.shape[1] // 2
    a2v_correct = (scores[:, center, :].argmax(dim=1) - center).abs() <= tolerance
    v2a_correct = (scores[:, :, center].argmax(dim=1) - center).abs() <= tolerance
    return SyncAccuracy(a2v_correct.float().mean(), v2a_correct.float().mean(), a2v_correct, v2a_correct)


def sync_probability(scores_row: torch.Tensor, index: int | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 4: ``exp(phi[index]) / sum_i exp(phi[i])`` over the last axis (the synchronised pair at ``index``,
    the middle by default, against its shifted versions)."""
    index = scores_row.shape[-1] // 2 if index is None else index
    return torch.softmax(scores_row / temperature, dim=-1)[..., index]


def sync_probabilities(scores: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """P_sync in both directions from a (B, K, K) matrix: a2v keeps the middle audio and shifts the video
    (row), v2a keeps the middle video and shifts the audio (column). Returns two (B,) tensors."""
    _check_square(scores)
    center = scores.shape[1] // 2
    return sync_probability(scores[:, center, :], center, temperature), sync_probability(scores[:, :, center], center, temperature)


def relsync(score_generated: torch.Tensor, score_reference: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``exp(s_gen) / (exp(s_ref) + exp(s_gen)) = sigmoid(s_gen - s_ref)``."""
    return torch.sigmoid(score_generated - score_reference)


def alignsync(
    score_generated: torch.Tensor,
    score_reference: torch.Tensor,
    ia_gen_frames: torch.Tensor,
    ia_ref_first_frame: torch.Tensor,
) -> torch.Tensor:
    """Eq. 7-11: RelSync times P_Align, where P_Align is the mean over generated frames 2..b of
    ``sigmoid(IA(frame j, audio) - IA(reference frame 1, audio))``.

    ``ia_gen_frames`` (B, b) holds the ImageBind image-audio cosine of every generated frame; frame 1, a copy
    of the conditioning image, is excluded here as in Eq. 9. ``ia_ref_first_frame`` (B,)."""
    if ia_gen_frames.ndim != 2 or ia_gen_frames.shape[1] < 2:
        raise ValueError(f"ia_gen_frames must be (batch, frames >= 2), got {tuple(ia_gen_frames.shape)}")
    align = torch.sigmoid(ia_gen_frames[:, 1:] - ia_ref_first_frame[:, None]).mean(dim=1)
    return relsync(score_generated, score_reference) * align


def as_percent(value: torch.Tensor | float) -> float:
    """A fraction as the paper reports it (x100)."""
    return float(value) * 100.0
