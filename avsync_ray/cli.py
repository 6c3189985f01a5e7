"""``avsync``: one thin command per library entry point.

Every verb returns its result, which is printed on stdout (JSON, or one summary line); everything else a
run prints (progress, Ray's and DeepSpeed's logs) goes to stderr. An error the user can fix (a bad argument,
config field or input file, a missing GPU, a refused resume) is one line on stderr with exit code 2, and an
expected failure of the work itself exit code 1; ``avsync --debug ...`` shows their tracebacks (and Ray's own
logs), and any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from avsync_ray.config.base import ConfigError, load_config, preset_names, read_preset, show_config
from avsync_ray.config.curate import CurateConfig
from avsync_ray.config.demo import DemoConfig
from avsync_ray.config.evaluate import EvalConfig, EvalSyncConfig
from avsync_ray.config.presets import preset_schema
from avsync_ray.config.sampling import GenerateConfig
from avsync_ray.config.serve import ServeConfig
from avsync_ray.config.train import PrecomputeConfig, TrainConfig, TrainSyncConfig
from avsync_ray.errors import InputError, WorkFailedError

app = typer.Typer(help="AVSyncD at cluster scale: curation, training, evaluation and serving.", no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect the typed configs and their packaged presets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
cluster_app = typer.Typer(help="Cluster configs: check them offline, render the KubeRay RayJobs from jobs/.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

ConfigOption = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file (any fsspec URI) over the preset.")]
ResumeOption = Annotated[Optional[str], typer.Option(help="'latest' continues the run from its newest checkpoint; or a checkpoint URI.")]


def set_option(example: str):
    """The repeatable ``--set`` option, with an example that is valid for the verb it belongs to."""
    return Annotated[Optional[list[str]], typer.Option("--set", help=f"Dotted config override, e.g. --set {example} (repeatable).")]


class _Settings:
    debug = False


def _usage_errors() -> tuple[type[BaseException], ...]:
    """What a user fixes by changing the command: arguments, config, input files, devices, refused resumes."""
    from avsync_ray.devices import DeviceError
    from avsync_ray.media import MediaError
    from avsync_ray.storage import StorageError

    return (ConfigError, InputError, DeviceError, MediaError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            FileExistsError, PermissionError, StorageError, typer.BadParameter)  # fmt: skip


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
        return f"{error.filename}: {error.strerror or error}"
    return str(error).strip() or type(error).__name__


def verb(name: str | None = None, group: typer.Typer = app):
    """Register a command of ``group`` whose return value is its result, with expected errors as one line."""

    def register(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            try:
                with contextlib.redirect_stdout(sys.stderr):  # stdout is for the result only
                    result = function(*args, **kwargs)
            except (typer.Exit, typer.Abort):
                raise
            except Exception as error:
                expected = 2 if isinstance(error, _usage_errors()) else 1 if isinstance(error, WorkFailedError) else None
                if expected is None or _Settings.debug:
                    raise
                typer.echo(f"error: {_message(error)}", err=True)
                raise typer.Exit(expected) from None
            if result is not None:
                typer.echo(result if isinstance(result, str) else json.dumps(result, indent=2, default=str, allow_nan=False))

        return group.command(name)(run)

    return register


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of expected errors, and Ray's own logs.")] = False,
):
    from avsync_ray.ray_runtime import VERBOSE_ENV_VAR

    _Settings.debug = debug
    if debug:
        os.environ[VERBOSE_ENV_VAR] = "1"  # Ray workers started by this command log everything too
    # This project's progress lines (INFO) on stderr; other libraries' warnings only, unless debugging.
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("avsync_ray").setLevel(logging.INFO)
    if not debug:  # MLflow narrates its store's set-up and new experiments at INFO on its own handler, set on import
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def _load(schema, preset: str, path: str | None, overrides: list[str] | None, values: dict | None = None):
    """The verb's config: ``values`` are its positional arguments, taken verbatim (no YAML parsing)."""
    return load_config(schema, preset, path, overrides or [], values)


