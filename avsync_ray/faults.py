"""Fault injection for the project's own crash-recovery tests, kept out of every job's config and loops.

A driver reads the plan from the ``AVSYNC_INJECT_FAULTS`` environment variable (a JSON object) and, when there is
one, wraps the unit of work the tests control: curation's per-video task (:func:`video_task_with_faults`) and a
training rank's optimizer step (:func:`training_step_with_faults`); no config file or ``--set`` can reach it, and
without a plan nothing is wrapped. Each fault fires once per job: a marker file beside the job's output records
that it did, so the retried task or restarted worker group goes on.

- ``{"kill_worker_on_source": "<source id>"}``: the curation task preparing that video ends its worker process
  (as an out-of-memory kill would); Ray retries the task.
- ``{"fail_training_at_step": N, "fail_rank": r}``: training rank ``r`` raises after optimizer step ``N``,
  before that step's checkpoint; Ray Train restarts the worker group from the last checkpoint.
- ``{"slow_video_s": S}``: every curation task sleeps ``S`` seconds before preparing its video, and
  ``{"slow_step_s": S}``: every training rank sleeps ``S`` seconds before each step (so after the previous step's
  checkpoint), so the elastic tests can remove or add a node while work is in flight. These delays fire on every
  call, not once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import TypeVar

from avsync_ray.storage import exists, join_uri, write_bytes_atomic

ENV_VAR = "AVSYNC_INJECT_FAULTS"
T = TypeVar("T")


@dataclass(frozen=True)
class FaultPlan:
    kill_worker_on_source: str | None = None
    fail_training_at_step: int | None = None
    fail_rank: int = 0
    slow_video_s: float = 0.0
    slow_step_s: float = 0.0


def plan_from_env() -> FaultPlan | None:
    """The plan in ``AVSYNC_INJECT_FAULTS`` (None when unset)."""
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return None
    try:
        return FaultPlan(**json.loads(raw))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{ENV_VAR} must be a JSON object with fields of {FaultPlan.__name__}: {exc}") from None


def fire_once(marker_uri: str, note: str) -> bool:
    """True the first time it is called for ``marker_uri`` in a job, which then holds ``note`` (the marker
    survives the process deaths it causes)."""
    if exists(marker_uri):
        return False
    write_bytes_atomic(marker_uri, f"{note}\n".encode())
    return True


def pause(seconds: float) -> None:
    """A test's delay (``slow_video_s``, ``slow_step_s``): nothing when 0."""
    if seconds > 0:
        time.sleep(seconds)


def kill_this_process() -> None:
    """End the process at once, without cleanup, as the kernel's OOM killer would."""
    os._exit(1)


def video_task_with_faults(task: Callable[..., Iterator[dict]], plan: FaultPlan, marker_dir: str) -> Callable[..., Iterator[dict]]:
    """``task(source, ...)`` (curation's per-video task) slowed by ``slow_video_s``, and ending its worker process
    the first time it is given ``kill_worker_on_source`` (markers in ``marker_dir``), so Ray's retry runs."""

    @wraps(task)
    def faulty(source: dict, *args, **kwargs) -> Iterator[dict]:
        pause(plan.slow_video_s)
        if plan.kill_worker_on_source == source["source_id"] and fire_once(join_uri(marker_dir, f"killed-{source['source_id']}"), "worker killed"):
            kill_this_process()
        yield from task(source, *args, **kwargs)

    return faulty


def training_step_with_faults(step: Callable[[int], T], plan: FaultPlan, rank: int, marker_uri: str) -> Callable[[int], T]:
    """``step(number)`` (one optimizer step of a training rank) slowed by ``slow_step_s``, and raising once on rank
    ``fail_rank`` after step ``fail_training_at_step``, before its checkpoint (the marker at ``marker_uri``, in the
    run folder, survives the restart)."""

    @wraps(step)
    def faulty(number: int) -> T:
        pause(plan.slow_step_s)
        result = step(number)
        if plan.fail_training_at_step == number and rank == plan.fail_rank and fire_once(marker_uri, f"step {number}"):
            raise RuntimeError(f"injected failure after step {number} ({ENV_VAR})")
        return result

    return faulty
