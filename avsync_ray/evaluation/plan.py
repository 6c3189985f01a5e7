"""What one ``avsync eval`` run does, decided on the driver before any work (no Ray, no model): the test videos,
the settings (every sweep combination, then the baselines), where each generated clip goes, and the identities
that make a rerun resume (a setting folder records what made its clips; other settings there are refused) and
let later runs reuse the real clips' features (cached per test set, protocol and network checksums)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from avsync_ray.config.base import parse_override_value
from avsync_ray.config.evaluate import EvalConfig
from avsync_ray.config.sampling import SamplingConfig
from avsync_ray.errors import InputError
from avsync_ray.nested import content_id
from avsync_ray.shards import read_index
from avsync_ray.sources import list_sources
from avsync_ray.storage import exists, join_uri, read_json, write_json_atomic

GT = "gt"  # the variant name of the real clips
Kind = Literal["model", "static", "no_audio"]


class EvalOutputError(InputError):
    """The output folder holds generated clips made with other settings (use another folder)."""


@dataclass(frozen=True)
class Setting:
    """One generated variant of every test clip: a sweep combination of the model, or a baseline."""

    name: str  # the folder under generated/ and the MLflow run name
    kind: Kind
    sampling: SamplingConfig
    swept: dict = field(default_factory=dict)  # the swept fields and their values (empty for the unswept run)


def _value_text(value) -> str:
    return str(value).replace("/", "-")


def plan_settings(config: EvalConfig) -> list[Setting]:
    """Every combination of the sweep (in key order), or the one unswept setting, then the baselines (at the
    unswept sampling settings)."""
    base = config.sampling.model_dump()
    keys = list(config.sweep)
    settings = []
    for values in itertools.product(*(config.sweep[k] for k in keys)) if keys else [()]:
        swept = dict(zip(keys, values))
        sampling = SamplingConfig.model_validate({**base, **swept})
        name = "_".join(f"{k}-{_value_text(getattr(sampling, k))}" for k in keys) or "model"
        settings.append(Setting(name, "model", sampling, {k: getattr(sampling, k) for k in keys}))
    for baseline in config.baselines:
        settings.append(Setting(f"baseline-{baseline}", baseline, config.sampling))
    return settings


def parse_sweep(text: str) -> tuple[str, list]:
    """``key=v1,v2,...`` (a ``--sweep`` option) -> (key, values parsed by the sampling field's type)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not raw.strip():
        raise ValueError(f"--sweep {text!r} is not of the form key=v1,v2,...")
    annotation = SamplingConfig.model_fields[key].annotation if key in SamplingConfig.model_fields else None
    return key, [parse_override_value(value.strip(), annotation) for value in raw.split(",")]


# ------------------------------------------------------------------------------------------------ test videos


@dataclass(frozen=True)
class EvalInput:
    """A unit of input work: one shard (its first ``take`` samples) or one raw video file."""

    shard: str | None = None
    take: int | None = None
    uri: str | None = None
    key: str | None = None
    label: str | None = None

    def to_row(self) -> dict:
        return {"shard": self.shard or "", "take": -1 if self.take is None else self.take, "uri": self.uri or "",
                "key": self.key or "", "label": self.label or ""}  # fmt: skip


def list_eval_inputs(config: EvalConfig) -> tuple[list[EvalInput], str]:
    """The test videos and the test set's identity. Test shards are read through their index (shard order,
    ``max_videos`` cut in that order); anything else is listed as curation lists its input (folders, globs,
    URI lists, CSV/Parquet manifests; the label is the parent folder's name unless a manifest gives one)."""
    test = config.test
    if isinstance(test, str) and exists(join_uri(test, f"{config.test_split}.index.json")):
        index = read_index(test, config.test_split)
        items, budget = [], config.max_videos
        for entry in index["shardlist"]:
            take = entry["nsamples"] if budget is None else min(entry["nsamples"], budget)
            if take > 0:
                items.append(EvalInput(shard=join_uri(test, entry["url"]), take=take))
            budget = None if budget is None else budget - take
        identity = {"shards": [[e["url"], e.get("sha256"), e["nsamples"]] for e in index["shardlist"]], "max_videos": config.max_videos}
    else:
        sources = list_sources(test, config.video_extensions)[: config.max_videos]
        items = [EvalInput(uri=s.uri, key=s.source_id, label=s.label) for s in sources]
        identity = {"videos": [[s.uri, s.source_id, s.label] for s in sources]}
    if not items:
        raise FileNotFoundError(f"test: no test videos found at {test} (shards need {config.test_split}.index.json)")
    return items, content_id(identity)


# ------------------------------------------------------------------------------------------------ identities


def clip_key(video: str, clip: int) -> str:
    return f"{video}_clip-{clip:02d}"


def setting_record(setting: Setting, config: EvalConfig, model_identity: dict, test_set: str) -> dict:
    """Everything that determines a setting's generated clips."""
    return {
        "setting": setting.name,
        "kind": setting.kind,
        "model": model_identity if setting.kind != "static" else None,
        "sampling": setting.sampling.model_dump(mode="json"),
        "clip_seeds": config.clip_seeds,
        "clips_per_video": config.clips_per_video,
        "test_set": test_set,
    }


def claim_setting_folders(output: str, records: list[dict]) -> None:
    """Write each setting's record beside its clips, after checking that none of the folders already holds clips
    made otherwise (as curation refuses an output scored with other settings)."""
    for record in records:
        uri = join_uri(output, "generated", record["setting"], "setting.json")
        if exists(uri) and (found := read_json(uri)) != record:
            changed = sorted(k for k in record if found.get(k) != record[k])
            raise EvalOutputError(
                f"{output} holds clips of setting {record['setting']!r} generated with other settings ({', '.join(changed)} "
                "differ); use another output folder"
            )
    for record in records:
        write_json_atomic(join_uri(output, "generated", record["setting"], "setting.json"), record)


def real_cache_key(config: EvalConfig, test_set: str, checksums: dict[str, str]) -> str:
    """The real clips' features depend on the test set, the clip geometry, the protocol and the networks."""
    geometry = {k: getattr(config.sampling, k) for k in ("num_frames", "fps", "height", "width")}
    return content_id({"test_set": test_set, "geometry": geometry, "clips_per_video": config.clips_per_video,
                    "protocol": config.protocol, "networks": checksums, "metrics": sorted(config.metrics)})  # fmt: skip
