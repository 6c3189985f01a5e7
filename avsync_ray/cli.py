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

from avsync_ray.cloud_schemas import KUBERNETES_VERSION
from avsync_ray.config.base import ConfigError, load_config, preset_names, read_preset, show_config
from avsync_ray.config.presets import preset_schema
from avsync_ray.errors import IncompleteResultError, InputError, WorkFailedError

app = typer.Typer(help="AVSyncD at cluster scale: curation, training, evaluation and serving.", no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect the typed configs and their packaged presets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
runs_app = typer.Typer(help="Read the MLflow store: registered models with their lineage and evaluations; evaluations side by side.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
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
    """What a user fixes by changing the command: arguments, config, input files, devices, refused resumes, and
    storage that kept failing (the same command again resumes). The device and media errors are only looked up
    where their (torch-importing) modules are loaded: an error of a module that was never imported cannot have
    been raised, and a quick refusal stays quick."""
    modules = (("avsync_ray.devices", "DeviceError"), ("avsync_ray.media.errors", "MediaError"), ("avsync_ray.storage", "StorageError"))
    loaded = [getattr(sys.modules[module], name) for module, name in modules if module in sys.modules]
    return (ConfigError, InputError, *loaded, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
            PermissionError, typer.BadParameter)  # fmt: skip


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
            except IncompleteResultError as error:
                typer.echo(json.dumps(error.result, indent=2, default=str, allow_nan=False))
                typer.echo(f"error: {_message(error)}", err=True)
                raise typer.Exit(1) from None
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
    from avsync_ray.ray_runtime import VERBOSE_ENV_VAR, skip_noisy_worker_lines

    _Settings.debug = debug
    if debug:
        os.environ[VERBOSE_ENV_VAR] = "1"  # Ray workers started by this command log everything too
    # This project's progress lines (INFO) on stderr; other libraries' warnings only, unless debugging.
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("avsync_ray").setLevel(logging.INFO)
    if not sys.stderr.isatty():  # the libraries' progress bars (Hugging Face saving and loading, MLflow artifacts) on a terminal only
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not debug:  # MLflow narrates its store's set-up and new experiments at INFO on its own handler, set on import
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("DeepSpeed").addFilter(_not_the_cpu_accelerator_notice)
        skip_noisy_worker_lines()


def _not_the_cpu_accelerator_notice(record: logging.LogRecord) -> bool:
    """DeepSpeed, imported by diffusers and transformers too, warns that it found no GPU ("Setting accelerator to
    CPU") on every command of a CPU machine; a command that needs a GPU says so itself."""
    return not record.getMessage().startswith("Setting accelerator to CPU")


def _verb_config(context: typer.Context):
    """The running verb's typed config, built from its command line (preset, ``--config``, ``--set``, and its
    arguments taken verbatim) as :data:`avsync_ray.jobs.VERB_CONFIGS` says: ``avsync submit`` and ``avsync cluster
    validate`` check a job spec's entrypoint with the same table, so what they accept is what the verb loads."""
    from avsync_ray.jobs import VERB_CONFIGS

    return load_config(*VERB_CONFIGS[context.info_name].load_args(context.params))


@verb()
def generate(
    ctx: typer.Context,
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

    cfg = _verb_config(ctx)
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
    ctx: typer.Context,
    input: Annotated[str, typer.Argument(help="Folder, glob or URI list (any fsspec storage), or a CSV/Parquet manifest (uri, label).")],
    output: Annotated[str, typer.Argument(help="Output folder (any fsspec URI): shards, index, score table, ledger, report.")],
    rethreshold: Annotated[bool, typer.Option(help="Re-apply thresholds to the stored scores (no model runs).")] = False,
    config: ConfigOption = None,
    set_: set_option("filters.audio_peak.min=0.05") = None,
):
    """Curate raw audio-video into filtered WebDataset shards, on Ray Data (resumes where it stopped)."""
    from avsync_ray.ray_runtime import use_system_arrow_pool

    use_system_arrow_pool()  # before the pipeline imports pyarrow
    from avsync_ray.curation.pipeline import run_curation

    cfg = _verb_config(ctx)
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
def demo(ctx: typer.Context, config: ConfigOption = None, set_: set_option("sync_training_steps=200") = None):
    """The main job end to end on an embedded default (tiny models, synthetic input, this machine)."""
    from avsync_ray.demo import run_demo

    return run_demo(_verb_config(ctx))


def _train(ctx: typer.Context, task: str) -> dict:
    from avsync_ray.shards import read_index
    from avsync_ray.training.features import check_features
    from avsync_ray.training.launcher import launch

    cfg = _verb_config(ctx)
    index = read_index(cfg.data.root, cfg.data.split)  # fails here, before any worker starts, without shards
    if getattr(cfg, "precomputed", False):  # workers also check the encoders' weights
        check_features(index, cfg)
    return launch(cfg, task)


@verb("train-sync")
def train_sync(
    ctx: typer.Context,
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    preset: Annotated[str, typer.Option(help="train-sync (the paper's recipe) or train-sync-tiny (CPU).")] = "train-sync",
    resume: ResumeOption = None,
    config: ConfigOption = None,
    set_: set_option("max_steps=2000") = None,
):
    """Train the sync classifier (contrastive over time shifts) with Ray Train + DeepSpeed."""
    return _train(ctx, "sync-classifier")


@verb()
def train(
    ctx: typer.Context,
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    preset: Annotated[str, typer.Option(help="train (the paper's recipe) or train-tiny (CPU).")] = "train",
    resume: ResumeOption = None,
    config: ConfigOption = None,
    set_: set_option("scaling.num_workers=4") = None,
):
    """Train AVSyncD's temporal and audio modules with Ray Train + DeepSpeed."""
    return _train(ctx, "avsyncd")


@verb()
def precompute(
    ctx: typer.Context,
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    out: Annotated[str, typer.Argument(help="Folder of the new shards (any fsspec URI).")],
    preset: Annotated[str, typer.Option(help="precompute (SD1.5 + ImageBind-huge, as `train`) or precompute-tiny.")] = "precompute",
    config: ConfigOption = None,
    set_: set_option("actor.concurrency=4") = None,
):
    """Store the frozen VAE and ImageBind outputs of fixed training windows in a copy of the shards (Ray Data),
    so `avsync train --set precomputed=true` skips those encoders."""
    from avsync_ray.training.precompute import run_precompute

    return run_precompute(_verb_config(ctx))


@verb("eval-sync")
def eval_sync(
    ctx: typer.Context,
    classifier: Annotated[str, typer.Argument(help="SyncClassifier folder (an export) or the official modules/ folder.")],
    shards: Annotated[str, typer.Argument(help="Test shard folder with <split>.index.json (split: test unless --set data.split=...).")],
    out: Annotated[Optional[str], typer.Option(help="Write the summary and per-clip verdicts as JSON here.")] = None,
    config: ConfigOption = None,
    set_: set_option("actor.num_gpus=1") = None,
):
    """Sync accuracy (a2v, v2a) of a classifier: 31 clips 0.04 s apart, correct within +-5, on Ray Data."""
    from avsync_ray.evaluation.batch import run_eval_sync

    return run_eval_sync(_verb_config(ctx), out)


@verb("eval")
def eval_(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="AVSyncD pipeline folder or a registry URI (models:/avsyncd@champion).")],
    test: Annotated[str, typer.Argument(help="Test shards (any fsspec URI), or a folder / glob / manifest of raw test videos.")],
    out: Annotated[str, typer.Option(help="Output folder (any fsspec URI): generated/, report/, per_clip.parquet.")],
    sweep: Annotated[Optional[list[str]], typer.Option(help="Sweep a sampling field: key=v1,v2,... (repeatable; every combination runs).")] = None,
    config: ConfigOption = None,
    set_: set_option("protocol=standard") = None,
):
    """FID, FVD, IA, IT, RelSync and AlignSync of generated test clips (paper §3.4) on Ray Data, with MLflow runs."""
    from avsync_ray.evaluation.batch import run_eval

    return run_eval(_verb_config(ctx))


