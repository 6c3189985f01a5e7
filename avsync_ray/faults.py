"""Fault injection for the project's own crash-recovery tests, kept out of every job's config.

A driver reads the plan from the ``AVSYNC_INJECT_FAULTS`` environment variable (a JSON object) and hands it
to its workers explicitly; no config file or ``--set`` can reach it. Each fault fires once per job: a marker
file beside the job's output records that it did, so the retried task or restarted worker group goes on.

- ``{"kill_worker_on_source": "<source id>"}``: the curation task preparing that video ends its worker process
  (as an out-of-memory kill would); Ray retries the task.
- ``{"fail_training_at_step": N, "fail_rank": r}``: training rank ``r`` raises after optimizer step ``N``,
  before that step's checkpoint; Ray Train restarts the worker group from the last checkpoint.
- ``{"slow_video_s": S}``: every curation task sleeps ``S`` seconds before preparing its video, and
  ``{"slow_step_s": S}``: every training rank sleeps ``S`` seconds after each step (and its checkpoint), so the
  elastic tests can remove or add a node while work is in flight. These delays fire on every call, not once.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from avsync_ray.storage import exists, write_bytes_atomic

ENV_VAR = "AVSYNC_INJECT_FAULTS"


@dataclass(frozen=True)
class FaultPlan:
    kill_worker_on_source: str | None = None
    fail_training_at_step: int | None = None
    fail_rank: int = 0
    slow_video_s: float = 0.0
    slow_step_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


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
