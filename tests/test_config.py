"""Typed config: presets validate, unknown keys fail, override precedence, resolved snapshot round trip."""

from __future__ import annotations

import pytest

from avsync_ray.config import (
    ConfigError,
    CurateConfig,
    DemoConfig,
    GenerateConfig,
    TrainSyncConfig,
    apply_override,
    load_config,
    parse_override_value,
    save_config,
)


def test_generate_preset_is_the_official_demo():
    config = load_config(GenerateConfig, "generate")
    assert (config.num_inference_steps, config.audio_guidance_scale, config.guidance_scale, config.seed) == (50, 4.0, 1.0, 123)
    assert (config.num_frames, config.fps, config.height, config.width) == (12, 6.0, 256, 256)


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
    assert config.generate.height == 64  # the preset beats the schema default (256)
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
    assert config.run.name == "2024" and config.data.root == "runs/a #1"  # a number and a YAML comment stay text
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
    config = load_config(TrainSyncConfig, "train-sync-tiny", values={"data.root": "2024 #raw", "run.name": "007"})
    assert config.data.root == "2024 #raw" and config.run.name == "007"
    overridden = load_config(TrainSyncConfig, "train-sync-tiny", overrides=["data.root=other"], values={"data.root": "given"})
    assert overridden.data.root == "other"  # --set applies after the positionals, as after the file


def test_resolved_snapshot_round_trips(tmp_path):
    config = load_config(DemoConfig, "demo", overrides=["generate.seed=42"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(DemoConfig, path=path) == config


@pytest.mark.parametrize("verb", ["curate", "train", "train-sync", "eval-sync", "precompute", "serve"])
def test_readme_documents_every_field(verb):
    from pathlib import Path

    from avsync_ray.config import describe_fields, preset_schema

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name, *_ in describe_fields(preset_schema(verb)) if f"`{name}`" not in readme]
    assert not missing, f"README.md does not document: {missing} (regenerate with `avsync config fields {verb}`)"


def test_every_packaged_preset_validates():
    from avsync_ray.config import preset_names, preset_schema

    required = {"curate": ["input=x", "output=y", "filters.semantic.checkpoint=c", "filters.imagebind.checkpoint=i", "filters.sync.classifier=s"], "train-sync": ["data.root=x", "model.avid_cma=a.pth"],
                "train": ["data.root=x", "model.sd15=sd", "model.imagebind=ib.pth"], "eval-sync": ["classifier=c", "data.root=x"],
                "precompute": ["input.root=x", "output=y", "model.sd15=sd", "model.imagebind=ib.pth"]}  # fmt: skip
    for name in preset_names():
        schema = preset_schema(name)
        verb = next((v for v in sorted(required, key=len, reverse=True) if name == v or name.startswith(f"{v}-")), None)
        assert isinstance(load_config(schema, name, overrides=required.get(verb, [])), schema), name


def test_a_partial_tracking_section_keeps_the_jobs_experiment():
    from avsync_ray.config import PrecomputeConfig, TrainConfig

    curate = CurateConfig.model_validate({"input": "a", "output": "b", "tracking": {"uri": "sqlite:///x.db"},
                                          "filters": {n: {"enabled": False} for n in ("semantic", "imagebind", "sync")}})  # fmt: skip
    assert (curate.tracking.uri, curate.tracking.experiment) == ("sqlite:///x.db", "avsync/curation")
    train = load_config(TrainConfig, "train-tiny", overrides=["tracking.uri=sqlite:///y.db"], values={"data.root": "s"})
    assert train.tracking.experiment == "avsync/avsyncd"
    precompute = load_config(PrecomputeConfig, "precompute-tiny", overrides=["tracking.enabled=false"], values={"input.root": "s", "output": "o"})
    assert precompute.tracking.experiment == "avsync/precompute"
