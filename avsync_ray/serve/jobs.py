"""The job book: every animation job of the app, its progress, cancellation flag and finished video, with the
bounds that keep it finite (active jobs, stored results, result lifetime, job timeout). Plain Python: the
``AnimationJobs`` deployment holds one, and the tests drive it with a fake clock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from avsync_ray.serve.schemas import ACTIVE, ApiError, JobStatus, overloaded


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class JobRecord:
    id: str
    settings: dict
    total_steps: int
    created_at: float
    status: JobStatus = JobStatus.queued
    step: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    model: dict | None = None
    video: bytes | None = field(default=None, repr=False)


class JobBook:
    """Jobs by id. ``submit`` refuses (503) once ``max_active`` jobs are queued or running; a cancelled job is
    finished at once (its computation stops at the model's next denoising step); finished jobs are dropped
    after ``result_ttl_s`` or when more than ``max_stored_results`` are kept; an active job older than
    ``job_timeout_s`` fails."""

    def __init__(
        self,
        max_active: int,
        job_timeout_s: float,
        result_ttl_s: float,
        max_stored_results: int,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        self.max_active, self.job_timeout_s, self.result_ttl_s = max_active, job_timeout_s, result_ttl_s
        self.max_stored_results, self.retry_after_s, self.clock = max_stored_results, retry_after_s, clock
        self._jobs: dict[str, JobRecord] = {}  # insertion order = submission order

    # ---------------------------------------------------------------------------------- bookkeeping

    def _expire(self) -> None:
        now = self.clock()
        for job in list(self._jobs.values()):
            if job.status in ACTIVE and now - job.created_at > self.job_timeout_s:
                self._finish(job, JobStatus.failed, error=f"timed out: not finished {self.job_timeout_s:g} s after it was submitted")
            elif job.status not in ACTIVE and now - job.finished_at > self.result_ttl_s:
                del self._jobs[job.id]
        finished = [job for job in self._jobs.values() if job.status not in ACTIVE]
        for job in sorted(finished, key=lambda j: j.finished_at)[: max(0, len(finished) - self.max_stored_results)]:
            del self._jobs[job.id]

    def _finish(self, job: JobRecord, status: JobStatus, error: str | None = None) -> None:
        job.status, job.error, job.finished_at = status, error, self.clock()

    def _active(self) -> list[JobRecord]:
        return [job for job in self._jobs.values() if job.status in ACTIVE]

    def _require(self, job_id: str) -> JobRecord:
        self._expire()
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown, deleted, or finished more than {self.result_ttl_s:g} s ago)")
        return job

    def _cancelled(self, job_ids: Iterable[str]) -> list[str]:
        """Those of ``job_ids`` that should not run on: cancelled, failed (timed out) or gone."""
        return [i for i in job_ids if i not in self._jobs or self._jobs[i].status not in ACTIVE]

    # ---------------------------------------------------------------------------------- API

    def submit(self, settings: dict, total_steps: int) -> dict:
        self._expire()
        if len(self._active()) >= self.max_active:
            raise overloaded(f"the server holds {self.max_active} unfinished jobs, its limit; retry later", self.retry_after_s)
        job = JobRecord(id=uuid.uuid4().hex, settings=dict(settings), total_steps=total_steps, created_at=self.clock())
        self._jobs[job.id] = job
        return self._view(job)

    def start(self, job_ids: Iterable[str], model: dict) -> list[str]:
        """The model replica picked these jobs up: mark them running; returns those it must skip."""
        job_ids = list(job_ids)
        self._expire()
        skip = self._cancelled(job_ids)
        for job_id in set(job_ids) - set(skip):
            job = self._jobs[job_id]
            job.status, job.started_at, job.model = JobStatus.running, self.clock(), model
        return skip

    def progress(self, job_ids: Iterable[str], step: int) -> list[str]:
        """``step`` denoising steps are done for these jobs; returns those that should stop."""
        job_ids = list(job_ids)
        self._expire()
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job.status is JobStatus.running:
                job.step = min(step, job.total_steps)
        return self._cancelled(job_ids)

    def succeed(self, job_id: str, video: bytes, model: dict) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.status in ACTIVE:
            job.video, job.model, job.step = video, model, job.total_steps
            self._finish(job, JobStatus.succeeded)

    def fail(self, job_id: str, error: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.status in ACTIVE:
            self._finish(job, JobStatus.failed, error=error)

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued or running job; a finished one is deleted with its video. Returns the job as it was
        left (a deleted job's last view)."""
        job = self._require(job_id)
        if job.status in ACTIVE:
            self._finish(job, JobStatus.cancelled, error="cancelled by the client")
            return self._view(job)
        del self._jobs[job_id]
        return self._view(job)

    def discard(self, job_id: str) -> None:
        """Forget a job whose video was handed out directly (the :sync route)."""
        self._jobs.pop(job_id, None)

    def video(self, job_id: str) -> tuple[bytes, dict]:
        job = self._require(job_id)
        if job.status is not JobStatus.succeeded:
            detail = f": {job.error}" if job.error else f" (step {job.step}/{job.total_steps})" if job.status is JobStatus.running else ""
            raise ApiError(409, "not_ready", f"job {job_id} is {job.status.value}{detail}; its video exists once it has succeeded")
        return job.video, self._view(job)

    def view(self, job_id: str) -> dict:
        return self._view(self._require(job_id))

    def _view(self, job: JobRecord) -> dict:
        queued = [j.id for j in self._active() if j.status is JobStatus.queued]
        return {
            "id": job.id,
            "status": job.status.value,
            "progress": {"step": job.step, "total_steps": job.total_steps, "fraction": round(job.step / job.total_steps, 4)},
            "queue_position": queued.index(job.id) if job.id in queued else None,
            "settings": job.settings,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "error": job.error,
            "model": job.model,
            "video_url": f"/v1/animations/{job.id}/video" if job.status is JobStatus.succeeded else None,
        }
