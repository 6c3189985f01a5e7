"""Job specs as `avsync submit` reads them: every spec in jobs/ loads, overrides reach the verb intact, ids say
what ran when, and a bad spec or a bad submission (a --set key or value the verb's config refuses, in the spec
or on the command line) is one line naming what to fix, before any cluster is contacted. The spec check builds
each verb's config as the verb does: a test runs every verb of the CLI and compares."""

from __future__ import annotations

import shlex
import sys
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import avsync_ray.cli
from avsync_ray.cli import app
from avsync_ray.config.base import ConfigError
from avsync_ray.jobs import VERB_CONFIGS, entrypoint_problems, load_job_spec, submission_id, submission_problems, with_overrides

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens there: a check that passes ends in "cannot submit"


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


def test_submit_refuses_a_set_key_or_value_the_verbs_config_refuses(tmp_path):
    """On the command line or inside the spec's entrypoint: one line naming the key, before any connection."""
    curate = [str(p) for p in JOBS if p.stem == "curate-tiny"][0]
    result = CliRunner().invoke(app, ["submit", curate, "--address", UNREACHABLE, "--set", "shards.short_sid=128"])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {curate}: entrypoint: avsync curate: shards.short_sid: unknown field (not in CurateConfig), set by --set shards.short_sid=128"
    )
    result = CliRunner().invoke(app, ["submit", curate, "--address", UNREACHABLE, "--set", "filters.audio_peak.min=loud"])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {curate}: entrypoint: avsync curate: filters.audio_peak.min: Input should be a valid number, unable to parse string"
        " as a number, set by --set filters.audio_peak.min=loud"
    )
    spec = tmp_path / "curate-tiny.yaml"
    spec.write_text(Path(curate).read_text().replace("shards.short_side=128", "shards.short_sid=128"))
    result = CliRunner().invoke(app, ["submit", str(spec), "--address", UNREACHABLE])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {spec}: entrypoint: avsync curate: shards.short_sid: unknown field (not in CurateConfig), set by --set shards.short_sid=128"
    )
    # The key the message names is the one that was set, not a section set later (which cannot remove it).
    result = CliRunner().invoke(app, ["submit", str(spec), "--address", UNREACHABLE, "--set", "shards={short_side: 64}"])
    assert result.exit_code == 2 and result.output.strip().endswith("shards.short_sid: unknown field (not in CurateConfig), set by --set shards.short_sid=128")
    # A valid --set passes the check: then the (absent) cluster is contacted.
    result = CliRunner().invoke(app, ["submit", curate, "--address", UNREACHABLE, "--no-wait", "--set", "shards.short_side=64"])
    assert result.exit_code == 1 and result.output.startswith(f"error: cannot submit to {UNREACHABLE}: "), result.output


def test_inputs_the_entrypoint_gives_are_understood():
    """Required inputs given positionally (curate's INPUT and OUTPUT, train's SHARDS as data.root) or by --set
    (precompute's model.sd15, here at submission) are inputs, not missing fields; left out, they are errors."""
    verbs = typer.main.get_command(app).commands
    minimal = "--set filters.semantic.enabled=false --set filters.imagebind.enabled=false --set filters.sync.enabled=false"
    assert entrypoint_problems(f"avsync curate /data/raw /data/shards {minimal}", verbs) == []
    assert entrypoint_problems(f"avsync curate /data/raw {minimal}", verbs) == ["avsync curate: Missing argument 'output'."]
    assert entrypoint_problems("avsync train-sync s3://b/shards/ --preset train-sync-tiny", verbs) == []
    assert entrypoint_problems("avsync eval-sync /mnt/models/sync-classifier s3://b/test/", verbs) == []

    precompute = load_job_spec([p for p in JOBS if p.stem == "precompute"][0])
    without = precompute.model_copy(update={"entrypoint": precompute.entrypoint.replace("--set model.sd15=/mnt/models/stable-diffusion-v1-5", "")})
    assert submission_problems(without, verbs) == ["entrypoint: avsync precompute: <root>: model.init=sd15 needs model.sd15"]
    assert submission_problems(without, verbs, ["model.sd15=/mnt/models/stable-diffusion-v1-5"]) == []


class _Loaded(Exception):
    """Raised by the stand-in of cli._load: the verb's load_config arguments, captured before any work."""


# What the verbs import before they load their config (the work itself, never reached here): stand-ins keep this
# test from importing torch, diffusers and Ray Serve for nothing.
_WORK_MODULES = ("avsync_ray.generate", "avsync_ray.curation.pipeline", "avsync_ray.demo", "avsync_ray.training.features",
                 "avsync_ray.training.launcher", "avsync_ray.training.precompute", "avsync_ray.evaluation.batch", "avsync_ray.serve.app")  # fmt: skip


class _StandIn(types.ModuleType):
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


# Command lines of every verb with a config: the job specs' entrypoints, and the options they leave out.
EXTRA_COMMANDS = [
    ["generate", "--model", "m", "--out", "o.mp4", "--category", "dog barking", "--steps", "25", "--seed", "7", "--set", "fps=8"],
    ["train", "s3://b/shards/", "--preset", "train-tiny", "--resume", "latest", "--config", "{config}", "--set", "max_steps=3"],
    ["demo", "--set", "sync_training_steps=20"],
    ["serve", "--set", "model.source=models:/avsyncd@champion"],
]


def _commands(tmp_path: Path) -> list[list[str]]:
    config = tmp_path / "over.yaml"
    config.write_text("max_steps: 2\n")
    from_specs = [shlex.split(load_job_spec(path).entrypoint)[1:] for path in JOBS]
    return [words for words in from_specs if words[0] in VERB_CONFIGS] + [[w.format(config=config) for w in words] for words in EXTRA_COMMANDS]


def test_each_verb_loads_its_config_as_the_spec_check_does(tmp_path, monkeypatch):
    """Running each verb of cli.py (its work stubbed out) makes exactly the load_config call the spec check makes
    from jobs.VERB_CONFIGS, for every verb that has a config."""
    for name in _WORK_MODULES:
        monkeypatch.setitem(sys.modules, name, _StandIn(name))

    def capture(schema, preset, path, overrides, values=None):
        raise _Loaded(schema, preset, path, list(overrides or []), values or {})

    monkeypatch.setattr(avsync_ray.cli, "load_config", capture)
    verbs = typer.main.get_command(app).commands
    commands = _commands(tmp_path)
    assert {words[0] for words in commands} == set(VERB_CONFIGS)  # every verb with a config is exercised
    for words in commands:
        result = CliRunner().invoke(app, words)
        assert isinstance(result.exception, _Loaded), (words, result.output)
        params = verbs[words[0]].make_context(f"avsync {words[0]}", words[1:]).params
        schema, preset, path, overrides, values = VERB_CONFIGS[words[0]].load_args(params)
        assert result.exception.args == (schema, preset, path, overrides, values), words
