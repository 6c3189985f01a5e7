"""Sends honest uploads at the limits, then every hostile upload of ``hostile_media`` as every file field of every
upload route, to the ingress's HTTP app in this process (the other deployments stood in for by
``serve_support.fake_deployments``), and prints one JSON line per request: its route, field, file, status, error
code and message, and this process's peak RSS so far. ``tests/test_serve_fuzz.py`` runs it in a child process, so that the peak
is this work's alone."""

from __future__ import annotations

import asyncio
import io
import json
import resource
import sys

import numpy as np
import soundfile
from hostile_media import hostile_files
from serve_support import fake_deployments, ingress_client, png

from avsync_ray.config.serve import ServeAppArgs
from avsync_ray.media import encode_mp4

LIMITS = {"max_upload_mb": 2, "max_image_pixels": 200 * 200, "max_video_pixels": 330 * 330, "max_audio_s": 8, "max_video_s": 5}
ROUTES = {"/v1/animations": ("image", "audio", "video"), "/v1/animations:sync": ("image", "audio", "video"), "/v1/sync-score": ("video", "audio")}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def flac(seconds: float, rate: int = 48_000) -> bytes:
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate)
    soundfile.write(buffer, np.stack([tone, tone], axis=1), rate, format="FLAC")
    return buffer.getvalue()


def smooth_mp4(seconds: float, size: int) -> bytes:
    """An mp4 (H.264 + AAC) of a moving gradient: at the frame-size limit, yet small enough to upload."""
    t = np.arange(int(seconds * 6))[:, None, None, None]
    ramp = np.linspace(0, 255, size)[None, None, :, None]
    frames = ((ramp + 8 * t) % 256).astype(np.uint8).repeat(size, axis=1).repeat(3, axis=3)
    sound = (0.3 * np.sin(np.arange(int(seconds * 16_000)) / 5)).astype(np.float32)
    return encode_mp4(frames, 6, sound, 16_000, preset="ultrafast")


def requests(files: dict[str, bytes], good: dict[str, bytes]):
    """(route, field, name, files) of each file as each field of each route; the other files are good."""
    for route, fields in ROUTES.items():
        for field in fields:
            for name, data in files.items():
                if route == "/v1/sync-score":
                    sent = {"video": data} if field == "video" else {"video": good["video"], "audio": data}
                else:
                    sent = {"video": data, "audio": good["audio"]} if field == "video" else {"image": good["image"], "audio": good["audio"], field: data}
                yield route, field, name, sent


async def main() -> None:
    settings = ServeAppArgs(limits=LIMITS, sampling={"height": 64, "width": 64, "num_inference_steps": 2})
    good = {"image": png(200, 200), "audio": flac(LIMITS["max_audio_s"] - 0.5), "video": smooth_mp4(LIMITS["max_video_s"] - 0.5, size=330)}
    honest = [("/v1/animations", "image", {"image": good["image"], "audio": good["audio"]}), ("/v1/animations:sync", "video", {"video": good["video"]}),
              ("/v1/sync-score", "audio", {"video": good["video"], "audio": good["audio"]})]  # fmt: skip
    hostile = list(requests(hostile_files(), good))
    async with ingress_client(settings, **fake_deployments(settings)) as client:
        for phase, cases in (("honest", [(route, field, "at the limits", sent) for route, field, sent in honest]), ("hostile", hostile)):
            for route, field, name, sent in cases:
                files = {key: (f"{key}.bin", value) for key, value in sent.items()}
                response = await client.post(route, data={"category": "dog barking"}, files=files, timeout=300)
                body = response.json() if response.headers.get("content-type") == "application/json" else {}
                print(json.dumps({"phase": phase, "route": route, "field": field, "file": name, "status": response.status_code, "error": body.get("error"),
                                  "message": body.get("message"), "peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