@verb()
def export(
    checkpoint: Annotated[str, typer.Option(help="Training checkpoint folder (any fsspec URI), e.g. <storage>/<run>/checkpoint_*.")],
    out: Annotated[str, typer.Option(help="Output folder (diffusers layout, safetensors).")],
    register: Annotated[Optional[str], typer.Option(help="Also log its weights to MLflow as a pyfunc model and register it under this name.")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias pointed at the new version.")] = "candidate",
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow tracking URI (default: the training run's, from the checkpoint's config).")] = None,
):
    """DeepSpeed checkpoint -> a folder AVSyncDPipeline / SyncClassifier.from_pretrained loads, an MLflow LoggedModel of
    the training run at the checkpoint's step (named in the folder's lineage.json), and with --register a registry version."""
    from avsync_ray.config.base import resolve_tracking_uri
    from avsync_ray.training.export import export_checkpoint

    summary = export_checkpoint(checkpoint, out)
    uri = resolve_tracking_uri(tracking_uri or summary["tracking_uri"] or "sqlite:///mlruns.db")
    from avsync_ray.mlflow_models import log_export

    return {**summary, **log_export(summary, uri, register, alias)}


@verb()
def submit(
    job_spec: Annotated[str, typer.Argument(help="Ray Job spec, e.g. jobs/train-sync.yaml.")],
    address: Annotated[Optional[str], typer.Option(envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"], help="Dashboard URL, e.g. http://127.0.0.1:8265 (default: as `ray job submit`, or the local cluster).")] = None,
    wait: Annotated[bool, typer.Option(help="Stream the job's logs until it ends (exit status 1 unless it succeeds).")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override appended to the job's verb, e.g. --set max_steps=100 (repeatable).")] = None,
):
    """Submit a job spec to a Ray cluster through the Ray Jobs API (its id is <task>-<UTC time>), once its fields,
    runtime_env, entrypoint and every --set (the spec's and these) pass the checks the job would fail on."""
    from avsync_ray.jobs import follow, load_job_spec, logs_command, submission_problems, submit as submit_job, with_overrides

    spec = load_job_spec(job_spec)
    if problems := submission_problems(spec, typer.main.get_command(app).commands, set_ or []):
        raise ConfigError(f"{job_spec}: " + "; ".join(problems))
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
    files: Annotated[list[str], typer.Argument(help="Cluster-launcher configs, KubeRay and Kubernetes manifests, Ray Serve configs, job specs (YAML).")],
    crds: Annotated[str, typer.Option(help="Folder of the KubeRay CRD schemas.")] = "cluster/kuberay/crds",
    kubernetes_version: Annotated[str, typer.Option(help="Kubernetes version whose schema pod templates and other Kubernetes objects are checked against.")] = KUBERNETES_VERSION,
):
    """Check configs offline for what a deploy would refuse or drop: launcher configs with Ray's own checks and the
    cloud's request schema, manifests with KubeRay's CRDs and Kubernetes' schema, Serve configs with Serve's
    schemas, job specs as `avsync submit` checks them. One line per problem."""
    from avsync_ray.cloud_schemas import kubernetes_versions, missing_schema_packages
    from avsync_ray.cluster_configs import file_problems, load_crd_schemas

    if missing := missing_schema_packages():
        raise InputError(f"avsync cluster validate reads its schemas from {', '.join(missing)}: pip install 'avsync-ray[cluster]'")
    if kubernetes_version not in kubernetes_versions():
        raise InputError(f"--kubernetes-version {kubernetes_version}: the schemas at hand are for {', '.join(kubernetes_versions())}")
    schemas, verbs = load_crd_schemas(crds), typer.main.get_command(app).commands
    problems = [line for path in files for line in file_problems(path, schemas, verbs, kubernetes_version)]
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


TrackingOption = Annotated[str, typer.Option(help="MLflow tracking URI of the store to read.")]


@verb("models", runs_app)
def runs_models(name: Annotated[str, typer.Argument(help="Registered model name, e.g. avsyncd.")], tracking_uri: TrackingOption = "sqlite:///mlruns.db"):
    """Each version of a registered model: aliases, training run and step, dataset, curation run, and the
    evaluation metrics logged against it per test set."""
    from mlflow.tracking import MlflowClient

    from avsync_ray.config.base import resolve_tracking_uri
    from avsync_ray.runs import models_table

    return models_table(MlflowClient(resolve_tracking_uri(tracking_uri)), name)


@verb("compare", runs_app)
def runs_compare(
    references: Annotated[list[str], typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION, a LoggedModel id (m-...) or an eval run id.")],
    out: Annotated[str, typer.Option(help="The PNG plot of the metrics with their intervals.")] = "compare.png",
    test_set: Annotated[Optional[str], typer.Option(help="Only the evaluations on the test set of this digest.")] = None,
    tracking_uri: TrackingOption = "sqlite:///mlruns.db",
):
    """Evaluation metrics of models and runs side by side (a table), and a plot of them with their intervals."""
    from mlflow.tracking import MlflowClient

    from avsync_ray.config.base import resolve_tracking_uri
    from avsync_ray.runs import compare

    return compare(MlflowClient(resolve_tracking_uri(tracking_uri)), references, out, test_set)


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
    set_: set_option("limits.max_video_s=60") = None,
):
    """Synchronisation metrics of one pair, as JSON (values are fractions; `percent` is x100). Every file is decoded
    only within `limits` (those of `avsync generate`), whatever its header claims."""
    from avsync_ray.config.sampling import PairConfig
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
    limits = load_config(PairConfig, overrides=set_ or []).limits
    result = pair_metric(name.value, model, audio, video, ref_audio=ref_audio, ref_video=ref_video, imagebind=embedder, limits=limits)
    return {"audio": audio, "video": video, **result}


@verb()
def serve(
    ctx: typer.Context,
    config: ConfigOption = None,
    set_: set_option("model.source=models:/avsyncd@champion") = None,
    print_config: Annotated[bool, typer.Option(help="Print the Ray Serve config (for `serve deploy` or a RayService's serveConfigV2) and exit.")] = False,
):
    """Serve AVSyncD with Ray Serve: the HTTP API (docs at /docs), a web page at /, jobs with progress, sync scores."""
    from avsync_ray.serve.app import deploy_config, run_serve

    cfg = _verb_config(ctx)
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
