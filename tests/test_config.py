"""Typed config: presets validate, unknown keys fail, override precedence, resolved snapshot round trip."""

from __future__ import annotations

import os

import pytest

from avsync_ray.config.base import ConfigError, apply_override, load_config, parse_override_value, save_config
from avsync_ray.config.curate import CurateConfig
from avsync_ray.config.demo import DemoConfig
from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.config.train import TrainSyncConfig


def test_generate_preset_is_the_official_demo():
    config = load_config(GenerateConfig, "generate")
    assert (config.num_inference_steps, config.audio_guidance_scale, config.guidance_scale, config.seed) == (50, 4.0, 1.0, 123)
    assert (config.num_frames, config.fps, config.height, config.width, config.scheduler) == (12, 6.0, None, None, "pndm")


def test_unknown_keys_and_bad_values_fail_with_their_path():
    with pytest.raises(ConfigError, match="num_inference_stepz"):
        load_config(GenerateConfig, "generate", overrides=["num_inference_stepz=3"])
    with pytest.raises(ConfigError, match="generate.height"):
        load_config(DemoConfig, "demo", overrides=["generate.height=60"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(GenerateConfig, "generate", overrides=["seed"])


def test_precedence_defaults_preset_file_overrides(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("generate:\n  seed: 5\n  num_inference_steps: 7\n")
    config = load_config(DemoConfig, "demo", str(user), ["generate.seed=9"])
    assert config.generate.seed == 9  # --set beats the file
    assert config.generate.num_inference_steps == 7  # the file beats the preset (25)
    assert config.generate.device == "cpu"  # the preset beats the schema default ("auto")
    assert config.generate.guidance_scale == 1.0  # schema default where nobody says otherwise


def test_override_values_are_yaml_where_no_field_says_otherwise():
    data = apply_override({}, "a.b=[1, 2]")
    data = apply_override(data, "a.c=true")
    data = apply_override(data, "d=0.5")
    assert data == {"a": {"b": [1, 2], "c": True}, "d": 0.5}


def test_override_values_are_parsed_by_the_type_of_their_field():
    config = load_config(
        TrainSyncConfig, "train-sync-tiny",
        overrides=["run.name=2024", "data.root=runs/a #1", "tracking.run_name=null", "max_steps=7", "loader.randflip=false",
                   "optimizer.betas=[0.8, 0.9]", "tracking.experiment=true"],
    )  # fmt: skip
    assert config.run.name == "2024" and config.data.root == os.path.abspath("runs/a #1")  # a number and a YAML comment stay text
    assert config.tracking.run_name is None and config.tracking.experiment == "true"
    assert config.max_steps == 7 and config.loader.randflip is False and config.optimizer.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(TrainSyncConfig, "train-sync-tiny", overrides=["data.root=x", "max_steps=many"])


def test_string_or_list_fields_take_a_yaml_list_or_any_text():
    field = CurateConfig.model_fields["input"].annotation
    assert parse_override_value("[a, b]", field) == ["a", "b"]
    assert parse_override_value("videos #2/*.mp4", field) == "videos #2/*.mp4"
    assert parse_override_value("null", GenerateConfig.model_fields["device"].annotation) == "null"  # not optional: text


def test_positional_values_are_taken_verbatim():
    config = load_config(TrainSyncConfig, "train-sync-tiny", values={"data.root": "s3://b/2024 #raw", "run.name": "007"})
    assert config.data.root == "s3://b/2024 #raw" and config.run.name == "007"
    overridden = load_config(TrainSyncConfig, "train-sync-tiny", overrides=["data.root=s3://b/other"], values={"data.root": "s3://b/given"})
    assert overridden.data.root == "s3://b/other"  # --set applies after the positionals, as after the file


def test_resolved_snapshot_round_trips(tmp_path):
    config = load_config(DemoConfig, "demo", overrides=["generate.seed=42"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(DemoConfig, path=path) == config


@pytest.mark.parametrize("verb", ["curate", "train", "train-sync", "eval-sync", "precompute", "eval", "serve"])
def test_readme_documents_every_field(verb):
    from pathlib import Path

    from avsync_ray.config.base import describe_fields
    from avsync_ray.config.presets import preset_schema

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name, *_ in describe_fields(preset_schema(verb)) if f"`{name}`" not in readme]
    assert not missing, f"README.md does not document: {missing} (regenerate with `avsync config fields {verb}`)"


# What each verb's preset needs besides its defaults (inputs and weights), as --set overrides.
REQUIRED = {"curate": ["input=x", "output=y", "filters.semantic.checkpoint=c", "filters.imagebind.checkpoint=i", "filters.sync.classifier=s"], "train-sync": ["data.root=x", "model.avid_cma=a.pth"],
            "train": ["data.root=x", "model.sd15=sd", "model.imagebind=ib.pth"], "eval-sync": ["classifier=c", "data.root=x"],
            "eval": ["model=m", "test=t", "output=o", "features.fid_inception=f", "features.i3d=i", "features.imagebind=b", "features.sync_classifier=s"],
            "precompute": ["input.root=x", "output=y", "model.sd15=sd", "model.imagebind=ib.pth"]}  # fmt: skip


def _every_preset() -> dict:
    """Every packaged preset validated with only what it needs."""
    from avsync_ray.config.base import preset_names
    from avsync_ray.config.presets import preset_schema

    configs = {}
    for name in preset_names():
        verb = next((v for v in sorted(REQUIRED, key=len, reverse=True) if name == v or name.startswith(f"{v}-")), None)
        configs[name] = load_config(preset_schema(name), name, overrides=REQUIRED.get(verb, []))
    return configs


def test_every_packaged_preset_validates():
    from avsync_ray.config.presets import preset_schema

    for name, config in _every_preset().items():
        assert isinstance(config, preset_schema(name)), name


def test_every_default_path_and_store_means_relative_to_where_the_command_runs(tmp_path, monkeypatch):
    """Defaults nobody typed (``tracking.uri``, ``cache``, ``output_dir``, a model source's store) are resolved as
    typed values are: a config re-validated in another folder (as a Ray worker does) is the same config."""
    monkeypatch.chdir(tmp_path)
    configs = _every_preset()
    store = f"sqlite:///{tmp_path}/mlruns.db"
    assert configs["train-tiny"].tracking.uri == configs["curate"].tracking.uri == configs["eval"].tracking.uri == store
    assert configs["serve"].model.tracking_uri == configs["serve"].sync_classifier.tracking_uri == configs["demo"].tracking_uri == store
    assert (configs["eval"].cache, configs["demo"].output_dir) == (str(tmp_path / "eval_cache"), str(tmp_path / "demo_out"))
    default_run = TrainSyncConfig.model_validate({"max_steps": 1, "data": {"root": "s"}, "run": {"name": "r"}, "model": {"init": "random"}})
    assert default_run.run.storage_path == str(tmp_path / "runs")  # RunSettings' own default, no preset
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name, config in configs.items():
        assert type(config).model_validate(config.model_dump(mode="json")) == config, name


def test_a_partial_tracking_section_keeps_the_jobs_experiment():
    from avsync_ray.config.train import PrecomputeConfig, TrainConfig

    curate = CurateConfig.model_validate({"input": "a", "output": "b", "tracking": {"uri": "sqlite:///x.db"},
                                          "filters": {n: {"enabled": False} for n in ("semantic", "imagebind", "sync")}})  # fmt: skip
    assert (curate.tracking.uri, curate.tracking.experiment) == (f"sqlite:///{os.path.abspath('x.db')}", "avsync/curation")
    train = load_config(TrainConfig, "train-tiny", overrides=["tracking.uri=sqlite:///y.db"], values={"data.root": "s"})
    assert train.tracking.experiment == "avsync/avsyncd"
    precompute = load_config(PrecomputeConfig, "precompute-tiny", overrides=["tracking.enabled=false"], values={"input.root": "s", "output": "o"})
    assert precompute.tracking.experiment == "avsync/precompute"


def test_relative_paths_and_stores_mean_relative_to_where_the_command_runs(tmp_path, monkeypatch):
    """Resolved when the config is validated, so a Ray worker (in its own working folder) sees the same files."""
    from avsync_ray.config.base import resolve_tracking_uri
    from avsync_ray.config.evaluate import EvalSyncConfig

    monkeypatch.chdir(tmp_path)
    config = load_config(
        TrainSyncConfig, "train-sync-tiny",
        overrides=["run.storage_path=runs", "tracking.uri=sqlite:///mlruns.db", "run.resume=ckpt/checkpoint_1"],
        values={"data.root": "shards"},
    )  # fmt: skip
    assert config.data.root == str(tmp_path / "shards") and config.run.storage_path == str(tmp_path / "runs")
    assert config.tracking.uri == f"sqlite:///{tmp_path}/mlruns.db" and config.run.resume == str(tmp_path / "ckpt/checkpoint_1")
    assert load_config(TrainSyncConfig, "train-sync-tiny", overrides=["run.resume=latest"], values={"data.root": "x"}).run.resume == "latest"
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # what a worker does with the resolved config: the same paths
    assert TrainSyncConfig.model_validate(config.model_dump(mode="json")) == config
    curate = load_config(CurateConfig, "curate", overrides=[f"filters.{n}.enabled=false" for n in ("semantic", "imagebind", "sync")],
                         values={"input": ["../a.mp4", "s3://b/c.mp4"], "output": "out"})  # fmt: skip
    assert curate.input == [str(tmp_path / "a.mp4"), "s3://b/c.mp4"] and curate.output == str(elsewhere / "out")
    eval_sync = load_config(EvalSyncConfig, "eval-sync", values={"classifier": "cls", "data.root": "gs://b/test"})
    assert eval_sync.classifier == str(elsewhere / "cls") and eval_sync.data.root == "gs://b/test"
    for uri in ("http://mlflow:5000", "sqlite:////abs/m.db", "databricks", "sqlite:///:memory:"):
        assert resolve_tracking_uri(uri) == uri
    assert resolve_tracking_uri("mlruns") == str(elsewhere / "mlruns") and resolve_tracking_uri("file:mlruns") == f"file:{elsewhere}/mlruns"
