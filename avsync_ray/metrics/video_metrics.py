"""The paper's metrics of generated videos (supplementary §2.2, §3.4) from per-clip features (pure numpy/torch).

Per clip: IA and IT are the mean ImageBind cosines over frames 2..12; RelSync = σ(s_gen − s_gt) with the sync
classifier's scores of the generated and the real clip; AlignSync = RelSync × the mean over frames 2..12 of
σ(IA(generated frame j) − IA(real frame 1)). Over a set of clips: the mean and standard deviation of those
(:func:`clip_summary`), and FID (frames 2..12 of every clip) and FVD (one vector per clip) as Fréchet distances
between the real and the generated features (:func:`distance_rows`, :func:`frechet`), with a bootstrap interval
over test videos. IA, IT, RelSync and AlignSync are reported x100, as the paper's tables give them. The GT row
scores the real clips themselves (their RelSync is 0.5 by definition; FID and FVD do not apply).

A distance that cannot be computed is *undefined* with a reason a person can act on (:func:`undefined_reason`):
the official recipe fails when sqrtm of the covariance product keeps an imaginary part, which happens when there
are fewer feature vectors than dimensions (:func:`clips_for_full_rank` says how many clips that takes).
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from avsync_ray.metrics.frechet import FeatureMoments, FrechetUndefinedError, frechet_distance, weighted_frechet_distance
from avsync_ray.metrics.protocol import FUTURE_FRAMES
from avsync_ray.metrics.sync_metrics import alignsync, relsync

PERCENT_METRICS = ("ia", "it", "relsync", "alignsync")
DISTANCE_METRICS = ("fid", "fvd")
LABELS = {"fid": "FID", "fvd": "FVD", "ia": "IA", "it": "IT", "relsync": "RelSync", "alignsync": "AlignSync"}


@dataclass
class ClipFeatures:
    """One clip's features (``None`` for a metric that was not computed)."""

    key: str
    video: str
    category: str
    fid: np.ndarray | None  # (frames 2..12, 2048)
    fvd: np.ndarray | None  # (400,)
    ia: np.ndarray | None  # (T,) per frame
    it: np.ndarray | None
    sync: float | None
    clip: int = 0  # its index in the test video
    start: float = 0.0  # its start in the test video (s)

    def to_bytes(self) -> bytes:
        """The clip's feature file (``.npz``): every feature computed, its identity and its place in the video."""
        arrays = {name: getattr(self, name) for name in ("fid", "fvd", "ia", "it") if getattr(self, name) is not None}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, sync=np.float64(np.nan if self.sync is None else self.sync), clip=np.int64(self.clip),
                 start=np.float64(self.start), key=np.str_(self.key), video=np.str_(self.video), category=np.str_(self.category))  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClipFeatures":
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            sync = float(saved["sync"])
            return cls(str(saved["key"]), str(saved["video"]), str(saved["category"]),
                       *(saved[name] if name in saved else None for name in ("fid", "fvd", "ia", "it")),
                       None if sync != sync else sync, int(saved["clip"]), float(saved["start"]))  # fmt: skip


def clip_scores(generated: ClipFeatures, real: ClipFeatures) -> dict[str, float | None]:
    """IA, IT, RelSync and AlignSync of one generated clip against its real clip (fractions)."""
    scores: dict[str, float | None] = {"ia": None, "it": None, "relsync": None, "alignsync": None}
    if generated.ia is not None:
        scores["ia"] = float(generated.ia[FUTURE_FRAMES].mean())
    if generated.it is not None:
        scores["it"] = float(generated.it[FUTURE_FRAMES].mean())
    if generated.sync is not None and real.sync is not None:
        s_gen, s_ref = torch.tensor([generated.sync]), torch.tensor([real.sync])
        scores["relsync"] = float(relsync(s_gen, s_ref)[0])
        if generated.ia is not None and real.ia is not None:
            ia_gen = torch.tensor(generated.ia, dtype=torch.float64)[None]  # a copy: arrays from Ray's object store are read-only
            scores["alignsync"] = float(alignsync(s_gen.double(), s_ref.double(), ia_gen, torch.tensor([float(real.ia[0])], dtype=torch.float64))[0])
    return scores


def gt_scores(real: ClipFeatures) -> dict[str, float | None]:
    """The real clip scored as if it were generated, against itself (RelSync 0.5 by definition)."""
    return clip_scores(real, real)


