"""WebDataset input for training, one stream per Ray Train worker (and per DataLoader process inside it).

Shards come from the curation index (``<root>/<split>.index.json``). Each rank reads its own slice of the
shard list when there are at least as many shards as ranks (split by node), then resamples shards from that
slice with a seed of (run seed, rank, loader worker, resume step), so streams never repeat one another and a
resumed run does not replay the samples it has seen. Samples are decoded with the media module from the
``.mp4`` and ``.wav`` members; a sample that cannot be decoded is skipped, logged and counted (the count
travels with the next batch as ``skipped``), never fatal.
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import replace
from typing import Callable, Iterable, Iterator, NamedTuple

import fsspec
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from avsync_ray.media import MediaError, decode, load_audio, waveform_to_mel
from avsync_ray.media.audio import TARGET_SAMPLE_RATE
from avsync_ray.media.clips import ClipSamplingError, MultiClipSpec, clip_starts, sample_clips
from avsync_ray.media.frames import center_crop_resize
from avsync_ray.models.sync_classifier import preprocess_sync_video
from avsync_ray.storage import join_uri, read_json

logger = logging.getLogger(__name__)

# What a bad sample raises: unreadable media, a clip that does not fit, a missing member, unparsable metadata.
SAMPLE_ERRORS = (MediaError, ClipSamplingError, KeyError, ValueError)
# A stream that decodes nothing this many times in a row is misconfigured, not unlucky.
MAX_CONSECUTIVE_SKIPS = 200

SampleFn = Callable[[dict, np.random.Generator], dict]


def read_index(root: str, split: str) -> dict:
    """The shard index ``<root>/<split>.index.json`` (curation's or precompute's commit point)."""
    return read_json(join_uri(root, f"{split}.index.json"))


def shard_urls(root: str, split: str) -> list[str]:
    """Every shard the index lists (the index is the commit point, so only committed shards)."""
    urls = [join_uri(root, entry["url"]) for entry in read_index(root, split)["shardlist"]]
    if not urls:
        raise ValueError(f"{root}/{split}.index.json lists no shards")
    return urls


def rank_shards(urls: list[str], rank: int, world_size: int) -> list[str]:
    """This rank's shards: a disjoint slice when every rank can have one, else all of them (resampling with
    per-rank seeds still gives each rank a different stream)."""
    return urls[rank::world_size] if len(urls) >= world_size else list(urls)


# --------------------------------------------------------------------------------------------- samples


class ClipSource(NamedTuple):
    meta: dict  # the sample's JSON member
    audio: np.ndarray  # its canonical 16 kHz mono audio
    duration: float  # seconds both streams cover


def clip_source(raw: dict) -> ClipSource:
    """The metadata and audio of a shard sample, read once for all the clips taken from it."""
    meta = json.loads(raw["json"])
    audio = load_audio(raw["wav"], TARGET_SAMPLE_RATE)
    return ClipSource(meta, audio, min(meta["num_frames"] / meta["fps"], len(audio) / TARGET_SAMPLE_RATE))


def avsyncd_clip(
    raw: dict, source: ClipSource, start: float, *, num_frames: int = 12, fps: float = 6.0, size: tuple[int, int] = (256, 256), flip: bool = False
) -> dict:
    """The AVSyncD example of a shard sample (``source`` its :func:`clip_source`) that starts at ``start`` s
    (reference §6.1): frames on the ``fps`` grid by the official "next frame" rule, trimmed to the aspect ratio,
    resized and centre-cropped to ``size``, mirrored when ``flip``; the clip's exact audio as the ImageBind mel.
    Returns ``video`` (3, T, H, W) in [0, 1], ``audio`` (16 kHz samples), ``mel`` (1, 128, 204) and ``prompt``
    (the label)."""
    clip_seconds = num_frames / fps
    if start < 0 or start + clip_seconds > source.duration + 1e-6:
        raise ClipSamplingError(f"a {clip_seconds:.3f}-s clip at {start:.3f} s does not fit in the {source.duration:.3f} s the sample lasts")
    frames = decode(raw["mp4"], fps=fps, start=start, end=start + clip_seconds, audio=False, frame_selection="next").frames
    if len(frames) < num_frames:  # the official loader pads with the last frame
        frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), axis=0)])
    video = center_crop_resize(frames[:num_frames], size, flip=flip)
    first = int(round(start * TARGET_SAMPLE_RATE))
    waveform = torch.from_numpy(source.audio[first : first + int(round(clip_seconds * TARGET_SAMPLE_RATE))].copy())
    return {"video": video.transpose(0, 1).contiguous(), "audio": waveform, "mel": waveform_to_mel(waveform), "prompt": source.meta["label"]}


def avsyncd_sample(
    raw: dict, rng: np.random.Generator, *, num_frames: int = 12, fps: float = 6.0, size: tuple[int, int] = (256, 256), randflip: bool = True
) -> dict:
    """One AVSyncD training example: :func:`avsyncd_clip` at a uniform random start, with one coin-toss flip
    for the whole clip."""
    source = clip_source(raw)
    clip_seconds = num_frames / fps
    if source.duration + 1e-6 < clip_seconds:
        raise ClipSamplingError(f"clip lasts {source.duration:.3f} s, training needs {clip_seconds:.3f} s")
    start = float(rng.uniform(0.0, max(source.duration - clip_seconds, 0.0)))
    flip = randflip and bool(rng.random() < 0.5)
    return avsyncd_clip(raw, source, start, num_frames=num_frames, fps=fps, size=size, flip=flip)


def sync_sample(raw: dict, rng: np.random.Generator, *, spec: MultiClipSpec, image_size: int = 224, randflip: bool = True) -> dict:
    """One classifier example (reference §6.2): ``spec.num_clips`` clips ``spec.shift`` s apart at a random
    place in the shard clip, from one decode of the video and the canonical audio; frames nearest each grid
    time, resized and centre-cropped, each clip flipped on its own coin toss. Returns ``video``
    (K, 3, T, S, S) normalised and ``mel`` (K, 1, 128, 204)."""
    _, audio, duration = clip_source(raw)
    starts = clip_starts(0.0, duration, spec, rng if spec.placement == "random" else None)
    margin = 1.0 / spec.fps
    decoded = decode(raw["mp4"], fps=None, start=max(0.0, starts[0] - margin), end=min(starts[-1] + spec.clip_duration + margin, duration), audio=False)
    clips = sample_clips(replace(decoded, audio=audio, audio_start=0.0, sample_rate=TARGET_SAMPLE_RATE), starts, spec)
    video = preprocess_sync_video(clips.frames, image_size, "crop")
    if randflip:
        flips = torch.from_numpy(rng.random(len(video)) < 0.5)
        video[flips] = video[flips].flip(-1)
    return {"video": video, "mel": waveform_to_mel(torch.from_numpy(clips.audio))}


# Members ``avsync precompute`` adds to each sample (float16 arrays, read without pickle).
VAE_MOMENTS_MEMBER = "vae_moments.npy"  # (windows, flip variants, 8, T, H/8, W/8): the VAE posterior's mean and log-variance
AUDIO_TOKENS_MEMBER = "audio_tokens.npy"  # (windows, tokens, d): the ImageBind audio encodings of each window


def precomputed_sample(raw: dict, rng: np.random.Generator, *, randflip: bool = True) -> dict:
    """One AVSyncD example from the features ``avsync precompute`` stored: a random one of the sample's windows
    and, with ``randflip``, a random one of its flip variants (the first is unflipped). Returns
    ``vae_moments`` (8, T, h, w), ``audio_tokens`` (tokens, d) and ``prompt``."""
    moments = np.load(io.BytesIO(raw[VAE_MOMENTS_MEMBER]))
    tokens = np.load(io.BytesIO(raw[AUDIO_TOKENS_MEMBER]))
    if moments.ndim != 6 or tokens.ndim != 3 or len(moments) != len(tokens):
        raise ValueError(f"precomputed features of shapes {moments.shape} and {tokens.shape} do not belong together")
    window = int(rng.integers(len(moments)))
    variant = int(rng.integers(moments.shape[1])) if randflip else 0
    return {
        "vae_moments": torch.from_numpy(moments[window, variant].astype(np.float32)),
        "audio_tokens": torch.from_numpy(tokens[window].astype(np.float32)),
        "prompt": json.loads(raw["json"])["label"],
    }


# --------------------------------------------------------------------------------------------- stream


def _open_shards(urls: Iterator[str]) -> Iterator[dict]:
    """Open shards through fsspec (local, s3://, gs://, ...); an unreadable shard is logged and skipped."""
    for url in urls:
        try:
            yield {"url": url, "stream": fsspec.open(url, "rb").open()}
        except OSError as exc:
            logger.warning("skipping shard %s: %s", url, exc)


def _warn_and_continue(exc: Exception) -> bool:
    logger.warning("skipping a damaged part of a shard: %s", exc)
    return True


def shard_samples(urls: Iterable[str]) -> Iterator[dict]:
    """The samples of the shards at ``urls`` in order, members grouped by key (``__key__``, ``__url__``, one
    entry per member); damaged parts of a tar are logged and skipped."""
    return group_by_keys(tar_file_expander(_open_shards(urls), handler=_warn_and_continue), handler=_warn_and_continue)


def first_example(urls: Iterable[str], make_sample: SampleFn) -> dict:
    """The first sample of the shards that ``make_sample`` can make (with a fixed seed), e.g. for previews."""
    for raw in shard_samples(urls):
        try:
            return make_sample(raw, np.random.default_rng(0))
        except SAMPLE_ERRORS as exc:
            logger.warning("sample %s cannot be an example: %s", raw.get("__key__"), exc)
    raise ValueError("no sample of the shards can be decoded")


def decode_skipping(samples: Iterator[dict], make_sample: SampleFn, rng: np.random.Generator) -> Iterator[dict]:
    """Apply ``make_sample``; a sample it cannot make is logged and skipped, and the number skipped since the
    previous good sample rides along as ``skipped`` (so counts survive DataLoader worker processes)."""
    skipped = 0
    for raw in samples:
        try:
            sample = make_sample(raw, rng)
        except SAMPLE_ERRORS as exc:
            skipped += 1
            logger.warning("skipping sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), exc)
            if skipped >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(f"{skipped} samples in a row could not be decoded; last: {exc}") from exc
            continue
        sample["skipped"] = skipped
        skipped = 0
        yield sample


def collate(samples: list[dict]) -> dict:
    batch = wds.filters.default_collation_fn(samples)
    batch["skipped"] = int(sum(s["skipped"] for s in samples))
    return batch


class ShardStream(IterableDataset):
    """An endless stream of batches from resampled shards (one instance per Ray Train worker)."""

    def __init__(self, urls: list[str], make_sample: SampleFn, batch_size: int, *, seed: int, rank: int = 0, shuffle_buffer: int = 64):
        super().__init__()
        if not urls:
            raise ValueError("no shards to read")
        self.urls, self.make_sample, self.batch_size = list(urls), make_sample, batch_size
        self.seed, self.rank, self.shuffle_buffer = seed, rank, shuffle_buffer

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        seed = wds.utils.make_seed(self.seed, self.rank, worker.id if worker else 0)
        shard_rng = random.Random(seed)
        shards = wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True)
        samples = shard_samples(s["url"] for s in shards)
        if self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=shard_rng)(samples)
        decoded = decode_skipping(samples, self.make_sample, np.random.default_rng(seed))
        return wds.batched(self.batch_size, collation_fn=collate, partial=False)(decoded)


def make_loader(stream: ShardStream, num_workers: int = 0) -> DataLoader:
    """Batches from ``stream``, decoded in ``num_workers`` processes (0: in the training process)."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)
