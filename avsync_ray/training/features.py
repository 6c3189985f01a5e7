"""Precomputed features: the frozen encoders' outputs of fixed training windows, stored in a copy of the shards
(the Ray job that writes them is :mod:`avsync_ray.training.precompute`; training reads them back).

Training AVSyncD runs the VAE encoder and ImageBind's audio branch on every clip at every step, although both
are frozen. Precomputing moves that cost out of the training loop: each sample gets ``vae_moments.npy`` (the
VAE posterior's mean and log-variance of ``windows_per_clip`` windows, each also mirrored when
``flip_variants``) and ``audio_tokens.npy`` (ImageBind's tokens of each window), in float16, beside its
original members (kept for previews and audits). ``avsync train --set precomputed=true`` then picks a random
window and flip variant per sample and still draws a fresh latent from the stored posterior at every step.
The trade-offs: windows come from a fixed set instead of any start, and shards grow (at 256x256 with 3
windows, both flips and ImageBind-huge, about 1.2 MB of latent moments and 1.1 MB of audio tokens per clip).

The output index records what the features depend on (clip geometry, windows, a fingerprint of the encoders'
weights); training refuses shards whose features were made for other settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from functools import partial
from typing import Callable

import numpy as np
import torch

from avsync_ray.config.train import AVSyncDInputs, PrecomputeConfig
from avsync_ray.devices import resolve_device
from avsync_ray.errors import InputError
from avsync_ray.examples import SAMPLE_ERRORS, avsyncd_clip, clip_source
from avsync_ray.media.clips import ClipSamplingError
from avsync_ray.shards import AUDIO_TOKENS_MEMBER, VAE_MOMENTS_MEMBER, iter_samples, write_shard
from avsync_ray.training.objectives import vae_moments

logger = logging.getLogger(__name__)

FEATURES_FORMAT = 1
FEATURES_KEY = "precomputed_features"  # where the index describes the features


class PrecomputedFeaturesError(InputError):
    """Shards without features, or with features made for other settings than the training run's."""


def window_starts(duration: float, clip_seconds: float, count: int) -> list[float]:
    """``count`` clip starts spread evenly over a sample of ``duration`` s, the first and last possible starts
    included (one window: the middle one)."""
    span = duration - clip_seconds
    if span < -1e-6:
        raise ClipSamplingError(f"clip lasts {duration:.3f} s, training needs {clip_seconds:.3f} s")
    span = max(span, 0.0)
    return [span / 2] if count == 1 else [span * i / (count - 1) for i in range(count)]


def encoder_fingerprint(vae, audio_encoder) -> str:
    """A hash of the weights that make the features (the VAE's encoder side and the audio encoder), as they are
    used (dtype included): features are only valid for the encoders that made them."""
    digest = hashlib.sha256()
    modules = {"vae.encoder": vae.encoder, "vae.quant_conv": vae.quant_conv, "audio_encoder": audio_encoder}
    for prefix, module in modules.items():
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{prefix}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def features_descriptor(config: PrecomputeConfig, fingerprint: str) -> dict:
    return {
        "format": FEATURES_FORMAT,
        "num_frames": config.num_frames,
        "fps": config.fps,
        "height": config.height,
        "width": config.width,
        "windows_per_clip": config.windows_per_clip,
        "flip_variants": config.flip_variants,
        "encoders": fingerprint,
    }


def check_features(index: dict, config: AVSyncDInputs, fingerprint: str | None = None) -> dict:
    """The index's feature descriptor, if it matches ``config``'s clip geometry (and ``fingerprint``, the
    training encoders' :func:`encoder_fingerprint`, when given); else a :class:`PrecomputedFeaturesError`."""
    features = index.get(FEATURES_KEY)
    if features is None:
        raise PrecomputedFeaturesError(
            f"shard index '{index.get('name')}' has no precomputed features: run `avsync precompute` on these shards first, "
            "or train with precomputed=false"
        )
    expected = {"format": FEATURES_FORMAT, "num_frames": config.num_frames, "fps": config.fps, "height": config.height, "width": config.width}
    if fingerprint is not None:
        expected["encoders"] = fingerprint
    differences = [f"{name}: shards {features.get(name)!r}, training {value!r}" for name, value in expected.items() if features.get(name) != value]
    if differences:
        hint = " (the encoders' weights differ: precompute with the training run's model settings and seed)" if "encoders" in str(differences) else ""
        raise PrecomputedFeaturesError("the shards' precomputed features were made for other settings: " + "; ".join(differences) + hint)
    return features


