"""Which config tree each packaged preset fills."""

from __future__ import annotations

from avsync_ray.config.base import ConfigError, StrictModel
from avsync_ray.config.curate import CurateConfig
from avsync_ray.config.demo import DemoConfig
from avsync_ray.config.evaluate import EvalConfig, EvalSyncConfig
from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.config.serve import ServeConfig
from avsync_ray.config.train import PrecomputeConfig, TrainConfig, TrainSyncConfig


def preset_schema(name: str) -> type[StrictModel]:
    """The config tree a packaged preset fills (presets named after a verb, optionally with a ``-suffix``)."""
    schemas = {"generate": GenerateConfig, "demo": DemoConfig, "curate": CurateConfig, "train-sync": TrainSyncConfig,
               "train": TrainConfig, "eval-sync": EvalSyncConfig, "precompute": PrecomputeConfig, "eval": EvalConfig,
               "serve": ServeConfig}  # fmt: skip
    for verb in sorted(schemas, key=len, reverse=True):
        if name == verb or name.startswith(f"{verb}-"):
            return schemas[verb]
    raise ConfigError(f"no config schema for preset {name!r}; presets start with one of {sorted(schemas)}")
