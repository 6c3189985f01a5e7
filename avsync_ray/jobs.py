"""Ray Job specs (``jobs/*.yaml``) and their submission to a running cluster through the Ray Jobs API.

A spec holds the keyword arguments of ``JobSubmissionClient.submit_job`` (``entrypoint``, ``runtime_env``,
``entrypoint_num_*``, ``metadata``) plus ``kuberay``, the limits only its KubeRay RayJob uses. Its entrypoint is
an ``avsync`` verb, so a cluster runs the command a laptop runs; ``--set`` overrides given at submission are
appended to that verb, where they win over the spec's own (later overrides win in every ``avsync`` verb).

Only :func:`submit` and :func:`follow` talk to Ray; the rest is pure.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from pydantic import Field, field_validator

from avsync_ray.config.base import ConfigError, StrictModel, load_config
from avsync_ray.errors import WorkFailedError

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