# --------------------------------------------------------------------------------------------- features


@torch.no_grad()
def encode_windows(vae, audio_encoder, videos: torch.Tensor, mels: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE moments of videos (n, 3, T, H, W) and ImageBind tokens of mels (m, 1, 128, 204), ``batch_size`` at
    a time; both returned in fp32 on the CPU."""
    moments = [vae_moments(vae, videos[i : i + batch_size].to(vae.device)).cpu() for i in range(0, len(videos), batch_size)]
    tokens = [
        audio_encoder(mels[i : i + batch_size].to(audio_encoder.device, audio_encoder.dtype)).audio_encodings.float().cpu()
        for i in range(0, len(mels), batch_size)
    ]
    return torch.cat(moments), torch.cat(tokens)


def _npy(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, tensor.numpy().astype(np.float16), allow_pickle=False)
    return buffer.getvalue()


def sample_features(raw: dict, vae, audio_encoder, config: PrecomputeConfig) -> dict[str, bytes]:
    """The members a shard sample gains: its windows' clips made exactly as training makes them
    (:func:`~avsync_ray.training.data.avsyncd_clip`), encoded, as float16 ``.npy`` bytes."""
    source = clip_source(raw)
    starts = window_starts(source.duration, config.num_frames / config.fps, config.windows_per_clip)
    clips = [avsyncd_clip(raw, source, start, num_frames=config.num_frames, fps=config.fps, size=(config.height, config.width)) for start in starts]
    videos = torch.stack([clip["video"] for clip in clips])
    variants = torch.stack([videos, videos.flip(-1)], dim=1) if config.flip_variants else videos[:, None]
    moments, tokens = encode_windows(vae, audio_encoder, variants.flatten(0, 1), torch.stack([clip["mel"] for clip in clips]), config.batch_size)
    return {VAE_MOMENTS_MEMBER: _npy(moments.unflatten(0, variants.shape[:2])), AUDIO_TOKENS_MEMBER: _npy(tokens)}


# --------------------------------------------------------------------------------------------- shards


def precompute_shard(in_url: str, out_url: str, featurize: Callable[[dict], dict[str, bytes]], expected: int | None = None) -> dict:
    """Stream the shard ``in_url`` to ``out_url`` (atomically), each sample with ``featurize(sample)``'s members
    added. A sample that cannot be featurized is left out with its reason; samples a damaged tar loses are
    counted against ``expected`` (the input index's count). Returns the output's index entry plus ``skipped``."""
    skipped: list[dict] = []

    def featurized() -> Iterator[dict]:
        for raw in iter_samples([in_url], skip_damaged=True):
            try:
                members = featurize(raw)
            except SAMPLE_ERRORS as exc:
                logger.warning("leaving out sample %s of %s: %s", raw["__key__"], in_url, exc)
                skipped.append({"key": raw["__key__"], "reason": f"{type(exc).__name__}: {exc}"})
                continue
            yield {**raw, **members}

    entry = write_shard(out_url, featurized())
    if expected is not None and entry["nsamples"] + len(skipped) < expected:
        skipped.append({"key": None, "reason": f"unreadable: {expected - entry['nsamples'] - len(skipped)} samples lost to a damaged tar"})
    return {**entry, "skipped": skipped}


class ShardPrecomputer:
    """Ray Data actor: loads the frozen encoders once, then writes one output shard per input row."""

    def __init__(self, config: dict):
        from avsync_ray.training.components import build_frozen_encoders

        self.config = PrecomputeConfig.model_validate(config)
        device = resolve_device(self.config.actor.device, self.config.actor.num_gpus)
        vae, audio_encoder = build_frozen_encoders(self.config.model, self.config.seed)
        self.vae, self.audio_encoder = vae.to(device), audio_encoder.to(device)
        self.fingerprint = encoder_fingerprint(self.vae, self.audio_encoder)

    def __call__(self, batch: dict) -> dict:
        featurize = partial(sample_features, vae=self.vae, audio_encoder=self.audio_encoder, config=self.config)
        entries = [precompute_shard(i, o, featurize, int(n)) for i, o, n in zip(batch["in_url"], batch["out_url"], batch["nsamples"])]
        return {"entry": [json.dumps(entry) for entry in entries], "encoders": [self.fingerprint] * len(entries)}
