"""Job specs as `avsync submit` reads them: every spec in jobs/ loads, overrides reach the verb intact, ids say
what ran when, and a bad spec or a bad submission is one line naming what to fix (no cluster needed)."""

from __future__ import annotations

import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avsync_ray.cli import app
from avsync_ray.config.base import ConfigError
from avsync_ray.jobs import load_job_spec, submission_id, with_overrides

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_every_spec_loads(path):
    spec = load_job_spec(path)
    assert spec.task == spec.metadata["task"]
    kwargs = spec.submit_kwargs()
    assert kwargs["entrypoint"] == spec.entrypoint and "kuberay" not in kwargs
    assert all(value is not None for value in kwargs.values())


def test_tasks_are_unique():
    tasks = [load_job_spec(path).task for path in JOBS]
    assert len(tasks) == len(set(tasks))


def test_overrides_are_appended_to_the_verb_and_quoted():
    spec = load_job_spec(JOBS[0])
    tricky = "tracking.uri=sqlite:////tmp/my runs/$HOME;x.db"
    words = shlex.split(with_overrides(spec, ["max_steps=4", tricky]).entrypoint)
    assert words[: len(shlex.split(spec.entrypoint))] == shlex.split(spec.entrypoint)  # the spec's own come first
    assert words[-4:] == ["--set", "max_steps=4", "--set", tricky]  # ... so these win; the shell sees one word each
    with pytest.raises(ConfigError, match="'max_steps' is not of the form key.path=value"):
        with_overrides(spec, ["max_steps"])


def test_submission_id_is_the_task_and_the_utc_time():
    assert submission_id("train-sync", datetime(2026, 11, 26, 12, 0, 5, tzinfo=timezone.utc)) == "train-sync-20261126-120005"
    paris = timezone(timedelta(hours=1))
    assert submission_id("curate", datetime(2026, 11, 26, 13, 0, 5, tzinfo=paris)) == "curate-20261126-120005"


@pytest.mark.parametrize(
    "body, message",
    [
        ("entrypoint: avsync curate a b\nmetadata: {task: curate}\nentrypoint_num_gpu: 1\n", "entrypoint_num_gpu: Extra inputs are not permitted"),
        ("entrypoint: python train.py\nmetadata: {task: train}\n", "entrypoint: Value error, must be an `avsync <verb> ...` command"),
        ("entrypoint: avsync curate a b\nmetadata: {owner: me}\n", "metadata: Value error, needs `task`"),
        ("entrypoint: avsync curate a b\nmetadata: {task: Curate_1}\n", "metadata: Value error, needs `task`"),
        ("entrypoint: avsync curate a b\nmetadata: {task: curate}\nkuberay: {active_deadline_s: 0}\n", "kuberay.active_deadline_s: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_spec_names_the_file_and_the_field(tmp_path, body, message):
    path = tmp_path / "job.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        load_job_spec(path)
    assert str(error.value).startswith(f"{path}: invalid JobSpec:") and message in str(error.value)


def test_submit_refuses_what_the_verb_cannot_take_before_reaching_a_cluster(tmp_path):
    unreachable = "http://127.0.0.1:9"  # nothing listens there: these must fail before any connection
    export = [str(p) for p in JOBS if p.stem == "export"][0]
    result = CliRunner().invoke(app, ["submit", export, "--address", unreachable, "--set", "x=1"])
    assert result.exit_code == 2 and result.output.strip() == f"error: {export}: entrypoint: `avsync export` takes no --set"

    spec = tmp_path / "job.yaml"
    spec.write_text("entrypoint: avsync curat a b\nmetadata: {task: curate}\n")
    result = CliRunner().invoke(app, ["submit", str(spec), "--address", unreachable])
    assert result.exit_code == 2 and result.output.strip() == f"error: {spec}: entrypoint: `avsync curat` is not a verb"

    result = CliRunner().invoke(app, ["submit", str(tmp_path / "missing.yaml"), "--address", unreachable])
    assert result.exit_code == 2 and result.output.strip() == f"error: {tmp_path / 'missing.yaml'}: no such job spec"


def test_submit_to_an_unreachable_cluster_is_one_line():
    result = CliRunner().invoke(app, ["submit", str(JOBS[0]), "--address", "http://127.0.0.1:9", "--no-wait"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: cannot submit to http://127.0.0.1:9: ")
