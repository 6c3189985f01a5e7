"""``avsync demo``: the main job end to end on an embedded default, on one machine, with no download."""

from __future__ import annotations

import json
import time
from pathlib import Path

from avsync_ray.config import CurateConfig, DemoConfig, load_config, save_config
from avsync_ray.curation.shards import read_tar
from avsync_ray.generate import run_generate
from avsync_ray.models.presets import save_tiny_pipeline
from avsync_ray.synth import synthesize_corpus


def run_demo(config: DemoConfig) -> dict:
    """Synthesise a corpus, curate it on a local Ray (the model filters need trained weights, so the demo runs
    the shot, pixel and audio rules), then animate a curated clip with the tiny AVSyncD."""
    from avsync_ray.curation.pipeline import run_curation

    started = time.perf_counter()
    out_dir = Path(config.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "demo.config.yaml")

    corpus = out_dir / "corpus"
    synthesize_corpus(corpus, num_videos=config.corpus_videos, seed=config.seed)
    shards = out_dir / "shards"
    curate_config = load_config(
        CurateConfig,
        "curate",
        overrides=[
            f"input={corpus}",
            f"output={shards}",
            "filters.semantic.enabled=false",
            "filters.imagebind.enabled=false",
            "filters.sync.enabled=false",
            "shards.short_side=128",
            f"tracking.uri={config.tracking_uri}",
            f"ray.num_cpus={config.ray_num_cpus}",
        ],
    )
    curation = run_curation(curate_config)

    index = json.loads((shards / f"{curate_config.shards.split}.index.json").read_text())
    if not index["shardlist"]:
        raise RuntimeError("curation kept no clip; see the report in " + str(shards / "report"))
    sample = read_tar(str(shards / index["shardlist"][0]["url"]))[0]
    clip = out_dir / "inputs" / f"{sample['__key__']}.mp4"
    clip.parent.mkdir(exist_ok=True)
    clip.write_bytes(sample["mp4"])
    label = json.loads(sample["json"])["label"]

    model_dir = save_tiny_pipeline(out_dir / "model", seed=config.seed)
    result = run_generate(model_dir, out_dir / "generated.mp4", label, config.generate, video=str(clip))
    return {
        "corpus": str(corpus),
        "curation": {k: curation[k] for k in ("videos", "done", "zero_survivors", "failed", "windows", "kept_windows", "clips", "shards")},
        "shards": str(shards),
        "report": str(shards / "report" / "report.md"),
        "mlflow": {"tracking_uri": config.tracking_uri, "experiment": curate_config.tracking.experiment, "run_id": curation["mlflow_run_id"]},
        "model": str(model_dir),
        "generated_video": result["output"],
        "generated": {k: result[k] for k in ("frames", "fps", "size", "audio_seconds", "prompt")},
        "seconds": round(time.perf_counter() - started, 1),
    }
