"""Ray Job specs (``jobs/*.yaml``) and their submission to a running cluster through the Ray Jobs API.

A spec holds the keyword arguments of ``JobSubmissionClient.submit_job`` (``entrypoint``, ``runtime_env``,
``entrypoint_num_*``, ``metadata``) plus ``kuberay``, the limits only its KubeRay RayJob uses. Its entrypoint is
an ``avsync`` verb, so a cluster runs the command a laptop runs; ``--set`` overrides given at submission are
appended to that verb, where they win over the spec's own (later overrides win in every ``avsync`` verb).

Before anything reaches a cluster, :func:`submission_problems` checks a spec as its job would use it: the spec's
fields, its ``runtime_env`` with Ray's own ``RuntimeEnv``, and its entrypoint parsed by the verb's own command
line, then every ``--set`` key and value (with the positional arguments that fill the config's inputs) loaded
into the verb's typed config as the verb loads it (:data:`VERB_CONFIGS`).

Only :func:`submit` and :func:`follow` talk to Ray; the rest is pure.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

from pydantic import Field, field_validator

from avsync_ray.config.base import ConfigError, StrictModel, load_config, validate_config
from avsync_ray.config.curate import CurateConfig
from avsync_ray.config.demo import DemoConfig
from avsync_ray.config.evaluate import EvalConfig, EvalSyncConfig
from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.config.serve import ServeConfig
from avsync_ray.config.train import PrecomputeConfig, TrainConfig, TrainSyncConfig
from avsync_ray.errors import InputError, WorkFailedError

TASK_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")  # a DNS label: it also names the RayJob


class KubeRayOptions(StrictModel):
    """What the RayJob generated from a spec adds around it (``avsync cluster render``)."""

    active_deadline_s: int = Field(86_400, ge=1, description="RayJob activeDeadlineSeconds: the job is stopped after this")
    ttl_after_finished_s: int = Field(3_600, ge=0, description="RayJob ttlSecondsAfterFinished: its cluster is deleted this long after it ends")


class JobSpec(StrictModel):
    entrypoint: str = Field(description="shell command run by the job's driver: an `avsync` verb")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env (working_dir, excludes, env_vars)")
    entrypoint_num_cpus: int | float | None = Field(None, ge=0, description="CPUs reserved for the driver")
    entrypoint_num_gpus: int | float | None = Field(None, ge=0, description="GPUs reserved for the driver")
    entrypoint_memory: int | None = Field(None, ge=0, description="memory (bytes) reserved for the driver")
    entrypoint_resources: dict[str, float] | None = Field(None, description="custom resources reserved for the driver")
    metadata: dict[str, str] = Field(description="job metadata; `task` names the job and its submission ids")
    kuberay: KubeRayOptions = Field(default_factory=KubeRayOptions)

    @field_validator("entrypoint")
    @classmethod
    def _an_avsync_verb(cls, value: str) -> str:
        words = shlex.split(value)
        if len(words) < 2 or words[0] != "avsync":
            raise ValueError(f"must be an `avsync <verb> ...` command, got {value!r}")
        return value

    @field_validator("metadata")
    @classmethod
    def _has_task(cls, value: dict[str, str]) -> dict[str, str]:
        task = value.get("task")
        if not task or not TASK_NAME.match(task):
            raise ValueError(f"needs `task`: lower-case letters, digits and '-' (it names the job), got {task!r}")
        return value

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def verb(self) -> str:
        return shlex.split(self.entrypoint)[1]

    def submit_kwargs(self) -> dict[str, Any]:
        """The arguments of ``JobSubmissionClient.submit_job`` (unset ones left to Ray's defaults)."""
        fields = ("entrypoint", "runtime_env", "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory", "entrypoint_resources", "metadata")
        return {name: value for name in fields if (value := getattr(self, name)) not in (None, {})}


def load_job_spec(path: str | Path) -> JobSpec:
    """Read and validate a spec; a bad one raises ConfigError naming the file and each bad field."""
    try:
        return load_config(JobSpec, path=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job spec") from None


def with_overrides(spec: JobSpec, overrides: list[str]) -> JobSpec:
    """The spec whose entrypoint ends with ``--set KEY=VALUE`` for each override, shell-quoted."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form key.path=value")
    extra = "".join(f" --set {shlex.quote(override)}" for override in overrides)
    return spec.model_copy(update={"entrypoint": spec.entrypoint + extra})


# --- a spec checked as its job would use it ---------------------------------------------------------------


def _set_overrides(params: dict[str, Any]) -> list[str]:
    return list(params.get("set_") or [])


def _generate_overrides(params: dict[str, Any]) -> list[str]:
    options = (("audio_guidance_scale", params["audio_guidance"]), ("num_inference_steps", params["steps"]), ("seed", params["seed"]))
    return _set_overrides(params) + [f"{key}={value}" for key, value in options if value is not None]


def _train_values(params: dict[str, Any]) -> dict[str, Any]:
    return {"data.root": params["shards"], **({"run.resume": params["resume"]} if params["resume"] else {})}


def _eval_values(params: dict[str, Any]) -> dict[str, Any]:
    from avsync_ray.evaluation.plan import parse_sweep

    values: dict[str, Any] = {"model": params["model"], "test": params["test"], "output": params["out"]}
    for option in params.get("sweep") or []:
        try:
            key, swept = parse_sweep(option)
        except ValueError as exc:
            raise InputError(f"--sweep {option!r}: {exc}") from None
        values[f"sweep.{key}"] = swept
    return values


@dataclass(frozen=True)
class VerbConfig:
    """How an ``avsync`` verb builds its typed config from its parsed command line: the arguments of its
    ``load_config(schema, preset, config, overrides, values)`` call (``values``: its positional arguments and
    options, set verbatim at dotted keys). The verbs of ``cli.py`` load their configs through this table, and the
    job-spec check does too, so both read a command line the same way."""

    schema: type[StrictModel]
    preset: str | None = None  # None: the verb's --preset option names it
    values: Callable[[dict[str, Any]], dict[str, Any]] = lambda params: {}
    overrides: Callable[[dict[str, Any]], list[str]] = _set_overrides

    def load_args(self, params: dict[str, Any]) -> tuple:
        return self.schema, self.preset or params["preset"], params.get("config"), self.overrides(params), self.values(params)


VERB_CONFIGS = {
    "generate": VerbConfig(GenerateConfig, "generate", overrides=_generate_overrides),
    "curate": VerbConfig(CurateConfig, "curate", values=lambda params: {"input": params["input"], "output": params["output"]}),
    "demo": VerbConfig(DemoConfig, "demo"),
    "train-sync": VerbConfig(TrainSyncConfig, values=_train_values),
    "train": VerbConfig(TrainConfig, values=_train_values),
    "precompute": VerbConfig(PrecomputeConfig, values=lambda params: {"input.root": params["shards"], "output": params["out"]}),
    "eval-sync": VerbConfig(EvalSyncConfig, "eval-sync", values=lambda params: {"classifier": params["classifier"], "data.root": params["shards"]}),
    "eval": VerbConfig(EvalConfig, "eval", values=_eval_values),
    "serve": VerbConfig(ServeConfig, "serve"),
}


def _origin(field: str, overrides: list[str]) -> str:
    """``, set by --set key=value``: the last override that set ``field`` or a key inside it, else the last that set
    a section holding it."""
    keys = [(override.partition("=")[0].strip(), override) for override in reversed(overrides)]
    for matches in (lambda key: key == field or key.startswith(f"{field}."), lambda key: field.startswith(f"{key}.")):
        for key, override in keys:
            if matches(key):
                return f", set by --set {override}"
    return ""


def entrypoint_problems(entrypoint: str, verbs: Mapping[str, Any]) -> list[str]:
    """What the entrypoint's ``avsync`` verb would refuse when the job starts: its command line, parsed by the
    verb's own command from ``verbs`` (the CLI's Typer commands), then its config loaded from the preset,
    ``--config``, the positional arguments and every ``--set`` as the verb loads it. One line per problem, naming
    the key."""
    from typer import TyperException

    words = shlex.split(entrypoint)
    verb = words[1]
    command = verbs.get(verb)
    if command is None:
        return [f"`avsync {verb}` is not a verb"]
    try:
        params = command.make_context(f"avsync {verb}", words[2:]).params
    except TyperException as exc:  # click's usage errors, as Typer vendors them
        return [f"avsync {verb}: {exc.format_message() if hasattr(exc, 'format_message') else exc}"]
    if verb not in VERB_CONFIGS:
        return []
    try:
        schema, preset, path, overrides, values = VERB_CONFIGS[verb].load_args(params)
        load_config(schema, preset, path, overrides, values)
    except ConfigError as exc:
        if not exc.problems:
            return [f"avsync {verb}: {exc}"]
        return [
            f"avsync {verb}: {where}: {f'unknown field (not in {schema.__name__})' if kind == 'extra_forbidden' else message}"
            f"{_origin(where, overrides)}"
            for where, message, kind in exc.problems
        ]
    except InputError as exc:
        return [f"avsync {verb}: {exc}"]
    except OSError as exc:  # a --config file that cannot be read here
        return [f"avsync {verb}: {exc.filename}: {exc.strerror}" if exc.filename else f"avsync {verb}: {exc}"]
    return []


def runtime_env_problems(runtime_env: dict[str, Any]) -> list[str]:
    """A ``runtime_env`` as Ray's own ``RuntimeEnv`` takes it (``env_vars`` values must be strings, ...); a key
    it does not know would be taken for a plugin's and ignored, so it is an error here."""
    from ray.runtime_env import RuntimeEnv

    problems = [f"{key}: unknown field (not a Ray runtime_env field)" for key in sorted(set(runtime_env) - RuntimeEnv.known_fields)]
    try:
        RuntimeEnv(**{key: value for key, value in runtime_env.items() if key in RuntimeEnv.known_fields})
    except (TypeError, ValueError) as exc:
        problems.append(str(exc).splitlines()[0])
    return problems


def submission_problems(spec: JobSpec, verbs: Mapping[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Everything the job of ``spec`` submitted with ``overrides`` would be refused for, before it reaches a
    cluster: one line per problem, starting with the spec's field (``entrypoint: avsync curate: shards.short_sid:
    unknown field ...``). ``verbs``: the CLI's commands (None: the entrypoint is not checked)."""
    if verbs is None:
        return [f"runtime_env: {line}" for line in runtime_env_problems(spec.runtime_env)]
    command = verbs.get(spec.verb)
    if command is None:
        return [f"entrypoint: `avsync {spec.verb}` is not a verb"]
    if overrides and "--set" not in {option for param in command.params for option in param.opts}:
        return [f"entrypoint: `avsync {spec.verb}` takes no --set"]
    problems = [f"runtime_env: {line}" for line in runtime_env_problems(spec.runtime_env)]
    return problems + [f"entrypoint: {line}" for line in entrypoint_problems(with_overrides(spec, list(overrides)).entrypoint, verbs)]


def job_spec_problems(document: dict[str, Any], verbs: Mapping[str, Any] | None) -> list[str]:
    """Every problem of a job spec file's content (what ``avsync submit`` would refuse it for)."""
    try:
        spec = validate_config(JobSpec, document)
    except ConfigError as exc:
        return [f"{where}: {'unknown field (not a job spec field)' if kind == 'extra_forbidden' else message}" for where, message, kind in exc.problems]
    return submission_problems(spec, verbs)


def submission_id(task: str, now: datetime | None = None) -> str:
    """``<task>-<UTC timestamp>``, e.g. ``train-sync-20261126-120000``: sortable and tells what ran when."""
    now = now or datetime.now(timezone.utc)
    return f"{task}-{now.astimezone(timezone.utc):%Y%m%d-%H%M%S}"


def logs_command(job_id: str, address: str) -> str:
    return f"ray job logs --follow {job_id} --address {address}"


class SubmissionError(WorkFailedError):
    """The cluster could not be reached, refused the job, or stopped answering; the message says which."""


def _client_errors() -> tuple[type[BaseException], ...]:
    """What the Jobs client raises for an unreachable cluster (ConnectionError), a refusal (RuntimeError, e.g. a
    submission id in use), a bad address (ValueError) and a missing or wrong token (AuthenticationError)."""
    from ray.exceptions import AuthenticationError

    return ConnectionError, RuntimeError, ValueError, AuthenticationError


def submit(spec: JobSpec, address: str | None = None, job_id: str | None = None) -> tuple[str, str]:
    """Submit ``spec`` to the cluster at ``address`` (its dashboard URL; None: RAY_ADDRESS or the local
    cluster, as Ray resolves it). Returns (submission id, the address the client resolved)."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(submission_id=job_id or submission_id(spec.task), **spec.submit_kwargs())
    except _client_errors() as exc:
        raise SubmissionError(f"cannot submit to {address or 'the default cluster'}: {exc}") from None
    return job_id, client.get_address()


def follow(job_id: str, address: str, out: TextIO | None = None) -> tuple[str, str]:
    """Stream the job's logs to ``out`` (this process's stdout at call time) until it ends; returns (final status,
    Ray's message about it)."""
    from ray.job_submission import JobSubmissionClient

    out = out or sys.stdout

    async def tail(client: JobSubmissionClient) -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        client = JobSubmissionClient(address)
        asyncio.run(tail(client))
        info = client.get_job_info(job_id)
        while not info.status.is_terminal():  # the log stream can close a moment before the status is final
            time.sleep(0.5)
            info = client.get_job_info(job_id)
    except _client_errors() as exc:
        raise SubmissionError(f"lost job {job_id} (it may still run; `{logs_command(job_id, address)}`): {exc}") from None
    return str(info.status.value), info.message or ""
