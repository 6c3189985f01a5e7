"""What a user gets wrong gets one clear line naming the input or config field (exit 2), never a traceback; and
arguments that used to be accepted silently (a .gif output, NaN or too-short audio, min above max) are checked
before any work."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile
import torch
import yaml
from typer.testing import CliRunner

from avsync_ray.cli import app
from avsync_ray.media import encode_mp4, encode_wav
from avsync_ray.synth import bouncing_ball

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_inputs")
    clip = bouncing_ball(duration=3.0, fps=24, size=(64, 64), seed=3)
    encode_mp4(clip.frames, clip.fps, clip.audio, clip.sample_rate, str(folder / "video.mp4"))
    encode_mp4(clip.frames, clip.fps, None, path=str(folder / "silent.mp4"))
    (folder / "sound.wav").write_bytes(encode_wav(clip.audio, clip.sample_rate))
    soundfile.write(folder / "nan.wav", np.full(32_000, np.nan, dtype=np.float32), 16_000, subtype="FLOAT")
    (folder / "short.wav").write_bytes(encode_wav(clip.audio[:8_000], clip.sample_rate))
    (folder / "blip.wav").write_bytes(encode_wav(clip.audio[:100], clip.sample_rate))
    (folder / "quiet.wav").write_bytes(encode_wav(np.zeros(32_000, dtype=np.float32), clip.sample_rate))
    second = bouncing_ball(duration=1.0, fps=24, size=(64, 64), seed=4)
    encode_mp4(second.frames, second.fps, second.audio, second.sample_rate, str(folder / "one_second.mp4"))
    (folder / "folder.mp4").mkdir()
    return folder


@pytest.fixture(scope="module")
def small_model(tiny_model_dir, tmp_path_factory):
    """The tiny pipeline trained (as its exported config says) at 32x48: fast to sample."""
    model = tmp_path_factory.mktemp("small_model") / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "training.config.yaml").write_text(yaml.safe_dump({"height": 32, "width": 48}))  # as `avsync export` writes it
    return model


def _one_line_error(result, *fragments: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _generate(model, files, *args):
    return runner.invoke(app, ["generate", "--model", str(model), "--category", "ball", "--steps", "1", *map(str, args)])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--video", "{f}/missing.mp4", "--out", "{f}/o.mp4"], ["missing.mp4: not found"]),
        (["--video", "{f}/silent.mp4", "--out", "{f}/o.mp4"], ["silent.mp4: no audio stream"]),
        (["--video", "{f}/sound.wav", "--out", "{f}/o.mp4"], ["sound.wav: no video stream"]),
        (["--video", "{f}/video.mp4", "--image", "{f}/video.mp4", "--audio", "{f}/sound.wav", "--out", "{f}/o.mp4"], ["at most two"]),
        (["--audio", "{f}/sound.wav", "--out", "{f}/o.mp4"], ["need an image"]),
        (["--video", "{f}/video.mp4", "--out", "{f}/o.gif"], ["o.gif", "must end in .mp4"]),
        (["--video", "{f}/video.mp4", "--out", "{f}/folder.mp4"], ["folder.mp4 is a folder"]),
        (["--video", "{f}/video.mp4", "--audio", "{f}/nan.wav", "--out", "{f}/o.mp4"], ["nan.wav", "NaN"]),
        (["--video", "{f}/video.mp4", "--audio", "{f}/blip.wav", "--out", "{f}/o.mp4"], ["blip.wav", "at least 0.025 s"]),
    ],
    ids=["missing-input", "no-audio-stream", "audio-as-video", "three-inputs", "one-input", "gif-output", "output-folder", "nan-audio", "too-short-audio"],
)
def test_generate_refuses_bad_inputs_in_one_line(tiny_model_dir, files, args, fragments):
    _one_line_error(_generate(tiny_model_dir, files, *[a.format(f=files) for a in args]), *fragments)
    assert not (files / "o.mp4").exists()


def test_generate_refuses_a_missing_or_wrong_model_folder_and_a_missing_gpu(files):
    _one_line_error(_generate(files / "nope", files, "--video", files / "video.mp4", "--out", files / "o.mp4"), "nope", "does not exist")
    _one_line_error(_generate(files, files, "--video", files / "video.mp4", "--out", files / "o.mp4"), "has no model_index.json")
    if not torch.cuda.is_available():
        result = _generate(files, files, "--video", files / "video.mp4", "--out", files / "o.mp4", "--set", "device=cuda")
        _one_line_error(result, "device='cuda' needs a CUDA GPU")


def test_debug_shows_the_traceback(files):
    result = runner.invoke(app, ["--debug", "generate", "--model", str(files / "nope"), "--category", "c", "--video", "v.mp4", "--out", "o.mp4"])
    assert result.exit_code != 0 and isinstance(result.exception, FileNotFoundError)


def test_short_audio_is_padded_with_silence_and_reported(small_model, files, tmp_path, caplog):
    out = tmp_path / "o.mp4"
    result = _generate(small_model, files, "--video", files / "video.mp4", "--audio", files / "short.wav", "--out", out)
    assert result.exit_code == 0, result.output
    summary = __import__("json").loads(result.stdout)
    assert summary["size"] == [32, 48]  # the model's own size, not 256x256
    assert summary["audio_seconds"] == 0.5 and summary["audio_padded_s"] == 1.5 and "padded with 1.50 s of silence" in caplog.text
    from avsync_ray.media import decode

    assert len(decode(str(out), video=False).audio) == pytest.approx(32_000, abs=1100)


def test_a_video_shorter_than_the_clip_is_refused_in_words(small_model, files, tmp_path):
    """A 1-s video: "out of range (window [0.000, 2.000) ...)" said nothing a user could act on."""
    result = _generate(small_model, files, "--video", files / "one_second.mp4", "--out", tmp_path / "o.mp4")
    _one_line_error(result, "one_second.mp4: out of range: it lasts 1.00 s, shorter than the 2-s clip the model is conditioned on",
                    "give a video of at least 2 s, or an image and an audio file")  # fmt: skip


def test_generate_names_a_missing_input_before_loading_torch(small_model, tmp_path):
    """The check comes before torch, diffusers and PyAV are imported (it took 9 s and 940 MB to say so)."""
    import subprocess
    import sys

    command = [sys.executable, "-X", "importtime", "-m", "avsync_ray", "generate", "--model", str(small_model), "--category", "c",
               "--video", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o.mp4")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and errors == [f"error: video {tmp_path / 'missing.mp4'}: not found"], done.stderr[-2000:]
    assert not {"torch", "diffusers", "av"} & imported


def test_config_show_displays_every_preset_without_its_inputs():
    from avsync_ray.config.base import preset_names

    for name in preset_names():
        result = runner.invoke(app, ["config", "show", name])
        assert result.exit_code == 0, (name, result.output)
        assert yaml.safe_load(result.stdout), name
    shown = runner.invoke(app, ["config", "show", "curate"])
    assert "input: null" in shown.stdout
    assert "to run it, also set: input; output; filters.semantic.checkpoint, filters.imagebind.checkpoint, filters.sync.classifier (" in shown.output
    shown = runner.invoke(app, ["config", "show", "train"])
    assert "to run it, also set: data.root; model.init=sd15 needs model.sd15, model.imagebind" in shown.output
    bad = runner.invoke(app, ["config", "show", "curate", "--set", "filters.pixel_diff.min=0.5"])
    _one_line_error(bad, "filters.pixel_diff")


def test_every_missing_input_and_weight_is_named_at_once(tmp_path):
    from avsync_ray.config.base import ConfigError, load_config
    from avsync_ray.config.train import TrainConfig

    result = runner.invoke(app, ["curate", str(tmp_path), str(tmp_path / "out")])
    _one_line_error(result, "filters.semantic.checkpoint, filters.imagebind.checkpoint, filters.sync.classifier")
    with pytest.raises(ConfigError) as refused:
        load_config(TrainConfig, "train")
    assert [where for where, *_ in refused.value.problems] == ["data.root", "<root>"] and "model.sd15, model.imagebind" in str(refused.value)


def test_each_verbs_help_example_is_a_valid_override_for_it():
    import re

    from typer.main import get_command

    from avsync_ray.config.base import ConfigError, apply_override
    from avsync_ray.config.presets import preset_schema

    commands = get_command(app).commands
    for name in ("generate", "curate", "train", "train-sync", "precompute", "eval-sync", "demo"):
        help_text = next(p.help for p in commands[name].params if "--set" in p.opts)
        example = re.search(r"--set (\S+)", help_text).group(1)
        schema = preset_schema(name)
        key = example.split("=")[0]
        node = schema
        for part in key.split("."):
            assert part in node.model_fields, (name, example)
            node = node.model_fields[part].annotation
        try:
            apply_override({}, example, schema)
        except ConfigError as error:  # pragma: no cover - the assertion below says which
            pytest.fail(f"{name}: {example}: {error}")


def test_min_above_max_is_refused(tmp_path):
    result = runner.invoke(app, ["curate", str(tmp_path), str(tmp_path / "out"), "--set", "filters.audio_peak.min=0.5", "--set", "filters.audio_peak.max=0.1"])
    _one_line_error(result, "filters.audio_peak", "above max")


@pytest.mark.parametrize("case", ["missing-input", "output-is-a-file", "read-only-output", "manifest-without-uri", "header-only-manifest"])
def test_curate_refuses_bad_arguments_before_starting_ray(tmp_path, case):
    videos = tmp_path / "videos"
    videos.mkdir()
    output = tmp_path / "out"
    source, expected = str(videos), []
    if case == "missing-input":
        source, expected = str(tmp_path / "nope"), ["nope: no such file or folder"]
    elif case == "output-is-a-file":
        output.write_text("x")
        expected = ["is a file"]
    elif case == "read-only-output":
        import os

        if os.geteuid() == 0:
            pytest.skip("root can write into a read-only folder")
        output.mkdir(mode=0o500)
        expected = ["not writable"]
    elif case == "manifest-without-uri":
        (tmp_path / "m.csv").write_text("path,label\na.mp4,x\n")
        source, expected = str(tmp_path / "m.csv"), ["needs a 'uri' column"]
    else:
        (tmp_path / "m.csv").write_text("uri,label\n")
        source, expected = str(tmp_path / "m.csv"), ["lists no videos"]
    args = ["curate", source, str(output), *[f"--set=filters.{n}.enabled=false" for n in ("semantic", "imagebind", "sync")]]
    _one_line_error(runner.invoke(app, args), *expected)


def test_metric_and_eval_sync_name_what_is_missing(tmp_path, files, tiny_classifier_dir):
    video = files / "video.mp4"
    result = runner.invoke(app, ["metric", "score", "--classifier", str(tmp_path / "nope"), "--audio", str(video), "--video", str(video)])
    _one_line_error(result, "nope", "neither a SyncClassifier folder")
    result = runner.invoke(app, ["metric", "alignsync", "--classifier", str(tiny_classifier_dir), "--audio", str(video), "--video", str(video),
                                 "--ref-video", str(video), "--imagebind", str(tmp_path / "ib.pth")])  # fmt: skip
    _one_line_error(result, "ib.pth", "ImageBind weights not found")
    result = runner.invoke(app, ["metric", "score", "--classifier", str(tiny_classifier_dir), "--audio", str(files / "nan.wav"), "--video", str(video)])
    _one_line_error(result, "NaN")
    result = runner.invoke(app, ["eval-sync", str(tiny_classifier_dir), str(tmp_path)])
    _one_line_error(result, "no test.index.json")


def test_a_config_file_that_is_not_yaml_names_the_file_and_the_line(tmp_path, synthetic_shards):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 10\nscaling: {num_workers: 2\n")
    _one_line_error(runner.invoke(app, ["config", "show", "train-tiny", "--config", str(bad)]), f"{bad}: not valid YAML at line 3, column 1")
    _one_line_error(runner.invoke(app, ["train", str(synthetic_shards["root"]), "--config", str(bad)]), "bad.yaml: not valid YAML")
    bad.write_text("- a list\n")
    _one_line_error(runner.invoke(app, ["config", "show", "train-tiny", "--config", str(bad)]), "bad.yaml: a config file must hold a mapping")


def test_eval_into_an_output_of_other_settings_is_refused_in_one_line(tmp_path, synthetic_shards, tiny_model_dir, tiny_classifier_dir):
    import json

    out = tmp_path / "eval"
    (out / "generated" / "model").mkdir(parents=True)
    (out / "generated" / "model" / "setting.json").write_text(json.dumps({"setting": "model", "sampling": {"seed": 5}}))
    result = runner.invoke(app, ["eval", str(tiny_model_dir), str(synthetic_shards["root"]), "--out", str(out), "--set", "metrics=[relsync]",
                                 "--set", f"features.sync_classifier={tiny_classifier_dir}", "--set", "tracking.enabled=false"])  # fmt: skip
    _one_line_error(result, "holds clips of setting 'model' generated with other settings", "use another output folder")


@pytest.mark.parametrize(
    ("metric", "audio", "video", "fragments"),
    [
        ("psync", "short.wav", "video.mp4", ["short.wav: too short for P_sync", "audio covers [0.000, 0.500] s"]),
        ("psync", "one_second.mp4", "one_second.mp4", ["one_second.mp4: too short for P_sync", "need 2.500 s"]),
        ("score", "blip.wav", "video.mp4", ["blip.wav: the audio lasts 0.006 s; at least 0.025 s is needed"]),
    ],
    ids=["psync-short-audio", "psync-one-second-video", "score-blip"],
)
def test_metric_refuses_media_too_short_in_one_line(files, tiny_classifier_dir, metric, audio, video, fragments):
    result = runner.invoke(app, ["metric", metric, "--classifier", str(tiny_classifier_dir), "--audio", str(files / audio), "--video", str(files / video)])
    _one_line_error(result, *fragments)


def test_metric_decodes_within_the_limits(files, tiny_classifier_dir):
    """Decodes stop at `limits` (a video is read only as far as its 2 s, so its length limit is the decode's)."""
    base = ["metric", "score", "--classifier", str(tiny_classifier_dir), "--audio", str(files / "sound.wav"), "--video", str(files / "video.mp4")]
    _one_line_error(runner.invoke(app, [*base, "--set", "limits.max_video_pixels=1000"]), "video", "limits.max_video_pixels")
    _one_line_error(runner.invoke(app, [*base, "--set", "limits.max_audio_s=1"]), "audio", "limits.max_audio_s")
    _one_line_error(runner.invoke(app, [*base, "--set", "limits.max_frames=1"]), "limits.max_frames")  # not a field


def test_metric_warns_of_silent_or_short_audio_as_generate_does(files, tiny_classifier_dir, caplog):
    for audio in ("quiet.wav", "short.wav"):
        result = runner.invoke(app, ["metric", "score", "--classifier", str(tiny_classifier_dir), "--audio", str(files / audio), "--video", str(files / "video.mp4")])
        assert result.exit_code == 0, result.output
    assert "quiet.wav: the audio is silent" in caplog.text
    assert "short.wav: the audio lasts 0.50 s, shorter than the 2.00-s clip" in caplog.text


def test_a_new_store_keeps_its_artifacts_beside_it_whatever_the_working_folder(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from avsync_ray.config.base import TrackingConfig
    from avsync_ray.tracking import log_job_run

    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as Ray Train's rank 0 works in Ray's session folder
    uri = f"sqlite:///{store}/mlruns.db"
    run_id = log_job_run(TrackingConfig(uri=uri, experiment="avsync/x"), "x", {}, {}, {"note.txt": "kept"})
    experiments = MlflowClient(uri).search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", "avsync/x"]
    assert all(e.artifact_location.removeprefix("file://") == str(store / "mlruns" / e.experiment_id) for e in experiments)
    assert (store / "mlruns").joinpath(MlflowClient(uri).get_run(run_id).info.experiment_id, run_id, "artifacts", "note.txt").is_file()
    assert not (elsewhere / "mlruns").exists()


def test_the_demo_checks_its_store_holds_every_run(tmp_path):
    from avsync_ray.config.base import TrackingConfig
    from avsync_ray.demo import check_runs_in_store
    from avsync_ray.errors import WorkFailedError
    from avsync_ray.tracking import log_job_run

    store = f"sqlite:///{tmp_path}/mlruns.db"
    run_id = log_job_run(TrackingConfig(uri=store, experiment="avsync/x"), "x", {}, {}, {})
    check_runs_in_store(store, {"x": run_id})
    with pytest.raises(WorkFailedError, match="lacks the runs of: training, eval"):
        check_runs_in_store(store, {"x": run_id, "training": "0" * 32, "eval": None})


# ------------------------------------------------------------------------------------------------ resources


def test_a_request_the_cluster_cannot_place_names_its_setting():
    from avsync_ray.config.base import ActorConfig
    from avsync_ray.ray_runtime import ResourceRequest, actor_request, shortfall

    cpu_node, gpu_node = {"CPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}
    generator = actor_request("generate_actor", ActorConfig(num_gpus=1.0))
    assert shortfall(generator, [cpu_node]) == "generate_actor.num_gpus=1: each actor needs 1 GPU, and this Ray cluster has no GPU"
    assert shortfall(generator, [cpu_node, gpu_node]) is None
    assert "needs a node with a GPU" in shortfall(actor_request("sync_actor", ActorConfig(device="cuda")), [cpu_node])
    assert shortfall(actor_request("sync_actor", ActorConfig(device="cuda")), [gpu_node]) is None
    for device in ("cpu", "auto"):  # an actor on the CPU needs no GPU anywhere
        assert shortfall(actor_request("actor", ActorConfig(device=device)), [cpu_node]) is None
    assert shortfall(actor_request("actor", ActorConfig(num_cpus=4.0)), [cpu_node]) == "actor.num_cpus=4: each actor needs 4 CPU, and no node of this Ray cluster has that many (at most 2)"
    assert shortfall(actor_request("actor", ActorConfig(num_gpus=0.5, num_cpus=0.5)), [{"CPU": 1.0, "GPU": 1.0}]) is None  # fractions share
    workers = ResourceRequest("training worker", {"CPU": 2.0, "GPU": 1.0}, {"CPU": "scaling.cpus_per_worker=2", "GPU": "scaling.use_gpu=true"}, 3, "scaling.num_workers=3")
    assert shortfall(workers, [gpu_node, {"CPU": 1.0, "GPU": 1.0}]) == "scaling.num_workers=3: 3 training workers of 2 CPU, 1 GPU must run at once, and this Ray cluster fits 2"
    assert shortfall(workers, [gpu_node, {"CPU": 2.0, "GPU": 1.0}]) is None
    assert "all of them at once" in shortfall(workers, [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}])


def test_a_cluster_that_can_grow_is_asked_for_nodes_and_waited_for_a_bounded_time(monkeypatch):
    """On a joined cluster whose autoscaler has a fitting node type: the autoscaler is asked for the bundles, the
    job waits up to ray.resource_wait_s and then is refused (or goes on once the nodes joined); a node type that
    cannot fit refuses at once."""
    import ray.autoscaler.sdk

    from avsync_ray import ray_runtime
    from avsync_ray.config.base import ActorConfig, RayConfig
    from avsync_ray.errors import InputError

    asked: list = []
    nodes = [[{"CPU": 4.0}]]
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: asked.append(bundles))
    monkeypatch.setattr(ray_runtime, "_started_here", lambda: False)
    monkeypatch.setattr(ray_runtime, "_cluster_nodes", lambda: nodes[-1])
    monkeypatch.setattr(ray_runtime, "_node_types", lambda: [({"CPU": 8.0, "GPU": 1.0}, 4)])
    request = ray_runtime.actor_request("generate_actor", ActorConfig(num_gpus=1.0))
    with pytest.raises(InputError, match=r"generate_actor.num_gpus=1: .* \(still, after waiting 0.2 s: ray.resource_wait_s\)"):
        ray_runtime.require_resources([request], RayConfig(resource_wait_s=0.2))
    assert asked == [[{"CPU": 1.0, "GPU": 1.0}], []]  # asked for, then the standing request withdrawn
    monkeypatch.setattr(ray_runtime.time, "sleep", lambda seconds: nodes.append([{"CPU": 4.0}, {"CPU": 8.0, "GPU": 1.0}]))
    ray_runtime.require_resources([request], RayConfig(resource_wait_s=60))  # a GPU node joined during the wait
    monkeypatch.setattr(ray_runtime, "_node_types", lambda: [({"CPU": 8.0}, -1)])
    nodes.append([{"CPU": 4.0}])
    with pytest.raises(InputError, match="nor any node type its autoscaler can add"):
        ray_runtime.require_resources([request], RayConfig(resource_wait_s=60))


def _without_gpus(ray_session) -> None:
    if ray_session.cluster_resources().get("GPU"):
        pytest.skip("this machine's Ray has GPUs")


@pytest.mark.timeout(180)  # before the check, each of these waited forever for a GPU
def test_gpu_defaults_on_a_cpu_only_ray_are_refused_at_start(ray_session, tmp_path, files, synthetic_shards, tiny_model_dir, tiny_classifier_dir):
    _without_gpus(ray_session)
    shards = str(synthetic_shards["root"])
    result = runner.invoke(app, ["eval", str(tiny_model_dir), shards, "--out", str(tmp_path / "eval"), "--set", "metrics=[relsync]",
                                 "--set", f"features.sync_classifier={tiny_classifier_dir}", "--set", "tracking.enabled=false"])  # fmt: skip
    _one_line_error(result, "generate_actor.num_gpus=1: each actor needs 1 GPU", "feature_actor.num_gpus=1", "cannot grow")
    result = runner.invoke(app, ["train-sync", shards, "--preset", "train-sync-tiny", "--set", "scaling.use_gpu=true",
                                 "--set", f"run.storage_path={tmp_path / 'runs'}", "--set", "tracking.enabled=false"])  # fmt: skip
    _one_line_error(result, "scaling.use_gpu=true: each training worker needs 1 GPU")
    result = runner.invoke(app, ["curate", str(files), str(tmp_path / "curated"), "--set", "filters.semantic.enabled=false",
                                 "--set", "filters.imagebind.enabled=false", "--set", f"filters.sync.classifier={tiny_classifier_dir}",
                                 "--set", "sync_actor.device=cuda", "--set", "tracking.enabled=false"])  # fmt: skip
    _one_line_error(result, "sync_actor.device=cuda: needs a node with a GPU")


# ------------------------------------------------------------------------------------------------ noise


def _run_cli(*args: str, cwd=None):
    """``avsync ARGS`` in a fresh process, its output a pipe (not a terminal), as a job's log sees it."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "avsync_ray", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_init_model_prints_its_result_and_nothing_else(tmp_path):
    """No DeepSpeed note about a missing GPU, no Hugging Face "Writing model shards" bar off a terminal."""
    done = _run_cli("init-model", str(tmp_path / "model"))
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]


def test_float16_on_the_cpu_is_one_warning_of_ours(tiny_model_dir, capfd, caplog):
    from avsync_ray.pipelines.loading import load_pipeline

    load_pipeline(tiny_model_dir, "cpu", "float16")
    assert "cannot run with `cpu` device" not in capfd.readouterr().err  # diffusers' warning, once per component
    assert caplog.text.count("dtype=float16 on the CPU") == 1


def test_rays_note_on_actor_arguments_and_its_memory_detector_stay_quiet(ray_session, monkeypatch):
    """The core_worker.cc line every Ray Data pool and Ray Train run forwards (matched by Ray's own skip filter, as
    the CLI sets it), and Ray Data's 15-line high-memory note (its detector off unless verbose)."""
    from ray._private.ray_logging import LogDeduplicator

    from avsync_ray import ray_runtime
    from avsync_ray.config.base import RayConfig

    monkeypatch.delenv("RAY_DEDUP_LOGS_SKIP_REGEX", raising=False)
    monkeypatch.delenv(ray_runtime.VERBOSE_ENV_VAR, raising=False)  # `avsync --debug` in an earlier test sets it
    ray_runtime.skip_noisy_worker_lines()
    line = ("[2026-12-06 22:26:49,555 E 32130 5018] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: "
            "'382577a4882d703fbb0f618801000000' has constructor arguments in the object store and max_restarts > 0. If the "
            "arguments in the object store go out of scope or are lost, the actor restart will fail.")  # fmt: skip
    kept = "(RayTrainWorker pid=17340) step 2/2 loss 1.638"
    deduplicator = LogDeduplicator(5, None, __import__("os").environ["RAY_DEDUP_LOGS_SKIP_REGEX"])
    batch = {"ip": "127.0.0.1", "pid": 1, "job": "01", "is_err": True, "lines": [line, kept]}
    assert [printed for out in deduplicator.deduplicate(batch) for printed in out["lines"]] == [kept]
    ray_runtime.init_ray(RayConfig(progress_bars=False))
    import ray.data

    assert ray.data.DataContext.get_current().issue_detectors_config.high_memory_detector_config.detection_time_interval_s == -1