def clip_summary(generated: list[ClipFeatures], real: dict[str, ClipFeatures], is_real: bool = False) -> dict:
    """``clips``, ``videos`` and, per per-clip metric, ``<metric>`` and ``<metric>_std`` (x100; None when no clip has
    it) of one set of clips (a setting, a category of it, or the real clips with ``is_real``)."""
    out: dict = {"clips": len(generated), "videos": len({c.video for c in generated})}
    per_clip = defaultdict(list)
    for clip in generated:
        scores = gt_scores(clip) if is_real else clip_scores(clip, real[clip.key])
        for name, value in scores.items():
            if value is not None:
                per_clip[name].append(value * 100)
    for name in PERCENT_METRICS:
        values = per_clip.get(name)
        out[name] = float(np.mean(values)) if values else None
        out[f"{name}_std"] = float(np.std(values)) if values else None
    return out


@dataclass
class DistanceRows:
    """The paired feature rows of one distance over a set of clips: ``real[i]`` and ``generated[i]`` are the same
    frame (FID) or clip (FVD) of test video ``videos[i]`` (category ``categories[i]``)."""

    real: np.ndarray  # (n, d)
    generated: np.ndarray
    videos: np.ndarray  # (n,)
    categories: np.ndarray  # (n,)
    rows_per_clip: int

    def subset(self, category: str | None) -> "DistanceRows":
        if category is None:
            return self
        keep = self.categories == category
        return DistanceRows(self.real[keep], self.generated[keep], self.videos[keep], self.categories[keep], self.rows_per_clip)


def distance_rows(generated: list[ClipFeatures], real: dict[str, ClipFeatures], name: str) -> DistanceRows | None:
    """FID (``name="fid"``) or FVD rows of the clips (None when they lack that feature)."""
    if not generated or any(getattr(c, name) is None or getattr(real[c.key], name) is None for c in generated):
        return None
    pairs = [(np.atleast_2d(getattr(real[c.key], name)), np.atleast_2d(getattr(c, name)), c) for c in generated]
    return DistanceRows(
        np.concatenate([r for r, _, _ in pairs]).astype(np.float32),
        np.concatenate([g for _, g, _ in pairs]).astype(np.float32),
        np.concatenate([[c.video] * len(g) for _, g, c in pairs]),
        np.concatenate([[c.category] * len(g) for _, g, c in pairs]),
        len(pairs[0][1]),
    )


def frechet(rows: DistanceRows, method: str) -> tuple[float, bool]:
    """(distance, whether the official 1e-6 retry was needed) by ``sqrtm`` (the official recipe, from float64
    moments) or ``eigen`` (the same distance by symmetric eigenproblems). Raises :class:`FrechetUndefinedError`
    where the official recipe fails, and ``ValueError`` for fewer than 2 clips."""
    if len(rows.real) < 2 * rows.rows_per_clip:
        raise ValueError(f"a distance needs at least 2 clips, got {len(rows.real) // rows.rows_per_clip}")
    if method == "eigen":
        return weighted_frechet_distance(rows.real, rows.generated, np.ones(len(rows.real))), False
    a, b = FeatureMoments.of(rows.real), FeatureMoments.of(rows.generated)
    result = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    return result.value, result.eps_retry


def clips_for_full_rank(dim: int, rows_per_clip: int) -> int:
    """Clips whose feature rows make a full-rank (unbiased) covariance of ``dim`` dimensions: more rows than
    dimensions (FID: 187 clips of 11 frames for 2048 dimensions; FVD: 401 clips for 400)."""
    return -(-(dim + 1) // rows_per_clip)


def undefined_reason(name: str, rows: int, dim: int, rows_per_clip: int, error: BaseException) -> str:
    """Why a distance is undefined, in words a person can act on."""
    label = LABELS[name]
    unit = "frame features" if rows_per_clip > 1 else "clip features"
    if isinstance(error, FrechetUndefinedError) and rows <= dim:
        return (f"{label} undefined: {rows} {unit} for {dim} dimensions; the official recipe needs more clips (a full-rank covariance "
                f"needs at least {clips_for_full_rank(dim, rows_per_clip)} clips) ({error})")  # fmt: skip
    if isinstance(error, (FrechetUndefinedError, ValueError, np.linalg.LinAlgError)):
        return f"{label} undefined: {error} ({rows} {unit} for {dim} dimensions)"
    return f"{label} undefined: its computation failed: {type(error).__name__}: {str(error)[:300]}"
