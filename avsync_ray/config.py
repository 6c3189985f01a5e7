"""Typed configuration: one pydantic tree per job, YAML presets packaged with the code, dotted overrides.

Precedence: schema defaults < packaged preset < user YAML file < ``--set a.b=value`` overrides. Unknown keys
are errors (``extra="forbid"``), and the resolved config is written next to every output.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

T = TypeVar("T", bound="StrictModel")


class ConfigError(ValueError):
    """A config that does not validate; the message lists every bad field by its dotted path."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerateConfig(StrictModel):
    """``avsync generate``: sampling settings (defaults are the official demo's)."""

    num_inference_steps: int = Field(50, ge=1)
    guidance_scale: float = Field(1.0, description="text guidance; off at 1.0 as in the official release")
    audio_guidance_scale: float = Field(4.0, description="audio classifier-free guidance (1, 4 or 8 in the paper)")
    seed: int = 123
    num_frames: int = Field(12, ge=2)
    fps: float = Field(6.0, gt=0)
    height: int = Field(256, ge=8, description="output size; the input image is centre-cropped and resized to it")
    width: int = Field(256, ge=8)
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    official_inplace_step: bool = Field(
        False, description="reproduce the official loop's in-place PNDM step exactly (see AVSyncDPipeline.__call__)"
    )

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_eight(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
        return value


class DemoConfig(StrictModel):
    """``avsync demo``: the embedded end-to-end run on a fresh machine."""

    output_dir: str = "demo_out"
    model_preset: Literal["tiny"] = "tiny"
    seed: int = 0
    generate: GenerateConfig = GenerateConfig()


def _read_yaml(source) -> dict[str, Any]:
    data = yaml.safe_load(source) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config file must hold a mapping at the top level, got {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in (importlib.resources.files("avsync_ray") / "configs").iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    resource = importlib.resources.files("avsync_ray") / "configs" / f"{name}.yaml"
    if not resource.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {preset_names()}")
    return _read_yaml(resource.read_text())


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply ``a.b.c=value``; the value is parsed as YAML (``1`` -> int, ``true`` -> bool, ``[1, 2]`` -> list)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    parts = key.strip().split(".")
    node: dict[str, Any] = {}
    leaf = node
    for part in parts[:-1]:
        leaf = leaf.setdefault(part, {})
    leaf[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return deep_merge(data, node)


def load_config(schema: type[T], preset: str | None = None, path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a validated ``schema`` from a packaged preset, a YAML file (any fsspec URI) and dotted overrides."""
    data: dict[str, Any] = read_preset(preset) if preset else {}
    if path:
        with fsspec.open(path, "r") as handle:
            data = deep_merge(data, _read_yaml(handle))
    for override in overrides:
        data = apply_override(data, override)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  {'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {schema.__name__}:\n{problems}") from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: BaseModel, path: str | Path) -> str:
    """Write the resolved config (the snapshot kept next to an output) and return its path."""
    with fsspec.open(str(path), "w") as handle:
        handle.write(dump_config(config))
    return str(path)
