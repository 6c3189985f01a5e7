"""The paper's metrics of generated videos (supplementary §2.2, §3.4) from per-clip features (pure numpy/torch).

Per clip: IA and IT are the mean ImageBind cosines over frames 2..12; RelSync = σ(s_gen − s_gt) with the sync
classifier's scores of the generated and the real clip; AlignSync = RelSync × the mean over frames 2..12 of
σ(IA(generated frame j) − IA(real frame 1)). Over a set of clips: the mean and standard deviation of those, and
FID (frames 2..12 of every clip) and FVD (one vector per clip) as Fréchet distances between the real and the
generated features, with a bootstrap interval over test videos. IA, IT, RelSync and AlignSync are reported x100,
as the paper's tables give them. The GT row scores the real clips themselves (their RelSync is 0.5 by definition;
FID and FVD do not apply).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from avsync_ray.metrics.frechet import FeatureMoments, bootstrap_frechet, frechet_distance, weighted_frechet_distance
from avsync_ray.metrics.protocol import FUTURE_FRAMES
from avsync_ray.metrics.sync_metrics import alignsync, relsync

PERCENT_METRICS = ("ia", "it", "relsync", "alignsync")


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
            ia_gen = torch.from_numpy(np.asarray(generated.ia, dtype=np.float64))[None]
            scores["alignsync"] = float(alignsync(s_gen.double(), s_ref.double(), ia_gen, torch.tensor([float(real.ia[0])], dtype=torch.float64))[0])
    return scores


def _frechet(real: np.ndarray, generated: np.ndarray, method: str) -> tuple[float, bool]:
    if method == "eigen":
        return weighted_frechet_distance(real, generated, np.ones(len(real))), False
    a, b = FeatureMoments.of(real), FeatureMoments.of(generated)
    result = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    return result.value, result.eps_retry


def summarize(
    generated: list[ClipFeatures],
    real: dict[str, ClipFeatures],
    frechet: str = "sqrtm",
    bootstrap_samples: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    is_real: bool = False,
) -> dict:
    """Metrics of one set of clips (a setting, a baseline, a category of them, or the real clips with
    ``is_real``). Keys: ``clips``, ``videos``, ``<metric>`` and ``<metric>_std`` for the per-clip metrics (x100),
    ``fid``/``fvd`` with ``_ci_low``, ``_ci_high``, ``_boot_std`` and ``_eps_retry``."""
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
    for name in ("fid", "fvd"):
        if is_real or not generated or getattr(generated[0], name) is None or len(generated) < 2:
            continue
        rows = [(real[c.key], c) for c in generated]
        real_rows = np.concatenate([np.atleast_2d(getattr(r, name)) for r, _ in rows])
        gen_rows = np.concatenate([np.atleast_2d(getattr(g, name)) for _, g in rows])
        groups = np.concatenate([[g.video] * len(np.atleast_2d(getattr(g, name))) for _, g in rows])
        out[name], out[f"{name}_eps_retry"] = _frechet(real_rows, gen_rows, frechet)
        if bootstrap_samples:
            interval = bootstrap_frechet(real_rows, gen_rows, groups, bootstrap_samples, confidence, seed)
            out.update({f"{name}_ci_low": interval.low, f"{name}_ci_high": interval.high, f"{name}_boot_std": interval.std})
    return out


def gt_scores(real: ClipFeatures) -> dict[str, float | None]:
    """The real clip scored as if it were generated, against itself (RelSync 0.5 by definition)."""
    return clip_scores(real, real)