@verb()
def generate(
    model: Annotated[str, typer.Option(help="AVSyncD pipeline folder (init-model / convert-official / export output).")],
    out: Annotated[str, typer.Option(help="Output .mp4 (any fsspec URI).")],
    category: Annotated[str, typer.Option(help="Class prompt, e.g. 'lions roaring'.")],
    image: Annotated[Optional[str], typer.Option(help="First frame (image file).")] = None,
    audio: Annotated[Optional[str], typer.Option(help="Audio: a sound file or a video with an audio track.")] = None,
    video: Annotated[Optional[str], typer.Option(help="Video whose centred clip gives the image and/or audio.")] = None,
    audio_guidance: Annotated[Optional[float], typer.Option(help="Audio guidance scale (default 4.0).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Inference steps (default 50).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (default 123).")] = None,
    config: ConfigOption = None,
    set_: set_option("num_inference_steps=25") = None,
):
    """Animate an image with audio: writes an mp4 (12 frames at 6 fps with the 2-s conditioning audio)."""
    from avsync_ray.generate import run_generate

    overrides = list(set_ or [])
    for key, value in (("audio_guidance_scale", audio_guidance), ("num_inference_steps", steps), ("seed", seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = _load(GenerateConfig, "generate", config, overrides)
    return run_generate(model, out, category, cfg, image=image, audio=audio, video=video)


@verb("init-model")
def init_model(
    out_dir: Annotated[str, typer.Argument(help="Folder to write the pipeline to.")],
    preset: Annotated[str, typer.Option(help="Model preset; 'tiny' is random-init and needs no download.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
):
    """Write a runnable AVSyncD pipeline folder from a preset."""
    from avsync_ray.pipelines.presets import save_tiny_pipeline

    if preset != "tiny":
        raise InputError("--preset: only the 'tiny' preset is built from scratch; use convert-official for real weights")
    return {"model": str(save_tiny_pipeline(out_dir, seed)), "preset": preset, "seed": seed}


@verb("convert-official")
def convert_official(
    sd15: Annotated[str, typer.Option(help="Stable Diffusion 1.5 diffusers folder (vae/, text_encoder/, tokenizer/, scheduler/).")],
    unet: Annotated[str, typer.Option(help="Official AVSyncD UNet folder (checkpoint-N/modules/unet).")],
    imagebind: Annotated[str, typer.Option(help="Path to imagebind_huge.pth.")],
    out: Annotated[str, typer.Option(help="Output pipeline folder (safetensors).")],
    imagebind_preset: Annotated[str, typer.Option(help="ImageBind size matching --imagebind.")] = "imagebind-huge",
):
    """Assemble an official AVSyncD checkpoint, SD1.5 and ImageBind into one pipeline folder."""
    from avsync_ray.pipelines.presets import official_pipeline

    official_pipeline(sd15, unet, imagebind, imagebind_preset).save_pretrained(out)
    return {"model": out}


@verb()
def synth(
    out: Annotated[str, typer.Argument(help="Output folder: <category>/<id>.mp4 + .json ground truth, manifest.csv.")],
    videos: Annotated[int, typer.Option(help="Number of videos (cycling through the categories).")] = 14,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical files.")] = 0,
    categories: Annotated[Optional[list[str]], typer.Option(help="Categories to draw from (repeatable); default all.")] = None,
    duration: Annotated[float, typer.Option(help="Seconds per video.")] = 6.0,
):
    """Write a synthetic audio-video corpus with ground truth (sync, shifted, ambient, silent, static, sharp, cuts)."""
    from collections import Counter

    from avsync_ray.synth import synthesize_corpus

    truth = synthesize_corpus(out, num_videos=videos, seed=seed, categories=categories, duration=duration)
    return {"output": out, "videos": len(truth), "categories": dict(Counter(t["category"] for t in truth)), "manifest": f"{out}/manifest.csv"}


@verb()
def curate(
    input: Annotated[str, typer.Argument(help="Folder, glob or URI list (any fsspec storage), or a CSV/Parquet manifest (uri, label).")],
    output: Annotated[str, typer.Argument(help="Output folder (any fsspec URI): shards, index, score table, ledger, report.")],
    rethreshold: Annotated[bool, typer.Option(help="Re-apply thresholds to the stored scores (no model runs).")] = False,
    config: ConfigOption = None,
    set_: set_option("filters.audio_peak.min=0.05") = None,
):
    """Curate raw audio-video into filtered WebDataset shards, on Ray Data (resumes where it stopped)."""
    from avsync_ray.curation.pipeline import run_curation

    cfg = _load(CurateConfig, "curate", config, set_, {"input": input, "output": output})
    summary = run_curation(cfg, rethreshold=rethreshold)
    skipped = sum(summary["skipped_inputs"].values())
    return (
        f"curated {summary['videos']} videos ({summary['done']} with clips, {summary['zero_survivors']} without, "
        f"{summary['failed']} failed{f', {skipped} other files skipped' if skipped else ''}): {summary['windows']} windows -> "
        f"{summary['kept_windows']} kept -> {summary['clips']} clips in {summary['shards']} shards at {cfg.output} ({summary['seconds']} s)"
    )


@verb()
def probe(uri: Annotated[str, typer.Argument(help="Media file (any fsspec URI).")]):
    """Print the streams, duration, frame rate and sizes of a media file."""
    from avsync_ray.media import probe as probe_media

    return dataclasses.asdict(probe_media(uri))


@verb()
def demo(config: ConfigOption = None, set_: set_option("sync_training_steps=200") = None):
    """The main job end to end on an embedded default (tiny models, synthetic input, this machine)."""
    from avsync_ray.demo import run_demo

    return run_demo(_load(DemoConfig, "demo", config, set_))


def _train(task: str, schema, shards: str, preset: str, resume: str | None, config: str | None, set_: list[str] | None) -> dict:
    from avsync_ray.shards import read_index
    from avsync_ray.training.features import check_features
    from avsync_ray.training.launcher import launch

    cfg = _load(schema, preset, config, set_, {"data.root": shards, **({"run.resume": resume} if resume else {})})
    index = read_index(cfg.data.root, cfg.data.split)  # fails here, before any worker starts, without shards
    if getattr(cfg, "precomputed", False):  # workers also check the encoders' weights
        check_features(index, cfg)
    return launch(cfg, task)


@verb("train-sync")
def train_sync(
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    preset: Annotated[str, typer.Option(help="train-sync (the paper's recipe) or train-sync-tiny (CPU).")] = "train-sync",
    resume: ResumeOption = None,
    config: ConfigOption = None,
    set_: set_option("max_steps=2000") = None,
):
    """Train the sync classifier (contrastive over time shifts) with Ray Train + DeepSpeed."""
    return _train("sync-classifier", TrainSyncConfig, shards, preset, resume, config, set_)


@verb()
def train(
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    preset: Annotated[str, typer.Option(help="train (the paper's recipe) or train-tiny (CPU).")] = "train",
    resume: ResumeOption = None,
    config: ConfigOption = None,
    set_: set_option("scaling.num_workers=4") = None,
):
    """Train AVSyncD's temporal and audio modules with Ray Train + DeepSpeed."""
    return _train("avsyncd", TrainConfig, shards, preset, resume, config, set_)


@verb()
def precompute(
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    out: Annotated[str, typer.Argument(help="Folder of the new shards (any fsspec URI).")],
    preset: Annotated[str, typer.Option(help="precompute (SD1.5 + ImageBind-huge, as `train`) or precompute-tiny.")] = "precompute",
    config: ConfigOption = None,
    set_: set_option("actor.concurrency=4") = None,
):
    """Store the frozen VAE and ImageBind outputs of fixed training windows in a copy of the shards (Ray Data),
    so `avsync train --set precomputed=true` skips those encoders."""
    from avsync_ray.training.precompute import run_precompute

    return run_precompute(_load(PrecomputeConfig, preset, config, set_, {"input.root": shards, "output": out}))


@verb("eval-sync")
def eval_sync(
    classifier: Annotated[str, typer.Argument(help="SyncClassifier folder (an export) or the official modules/ folder.")],
    shards: Annotated[str, typer.Argument(help="Test shard folder with <split>.index.json (split: test unless --set data.split=...).")],
    out: Annotated[Optional[str], typer.Option(help="Write the summary and per-clip verdicts as JSON here.")] = None,
    config: ConfigOption = None,
    set_: set_option("actor.num_gpus=1") = None,
):
    """Sync accuracy (a2v, v2a) of a classifier: 31 clips 0.04 s apart, correct within +-5, on Ray Data."""
    from avsync_ray.evaluation.batch import run_eval_sync

    return run_eval_sync(_load(EvalSyncConfig, "eval-sync", config, set_, {"classifier": classifier, "data.root": shards}), out)


@verb("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="AVSyncD pipeline folder or a registry URI (models:/avsyncd@champion).")],
    test: Annotated[str, typer.Argument(help="Test shards (any fsspec URI), or a folder / glob / manifest of raw test videos.")],
    out: Annotated[str, typer.Option(help="Output folder (any fsspec URI): generated/, report/, per_clip.parquet.")],
    sweep: Annotated[Optional[list[str]], typer.Option(help="Sweep a sampling field: key=v1,v2,... (repeatable; every combination runs).")] = None,
    config: ConfigOption = None,
    set_: set_option("protocol=standard") = None,
):
    """FID, FVD, IA, IT, RelSync and AlignSync of generated test clips (paper §3.4) on Ray Data, with MLflow runs."""
    from avsync_ray.evaluation.batch import run_eval
    from avsync_ray.evaluation.plan import parse_sweep

    values: dict = {"model": model, "test": test, "output": out}
    for option in sweep or []:
        try:
            key, swept = parse_sweep(option)
        except ValueError as exc:
            raise InputError(f"--sweep {option!r}: {exc}") from None
        values[f"sweep.{key}"] = swept
    return run_eval(_load(EvalConfig, "eval", config, set_, values))


@verb()
def export(
    checkpoint: Annotated[str, typer.Option(help="Training checkpoint folder (any fsspec URI), e.g. <storage>/<run>/checkpoint_*.")],
    out: Annotated[str, typer.Option(help="Output folder (diffusers layout, safetensors).")],
    register: Annotated[Optional[str], typer.Option(help="Also log it to MLflow as a model, register it under this name.")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias pointed at the new version.")] = "candidate",
    tracking_uri: Annotated[str, typer.Option(help="MLflow tracking URI for --register.")] = "sqlite:///mlruns.db",
):
    """DeepSpeed checkpoint -> a folder AVSyncDPipeline / SyncClassifier.from_pretrained loads (and the registry)."""
    from avsync_ray.config.base import resolve_tracking_uri
    from avsync_ray.training.export import export_checkpoint

    summary = export_checkpoint(checkpoint, out)
    if register:
        from avsync_ray.mlflow_models import register_model

        summary["registered"] = register_model(
            out, register, summary["task"], resolve_tracking_uri(tracking_uri), alias, source_run_id=summary["mlflow_run_id"]
        )
    return summary


@verb()
def submit(
    job_spec: Annotated[str, typer.Argument(help="Ray Job spec, e.g. jobs/train-sync.yaml.")],
    address: Annotated[Optional[str], typer.Option(envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"], help="Dashboard URL, e.g. http://127.0.0.1:8265 (default: as `ray job submit`, or the local cluster).")] = None,
    wait: Annotated[bool, typer.Option(help="Stream the job's logs until it ends (exit status 1 unless it succeeds).")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override appended to the job's verb, e.g. --set max_steps=100 (repeatable).")] = None,
):
    """Submit a job spec to a Ray cluster through the Ray Jobs API (its id is <task>-<UTC time>)."""
    from avsync_ray.jobs import follow, load_job_spec, logs_command, submit as submit_job, with_overrides

    spec = load_job_spec(job_spec)
    command = typer.main.get_command(app).commands.get(spec.verb)
    if command is None or (set_ and "--set" not in {opt for param in command.params for opt in param.opts}):
        raise ConfigError(f"{job_spec}: entrypoint: `avsync {spec.verb}` " + ("takes no --set" if command else "is not a verb"))
    job_id, resolved = submit_job(with_overrides(spec, set_ or []), address)
    submitted = f"submitted {job_id} to {resolved}\nfollow its logs: {logs_command(job_id, resolved)}"
    if not wait:
        return submitted
    typer.echo(submitted, err=True)
    status, message = follow(job_id, resolved)
    if status != "SUCCEEDED":
        raise WorkFailedError(f"job {job_id} {status}" + (f": {message}" if message else ""))
    return f"job {job_id} {status}"


@verb("validate", cluster_app)
def cluster_validate(
    files: Annotated[list[str], typer.Argument(help="Cluster-launcher configs and ray.io/v1 manifests (YAML).")],
    crds: Annotated[str, typer.Option(help="Folder of the KubeRay CRD schemas.")] = "cluster/kuberay/crds",
):
    """Check configs offline: launcher configs with Ray's own schema, manifests with KubeRay's CRD schemas."""
    from avsync_ray.cluster_configs import file_problems, load_crd_schemas

    schemas = load_crd_schemas(crds)
    problems = [line for path in files for line in file_problems(path, schemas)]
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise InputError(f"{len(problems)} problem(s) in {len(files)} file(s), listed above")
    return f"{len(files)} file(s) valid"


@verb("render", cluster_app)
def cluster_render(
    jobs: Annotated[str, typer.Option(help="Folder of the Ray Job specs.")] = "jobs",
    cluster: Annotated[str, typer.Option(help="RayCluster manifest whose spec every RayJob gets.")] = "cluster/kuberay/raycluster.yaml",
    out: Annotated[str, typer.Option(help="Folder of the rendered RayJobs.")] = "cluster/kuberay/jobs",
    check: Annotated[bool, typer.Option(help="Write nothing; exit 1 if a rendered file differs from the one on disk.")] = False,
):
    """Render one KubeRay RayJob per job spec (same entrypoint), on the RayCluster's spec."""
    from avsync_ray.cluster_configs import render_rayjobs, sync_rendered

    drifted = sync_rendered(render_rayjobs(jobs, cluster), out, write=not check)
    if check and drifted:
        raise WorkFailedError(f"out of date in {out} (run `avsync cluster render`): {', '.join(drifted)}")
    return f"{out}: " + (f"updated {', '.join(drifted)}" if drifted and not check else "up to date")


class MetricName(str, Enum):
    score = "score"
    psync = "psync"
    relsync = "relsync"
    alignsync = "alignsync"


@verb()
def metric(
    name: Annotated[MetricName, typer.Argument(help="score: raw sync logit; psync: P_sync a2v/v2a; relsync; alignsync.")],
    classifier: Annotated[str, typer.Option(help="SyncClassifier folder, or the official classifier's modules/ folder.")],
    audio: Annotated[str, typer.Option(help="Audio: a sound file or a video (any format PyAV reads, any rate).")],
    video: Annotated[str, typer.Option(help="Video to evaluate.")],
    ref_video: Annotated[Optional[str], typer.Option(help="Reference video (relsync, alignsync).")] = None,
    ref_audio: Annotated[Optional[str], typer.Option(help="Reference audio (relsync).")] = None,
    imagebind: Annotated[Optional[str], typer.Option(help="imagebind_huge.pth (alignsync).")] = None,
    imagebind_preset: Annotated[str, typer.Option(help="ImageBind size matching --imagebind.")] = "imagebind-huge",
    device: Annotated[str, typer.Option(help="Torch device.")] = "cpu",
):
    """Synchronisation metrics of one pair, as JSON (values are fractions; `percent` is x100)."""
    from avsync_ray.devices import resolve_device
    from avsync_ray.metrics.pair_metrics import load_imagebind, pair_metric
    from avsync_ray.models.sync_classifier import load_sync_classifier

    if name is MetricName.relsync and (ref_video is None) == (ref_audio is None):
        raise InputError("relsync needs exactly one of --ref-video and --ref-audio")
    if name is MetricName.alignsync and not (ref_video and imagebind):
        raise InputError("alignsync needs --ref-video and --imagebind")
    target = resolve_device(device)
    model = load_sync_classifier(classifier, target)
    embedder = load_imagebind(imagebind, imagebind_preset, target) if name is MetricName.alignsync else None
    result = pair_metric(name.value, model, audio, video, ref_audio=ref_audio, ref_video=ref_video, imagebind=embedder)
    return {"audio": audio, "video": video, **result}


@verb()
def serve(
    config: ConfigOption = None,
    set_: set_option("model.source=models:/avsyncd@champion") = None,
    print_config: Annotated[bool, typer.Option(help="Print the Ray Serve config (for `serve deploy` or a RayService's serveConfigV2) and exit.")] = False,
):
    """Serve AVSyncD with Ray Serve: the HTTP API (docs at /docs), a web page at /, jobs with progress, sync scores."""
    from avsync_ray.serve.app import deploy_config, run_serve

    cfg = _load(ServeConfig, "serve", config, set_)
    if print_config:
        import yaml

        return yaml.safe_dump(deploy_config(cfg), sort_keys=False).rstrip("\n")
    return run_serve(cfg)


@verb("show", config_app)
def config_show(
    preset: Annotated[str, typer.Argument(help="Preset name.")],
    config: ConfigOption = None,
    set_: set_option("seed=1") = None,
):
    """Print a preset resolved (with any file and overrides applied); what must still be set before it can run
    (its inputs and weights) is listed on stderr."""
    if preset not in preset_names():
        raise InputError(f"unknown preset {preset!r}; available: {preset_names()}")
    shown, missing = show_config(preset_schema(preset), preset, config, set_ or [])
    if missing:
        typer.echo("# to run it, also set: " + "; ".join(missing), err=True)
    return shown.rstrip("\n")


@verb("fields", config_app)
def config_fields(schema: Annotated[str, typer.Argument(help="generate, demo, curate, train-sync, train, eval-sync, eval, precompute or serve.")]):
    """Every field of a config tree (dotted name, type, default, meaning) as a Markdown table."""
    from avsync_ray.config.base import describe_fields

    rows = [f"| `{name}` | {kind} | `{default}` | {description} |" for name, kind, default, description in describe_fields(preset_schema(schema))]
    return "\n".join(["| field | type | default | meaning |", "|---|---|---|---|", *rows])


@verb("list", config_app)
def config_list():
    """List the packaged presets."""
    return "\n".join(f"{name}: {sorted(read_preset(name))}" for name in preset_names())


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
