"""``avsync``: one thin command per library entry point."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from avsync_ray.config import (
    ConfigError,
    DemoConfig,
    EvalSyncConfig,
    GenerateConfig,
    PrecomputeConfig,
    ServeConfig,
    TrainConfig,
    TrainSyncConfig,
    dump_config,
    load_config,
    preset_names,
    preset_schema,
    read_preset,
)

app = typer.Typer(help="AVSyncD at cluster scale: curation, training, evaluation and serving.", no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect the typed configs and their packaged presets.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file (any fsspec URI) over the preset.")]
ResumeOption = Annotated[Optional[str], typer.Option(help="'latest' continues the run from its newest checkpoint; or a checkpoint URI.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Dotted override, e.g. --set num_inference_steps=25 (repeatable).")]


def _echo_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _load(schema, preset: str, path: str | None, overrides: list[str] | None, values: dict | None = None):
    """The verb's config: ``values`` are its positional arguments, taken verbatim (no YAML parsing)."""
    try:
        return load_config(schema, preset, path, overrides or [], values)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command()
def generate(
    model: Annotated[str, typer.Option(help="AVSyncD pipeline folder (init-model / convert-official output).")],
    out: Annotated[str, typer.Option(help="Output .mp4 (any fsspec URI).")],
    category: Annotated[str, typer.Option(help="Class prompt, e.g. 'lions roaring'.")],
    image: Annotated[Optional[str], typer.Option(help="First frame (image file).")] = None,
    audio: Annotated[Optional[str], typer.Option(help="Audio: a sound file or a video with an audio track.")] = None,
    video: Annotated[Optional[str], typer.Option(help="Video whose centred clip gives the image and/or audio.")] = None,
    audio_guidance: Annotated[Optional[float], typer.Option(help="Audio guidance scale (default 4.0).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Inference steps (default 50).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (default 123).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Animate an image with audio: writes an mp4 (12 frames at 6 fps with the 2-s conditioning audio)."""
    from avsync_ray.generate import run_generate

    overrides = list(set_ or [])
    for key, value in (("audio_guidance_scale", audio_guidance), ("num_inference_steps", steps), ("seed", seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = _load(GenerateConfig, "generate", config, overrides)
    _echo_json(run_generate(model, out, category, cfg, image=image, audio=audio, video=video))


@app.command("init-model")
def init_model(
    out_dir: Annotated[str, typer.Argument(help="Folder to write the pipeline to.")],
    preset: Annotated[str, typer.Option(help="Model preset; 'tiny' is random-init and needs no download.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
):
    """Write a runnable AVSyncD pipeline folder from a preset."""
    from avsync_ray.pipelines.presets import save_tiny_pipeline

    if preset != "tiny":
        raise typer.BadParameter("only the 'tiny' preset is built from scratch; use convert-official for real weights")
    _echo_json({"model": str(save_tiny_pipeline(out_dir, seed)), "preset": preset, "seed": seed})


@app.command("convert-official")
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
    _echo_json({"model": out})


@app.command()
def synth(
    out: Annotated[str, typer.Argument(help="Output folder: <category>/<id>.mp4 + .json ground truth, manifest.csv.")],
    videos: Annotated[int, typer.Option(help="Number of videos (cycling through the categories).")] = 14,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical files.")] = 0,
    categories: Annotated[Optional[list[str]], typer.Option(help="Categories to draw from (repeatable); default all.")] = None,
    duration: Annotated[float, typer.Option(help="Seconds per video.")] = 6.0,
):
    """Write a synthetic audio-video corpus with ground truth (sync, shifted, ambient, silent, static, sharp, cuts)."""
    from avsync_ray.synth import synthesize_corpus

    truth = synthesize_corpus(out, num_videos=videos, seed=seed, categories=categories, duration=duration)
    counts = {}
    for item in truth:
        counts[item["category"]] = counts.get(item["category"], 0) + 1
    _echo_json({"output": out, "videos": len(truth), "categories": counts, "manifest": f"{out}/manifest.csv"})


@app.command()
def curate(
    input: Annotated[str, typer.Argument(help="Folder, glob or URI list (any fsspec storage), or a CSV/Parquet manifest (uri, label).")],
    output: Annotated[str, typer.Argument(help="Output folder (any fsspec URI): shards, index, score table, ledger, report.")],
    rethreshold: Annotated[bool, typer.Option(help="Re-apply thresholds to the stored scores (no model runs).")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Curate raw audio-video into filtered WebDataset shards, on Ray Data (resumes where it stopped)."""
    from avsync_ray.config import CurateConfig
    from avsync_ray.curation.pipeline import CurationError, run_curation

    cfg = _load(CurateConfig, "curate", config, set_, {"input": input, "output": output})
    try:
        summary = run_curation(cfg, rethreshold=rethreshold)
    except CurationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"curated {summary['videos']} videos ({summary['done']} with clips, {summary['zero_survivors']} without, "
        f"{summary['failed']} failed): {summary['windows']} windows -> {summary['kept_windows']} kept -> "
        f"{summary['clips']} clips in {summary['shards']} shards at {output} ({summary['seconds']} s)"
    )


@app.command()
def probe(uri: Annotated[str, typer.Argument(help="Media file (any fsspec URI).")]):
    """Print the streams, duration, frame rate and sizes of a media file."""
    from avsync_ray.media import MediaError
    from avsync_ray.media import probe as probe_media

    try:
        _echo_json(dataclasses.asdict(probe_media(uri)))
    except MediaError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@app.command()
def demo(config: ConfigOption = None, set_: SetOption = None):
    """The main job end to end on an embedded default (tiny models, synthetic input, this machine)."""
    from avsync_ray.demo import run_demo

    summary = run_demo(_load(DemoConfig, "demo", config, set_))
    _echo_json(summary)


def _train(task: str, schema, shards: str, preset: str, resume: str | None, config: str | None, set_: list[str] | None) -> None:
    from avsync_ray.shards import read_index
    from avsync_ray.training.engine import IncompatibleResumeError
    from avsync_ray.training.features import PrecomputedFeaturesError, check_features
    from avsync_ray.training.launcher import RunExistsError, launch

    cfg = _load(schema, preset, config, set_, {"data.root": shards, **({"run.resume": resume} if resume else {})})
    try:
        if getattr(cfg, "precomputed", False):  # fail before any worker starts (workers also check the encoders)
            check_features(read_index(cfg.data.root, cfg.data.split), cfg)
        summary = launch(cfg, task)
    except (RunExistsError, IncompatibleResumeError, PrecomputedFeaturesError, FileNotFoundError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    _echo_json(summary)


@app.command("train-sync")
def train_sync(
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    preset: Annotated[str, typer.Option(help="train-sync (the paper's recipe) or train-sync-tiny (CPU).")] = "train-sync",
    resume: ResumeOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Train the sync classifier (contrastive over time shifts) with Ray Train + DeepSpeed."""
    _train("sync-classifier", TrainSyncConfig, shards, preset, resume, config, set_)


@app.command()
def train(
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    preset: Annotated[str, typer.Option(help="train (the paper's recipe) or train-tiny (CPU).")] = "train",
    resume: ResumeOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Train AVSyncD's temporal and audio modules with Ray Train + DeepSpeed."""
    _train("avsyncd", TrainConfig, shards, preset, resume, config, set_)


@app.command()
def precompute(
    shards: Annotated[str, typer.Argument(help="Curated shard folder (any fsspec URI) with <split>.index.json.")],
    out: Annotated[str, typer.Argument(help="Folder of the new shards (any fsspec URI).")],
    preset: Annotated[str, typer.Option(help="precompute (SD1.5 + ImageBind-huge, as `train`) or precompute-tiny.")] = "precompute",
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Store the frozen VAE and ImageBind outputs of fixed training windows in a copy of the shards (Ray Data),
    so `avsync train --set precomputed=true` skips those encoders."""
    from avsync_ray.training.precompute import run_precompute

    cfg = _load(PrecomputeConfig, preset, config, set_, {"input.root": shards, "output": out})
    _echo_json(run_precompute(cfg))


@app.command("eval-sync")
def eval_sync(
    classifier: Annotated[str, typer.Argument(help="SyncClassifier folder (an export) or the official modules/ folder.")],
    shards: Annotated[str, typer.Argument(help="Test shard folder with <split>.index.json (split: test unless --set data.split=...).")],
    out: Annotated[Optional[str], typer.Option(help="Write the summary and per-clip verdicts as JSON here.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Sync accuracy (a2v, v2a) of a classifier: 31 clips 0.04 s apart, correct within +-5, on Ray Data."""
    from avsync_ray.evaluation.batch import run_eval_sync

    cfg = _load(EvalSyncConfig, "eval-sync", config, set_, {"classifier": classifier, "data.root": shards})
    _echo_json(run_eval_sync(cfg, out))


@app.command()
def export(
    checkpoint: Annotated[str, typer.Option(help="Training checkpoint folder (any fsspec URI), e.g. <storage>/<run>/checkpoint_*.")],
    out: Annotated[str, typer.Option(help="Output folder (diffusers layout, safetensors).")],
    register: Annotated[Optional[str], typer.Option(help="Also log it to MLflow as a model, register it under this name.")] = None,
    alias: Annotated[str, typer.Option(help="Registry alias pointed at the new version.")] = "candidate",
    tracking_uri: Annotated[str, typer.Option(help="MLflow tracking URI for --register.")] = "sqlite:///mlruns.db",
):
    """DeepSpeed checkpoint -> a folder AVSyncDPipeline / SyncClassifier.from_pretrained loads (and the registry)."""
    from avsync_ray.training.export import export_checkpoint

    try:
        summary = export_checkpoint(checkpoint, out)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if register:
        from avsync_ray.mlflow_models import register_model

        summary["registered"] = register_model(out, register, summary["task"], tracking_uri, alias, source_run_id=summary["mlflow_run_id"])
    _echo_json(summary)


class MetricName(str, Enum):
    score = "score"
    psync = "psync"
    relsync = "relsync"
    alignsync = "alignsync"


@app.command()
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
    from avsync_ray.evaluation.pair_metrics import load_imagebind, pair_metric
    from avsync_ray.media import MediaError
    from avsync_ray.models.sync_classifier import load_sync_classifier

    if name is MetricName.relsync and (ref_video is None) == (ref_audio is None):
        raise typer.BadParameter("relsync needs exactly one of --ref-video and --ref-audio")
    if name is MetricName.alignsync and not (ref_video and imagebind):
        raise typer.BadParameter("alignsync needs --ref-video and --imagebind")
    model = load_sync_classifier(classifier, device)
    embedder = load_imagebind(imagebind, imagebind_preset, device) if name is MetricName.alignsync else None
    try:
        result = pair_metric(name.value, model, audio, video, ref_audio=ref_audio, ref_video=ref_video, imagebind=embedder)
    except (MediaError, ValueError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    _echo_json({"audio": audio, "video": video, **result})


@app.command()
def serve(
    config: ConfigOption = None,
    set_: SetOption = None,
    print_config: Annotated[bool, typer.Option(help="Print the Ray Serve config (for `serve deploy` or a RayService's serveConfigV2) and exit.")] = False,
):
    """Serve AVSyncD with Ray Serve: the HTTP API (docs at /docs), a web page at /, jobs with progress, sync scores."""
    from avsync_ray.serve.app import deploy_config, run_serve

    cfg = _load(ServeConfig, "serve", config, set_)
    if print_config:
        import yaml

        typer.echo(yaml.safe_dump(deploy_config(cfg), sort_keys=False), nl=False)
        return
    run_serve(cfg)


@config_app.command("show")
def config_show(
    preset: Annotated[str, typer.Argument(help="Preset name.")],
    config: ConfigOption = None,
    set_: SetOption = None,
):
    """Print a preset resolved and validated (with any file and overrides applied)."""
    if preset not in preset_names():
        typer.echo(f"unknown preset {preset!r}; available: {preset_names()}", err=True)
        raise typer.Exit(2)
    typer.echo(dump_config(_load(preset_schema(preset), preset, config, set_)), nl=False)


@config_app.command("fields")
def config_fields(schema: Annotated[str, typer.Argument(help="generate, demo, curate, train-sync, train, eval-sync, precompute or serve.")]):
    """Every field of a config tree (dotted name, type, default, meaning) as a Markdown table."""
    from avsync_ray.config import describe_fields

    try:
        tree = preset_schema(schema)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo("| field | type | default | meaning |\n|---|---|---|---|")
    for name, kind, default, description in describe_fields(tree):
        typer.echo(f"| `{name}` | {kind} | `{default}` | {description} |")


@config_app.command("list")
def config_list():
    """List the packaged presets."""
    for name in preset_names():
        typer.echo(f"{name}: {sorted(read_preset(name))}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
