"""What every job's config shares: the strict base model, path and URI types (relative paths made absolute
where the command runs), actor, tracking and Ray settings, and the loader: packaged YAML presets, user files and
dotted ``--set`` overrides parsed by the type of the field they set, into one validated tree.

Precedence: schema defaults < packaged preset < user YAML file < ``--set a.b=value`` overrides. Unknown keys
are errors (``extra="forbid"``), and the resolved config is written next to every output.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Sequence, TypeVar, Union, get_args, get_origin

import fsspec
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

T = TypeVar("T", bound="StrictModel")


class ConfigError(ValueError):
    """A config that does not validate; the message lists every bad field by its dotted path, and ``problems``
    holds them as (dotted field, message, pydantic error type)."""

    problems: list[tuple[str, str, str]] = []


def missing_input(message: str) -> PydanticCustomError:
    """A field a job needs before it can run (a weight path, an input) that has no value yet; ``avsync config
    show`` displays a preset without them."""
    return PydanticCustomError("missing_input", message)


# Validation errors that only say a required value is not given yet.
MISSING_KINDS = ("missing", "missing_input")


class StrictModel(BaseModel):
    # Defaults are validated like given values: a default path or store (``runs``, ``sqlite:///mlruns.db``) is made
    # absolute where the command runs, as a typed one is.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


def _multiple_of_eight(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
    return value


PixelSize = Annotated[int, Field(ge=8), AfterValidator(_multiple_of_eight)]  # a frame side the VAE can encode


def resolve_local_path(value):
    """A relative local path means relative to where the command runs: it is made absolute when the config is
    validated, before any Ray worker (whose working folder is elsewhere) sees it. URIs (``s3://``, ``models:/``,
    ...) stay."""
    if value is None or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", value):
        return value
    return os.path.abspath(os.path.expanduser(value))


def resolve_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI with a relative local store (``sqlite:///mlruns.db``, ``mlruns``, ``file:mlruns``)
    made absolute against the caller's working folder, so every process (Ray Train's rank 0, actors) logs to the
    same store; server and absolute URIs stay."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if uri.startswith("file:") and not uri.startswith("file://"):
        return "file:" + os.path.abspath(uri[len("file:") :])
    if "://" not in uri and not uri.startswith(("databricks", "file:", "sqlite:")):
        return os.path.abspath(uri)
    return uri


PathOrURI = Annotated[str, AfterValidator(resolve_local_path)]  # a local path (made absolute) or a URI


TrackingURI = Annotated[str, AfterValidator(resolve_tracking_uri)]


DType = Literal["float32", "bfloat16", "float16"]  # torch dtypes by name (devices.torch_dtype maps them)


VIDEO_EXTENSIONS = [".mp4", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".m4v"]  # what a folder input contributes


def count_or_range(value: int | tuple[int, int]) -> int | tuple[int, int]:
    """A fixed count of actors or replicas, or an autoscaling [min, max] range (both at least 1)."""
    low, high = (value, value) if isinstance(value, int) else value
    if not 1 <= low <= high:
        raise ValueError(f"must be a positive count or [min, max] with 1 <= min <= max, got {value}")
    return value


class ActorConfig(StrictModel):
    """Placement of a Ray Data actor pool (one model copy per actor): every batch job and model stage uses it."""

    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractions share a GPU)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor; leave CPUs for the decode tasks on small machines")
    concurrency: int | tuple[int, int] = Field(
        1, description="actors in the pool, or [min, max]: the pool grows into free resources (nodes joining) and shrinks when idle"
    )
    device: str = Field("auto", description="'auto': cuda when the actor has a GPU, else cpu; or 'cpu', 'cuda', 'cuda:1'")
    dtype: DType = Field("float32", description="model precision")

    @field_validator("concurrency")
    @classmethod
    def _positive_range(cls, value):
        return count_or_range(value)


class TrackingConfig(StrictModel):
    """The MLflow run a job logs (from the driver, or rank 0 of a training run)."""

    enabled: bool = Field(True, description="log an MLflow run")
    uri: TrackingURI = Field("sqlite:///mlruns.db", description="any MLflow tracking URI (a relative SQLite or folder store is relative to where the command runs)")
    experiment: str = Field(..., description="MLflow experiment")
    run_name: str | None = Field(None, description="MLflow run name (None: named after the job's output or run name)")


def nested_default(default: StrictModel, description: str):
    """A nested field whose default instance differs from its class's defaults: when a file or ``--set`` gives only
    some of its keys, the others keep ``default``'s values (not the class's). Only the values ``default`` was built
    with are kept: the class's own defaults are validated with the config, so a default store or path is made
    absolute where the command runs, not where the module was imported."""
    given = default.model_dump(exclude_unset=True)

    def over_default(value):
        return {**given, **value} if isinstance(value, dict) else value

    return Annotated[type(default), BeforeValidator(over_default)], Field(given, description=description)


def job_tracking(experiment: str, description: str = "MLflow"):
    """A job's ``tracking`` field: a :class:`TrackingConfig` whose ``experiment`` defaults to the job's own,
    also when a file or ``--set`` gives only some of its fields (``tracking: {uri: ...}``)."""
    return nested_default(TrackingConfig(experiment=experiment), description)


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None starts a local Ray for this command; 'auto' or ray://... joins a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray started by this command")
    progress_bars: bool | None = Field(None, description="Ray Data progress bars (None: when the output is a terminal)")
    verbose: bool = Field(False, description="also show Ray's own internal logs (off: only this job's progress and warnings)")
    resource_wait_s: float = Field(
        600.0, ge=0, description="on a cluster that may add nodes, how long a job waits for the GPUs and CPUs it asks for before it is refused (a local Ray refuses at once)"
    )


class BatchJobRayConfig(RayConfig):
    """Ray for a batch job (``eval``, ``eval-sync``, ``precompute``), which runs in this process when it is small."""

    in_process: bool | None = Field(
        None,
        description="run the job in this process, each actor of its pools a thread (the threads share ray.num_cpus, default every CPU), "
        "instead of on Ray Data actors (whose processes each import torch and load their models first); None: when it would run on a "
        "local Ray, its actors use no GPU and it has at most in_process_max_size clips or samples",
    )
    in_process_max_size: int = Field(32, ge=0, description="the largest job (clips or samples) that in_process: None runs in this process")


def _read_yaml(source, name: str) -> dict[str, Any]:
    """The mapping a YAML document holds; a syntax error is a :class:`ConfigError` naming ``name`` and where."""
    try:
        data = yaml.safe_load(source) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{name}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: a config file must hold a mapping at the top level, got {type(data).__name__}")
    return data


def read_config_file(path: str) -> dict[str, Any]:
    """A user's YAML config file (any fsspec URI)."""
    with fsspec.open(path, "r") as handle:
        return _read_yaml(handle, path)


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in (importlib.resources.files("avsync_ray") / "configs").iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    resource = importlib.resources.files("avsync_ray") / "configs" / f"{name}.yaml"
    if not resource.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {preset_names()}")
    return _read_yaml(resource.read_text(), f"preset {name}")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _leaf_annotation(schema: type[BaseModel], parts: Sequence[str]):
    """The annotation of the field at dotted ``parts`` of ``schema`` (None where the path is not a field)."""
    annotation: Any = schema
    for part in parts:
        models = [a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models or part not in models[0].model_fields:
            return None
        annotation = models[0].model_fields[part].annotation
    return annotation


def _string_kinds(annotation) -> tuple[bool, bool, bool]:
    """(takes a plain string, also takes None, also takes a list) for a field annotation."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    options = [get_args(a)[0] if get_origin(a) is Annotated else a for a in options]
    text = any(a is str or (get_origin(a) is Literal and all(isinstance(v, str) for v in get_args(a))) for a in options)
    return text, type(None) in options, any(get_origin(a) is list for a in options)


def parse_override_value(raw: str, annotation) -> Any:
    """A ``--set`` value parsed by the type of the field it sets: string fields keep the text as it is (a run
    named ``2024``, a path with `` #`` in it), ``null`` clears an optional field, a string-or-list field takes a
    ``[...]`` YAML list; every other field parses the text as YAML (``1`` -> int, ``true`` -> bool, ``[1, 2]``)."""
    text, optional, listed = _string_kinds(annotation)
    if not text:
        return yaml.safe_load(raw) if raw.strip() else ""
    if optional and raw.strip() in ("null", "Null", "NULL", "~"):
        return None
    if listed and raw.lstrip().startswith("["):
        return yaml.safe_load(raw)
    return raw


def apply_override(data: dict[str, Any], override: str, schema: type[BaseModel] | None = None) -> dict[str, Any]:
    """Apply ``a.b.c=value``, the value parsed by :func:`parse_override_value` for the field of ``schema`` it
    sets (as YAML where there is no schema or no such field: validation then names the bad key)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    parts = key.strip().split(".")
    annotation = _leaf_annotation(schema, parts) if schema is not None else None
    return set_value(data, parts, parse_override_value(raw, annotation))


def set_value(data: dict[str, Any], parts: Sequence[str], value: Any) -> dict[str, Any]:
    """``data`` with ``value`` at the dotted path ``parts`` (as given: no parsing)."""
    node: dict[str, Any] = {}
    leaf = node
    for part in parts[:-1]:
        leaf = leaf.setdefault(part, {})
    leaf[parts[-1]] = value
    return deep_merge(data, node)


def load_config(
    schema: type[T],
    preset: str | None = None,
    path: str | None = None,
    overrides: Sequence[str] = (),
    values: dict[str, Any] | None = None,
) -> T:
    """Build a validated ``schema`` from a packaged preset, a YAML file (any fsspec URI), ``values`` (dotted
    keys set verbatim, e.g. a command's positional arguments) and ``--set`` overrides, in that order."""
    data: dict[str, Any] = read_preset(preset) if preset else {}
    if path:
        data = deep_merge(data, read_config_file(path))
    for dotted, value in (values or {}).items():
        data = set_value(data, dotted.split("."), value)
    for override in overrides:
        data = apply_override(data, override, schema)
    return validate_config(schema, data)


def validate_config(schema: type[T], data: dict[str, Any]) -> T:
    """``schema.model_validate(data)``, with every problem named by its dotted field in one :class:`ConfigError`.
    Where required values are absent, the checks that need them (the weights a job's settings call for) have not
    run: they are run on the data with stand-ins for those values, so every missing input is listed at once."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
    absent = [where for where, _, kind in problems if kind == "missing"]
    if absent:
        stand_ins = data
        for where in absent:
            annotation = _leaf_annotation(schema, where.split("."))
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            stand_ins = set_value(stand_ins, where.split("."), {} if is_section else "<missing>")
        try:
            schema.model_validate(stand_ins)
        except ValidationError as exc:
            problems += [p for p in _problems(exc) if p[2] == "missing_input" and p not in problems]
    error = ConfigError(f"invalid {schema.__name__}: " + "; ".join(message if where == ROOT else f"{where}: {message}" for where, message, _ in problems))
    error.problems = problems
    raise error from None


ROOT = "<root>"  # where a problem of the whole config (a model validator's) is


def _problems(error: ValidationError) -> list[tuple[str, str, str]]:
    return [(".".join(map(str, e["loc"])) or ROOT, e["msg"], e["type"]) for e in error.errors()]


def show_config(schema: type[T], preset: str | None = None, path: str | None = None, overrides: Sequence[str] = ()) -> tuple[str, list[str]]:
    """A preset (with a file and overrides) as YAML, and what must still be set before it can run. A preset that
    lacks only its inputs (paths, weights: the job's arguments) is shown with those fields empty; any other
    problem is a :class:`ConfigError`."""
    try:
        return dump_config(load_config(schema, preset, path, overrides)), []
    except ConfigError as error:
        if not error.problems or any(kind not in MISSING_KINDS for _, _, kind in error.problems):
            raise
        missing = [where if kind == "missing" else message if where == ROOT else f"{where}: {message}" for where, message, kind in error.problems]
    data: dict[str, Any] = {}
    for name, _, default, _ in describe_fields(schema):
        data = set_value(data, name.split("."), None if default == "(required)" else json.loads(default))
    data = deep_merge(data, read_preset(preset) if preset else {})
    if path:
        data = deep_merge(data, read_config_file(path))
    for override in overrides:
        data = apply_override(data, override, schema)
    return yaml.safe_dump(data, sort_keys=False), missing


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: BaseModel, path: str | Path) -> str:
    """Write the resolved config (the snapshot kept next to an output) and return its path."""
    with fsspec.open(str(path), "w") as handle:
        handle.write(dump_config(config))
    return str(path)


def describe_fields(schema: type[BaseModel], defaults: BaseModel | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, description) of every leaf field of a config tree, for docs. Nested
    defaults come from the parent's default instance (e.g. ``filters.pixel_diff.min`` is 0.01, not None)."""
    rows = []
    for name, field in schema.model_fields.items():
        dotted = f"{prefix}{name}"
        default = getattr(defaults, name) if defaults is not None else field.default
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            if isinstance(default, dict):  # a nested_default's given values, over the class's defaults as written
                default = field.annotation.model_construct(**default)
            # A required section (e.g. ``run``) has no default instance: its fields show their own defaults.
            rows += describe_fields(field.annotation, default if isinstance(default, BaseModel) else None, f"{dotted}.")
            continue
        shown = "(required)" if field.is_required() and defaults is None else json.dumps(default)
        rows.append((dotted, type_name(field.annotation), shown, field.description or ""))
    return rows


def type_name(annotation) -> str:
    """A field's type as a reader of the docs wants it: ``Annotated`` validators dropped (a path is a ``str``, a
    pixel size an ``int``), unions as "A or B", literals as their values."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, UnionType):
        return " or ".join(type_name(arg) for arg in args)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in args) + "]"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
