"""Ray Job specs call real `avsync` verbs, with options the verb accepts."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from avsync_ray.cli import app

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("spec", JOBS, ids=[p.stem for p in JOBS])
def test_job_entrypoint_is_an_avsync_verb(spec):
    job = yaml.safe_load(spec.read_text())
    words = shlex.split(job["entrypoint"])
    assert words[0] == "avsync"
    command = get_command(app).commands[words[1]]
    known = {opt for param in command.params for opt in param.opts}
    assert {w for w in words[2:] if w.startswith("--")} <= known
    assert job["runtime_env"]["working_dir"] == "."
