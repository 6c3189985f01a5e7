"""What the `avsync serve` tests share: small media made on the spot, a free loopback port, the ingress's HTTP app
without Serve, and one Serve app deployed on the session's Ray for a test module (shut down at its end)."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import PIL.Image


def png(width: int = 80, height: int = 60, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def wav(seconds: float) -> bytes:
    from avsync_ray.media import encode_wav

    t = np.arange(int(seconds * 16000)) / 16000
    return encode_wav((0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32))


def mp4(seconds: float, size: int = 64, audio: bool = True) -> bytes:
    from avsync_ray.media import encode_mp4

    frames = np.random.default_rng(1).integers(0, 255, (int(seconds * 6), size, size, 3), dtype=np.uint8)
    waveform = (0.3 * np.sin(np.arange(int(seconds * 16000)) / 5)).astype(np.float32) if audio else None
    return encode_mp4(frames, 6, waveform, 16000, preset="ultrafast")


@contextlib.contextmanager
def serving(config, env_vars: dict[str, str] | None = None, timeout_s: float = 600):
    """Deploy ``config`` (a ServeConfig) as ``avsync serve`` does, on the Ray already running; ``env_vars`` go to
    the replicas through the application's runtime_env (as a Serve config file would set them)."""
    from ray import serve

    from avsync_ray.serve.app import deploy, deploy_config

    serve_config = deploy_config(config)
    if env_vars:
        serve_config["applications"][0]["runtime_env"] = {"env_vars": env_vars}
    try:
        deploy(serve_config, timeout_s=timeout_s)
        yield serve_config
    finally:
        serve.shutdown()


class Remote:
    """A stand-in for a deployment handle: ``handle.method.remote(*args)`` awaits ``methods[method](*args)``."""

    def __init__(self, **methods):
        self.methods = methods

    def __getattr__(self, name):
        return SimpleNamespace(remote=self.methods[name])


def fake_deployments(settings, classifier=None, described: dict | None = None) -> dict:
    """Handles of in-process stand-ins for the other deployments of an app with ``settings`` (a ServeAppArgs): the
    real job book, a model that answers every job with black frames at the app's size, and the sync scorer's own
    scoring code over ``classifier`` (None: the tiny random one). ``described``: what the model says of itself
    (ModelView fields), and so of each result it makes, as the model deployment does."""
    import asyncio

    from avsync_ray.serve.deployments import SyncScorer, _write_tiny_classifier
    from avsync_ray.serve.jobs import JobBook
    from avsync_ray.serve.schemas import RESULT_MODEL_FIELDS, GenerationResult

    limits, sampling = settings.limits, settings.sampling
    book = JobBook(limits.max_active_jobs, limits.job_timeout_s, limits.result_ttl_s, limits.max_stored_results, limits.retry_after_s)

    def answering(method):
        async def answer(*args):
            return method(*args)

        return answer

    jobs = Remote(**{name: answering(getattr(book, name)) for name in ("submit", "start", "progress", "succeed", "fail", "cancel", "discard", "view", "video")})

    described = described or {"role": "animation", "name": "black frames", "source": "preset:tiny", "loaded_at": "now"}

    async def generate(request):
        frames = np.zeros((sampling.num_frames, sampling.height, sampling.width, 3), dtype=np.uint8)
        return GenerationResult(request.job_id, frames, request.audio, {k: v for k, v in described.items() if k in RESULT_MODEL_FIELDS})

    model = Remote(frame_size=answering(lambda: (sampling.height, sampling.width)), describe=answering(lambda: described), generate=generate)
    if classifier is None:
        import tempfile

        from avsync_ray.models.sync_classifier import load_sync_classifier

        with tempfile.TemporaryDirectory() as folder:
            _write_tiny_classifier(folder)
            classifier = load_sync_classifier(folder, "cpu")
    async def score(audio, video):
        return {**await asyncio.to_thread(SyncScorer.func_or_class._score, classifier, audio, video, limits), "model": {"name": "tiny"}}

    scorer = Remote(score=score, describe=answering(lambda: {"role": "sync-score", "source": "preset:tiny", "loaded_at": "now"}))
    return {"model": model, "jobs": jobs, "scorer": scorer}


@contextlib.asynccontextmanager
async def ingress_client(settings, model=None, jobs=None, scorer=None):
    """An HTTP client of the ingress's app, in this process and without Serve: one ``AnimationIngress`` built as a
    replica builds it (``settings`` a ServeAppArgs; the handles are fakes with ``.method.remote(...)``), which the
    routes find as they find their replica's instance. A failing route answers 500 (its exception is not raised here)."""
    from unittest import mock

    import httpx

    from avsync_ray.serve.ingress import AnimationIngress

    class Ingress(AnimationIngress.func_or_class):
        def __del__(self):  # the replica wrapper's is a coroutine that stops the app's lifespan, which only Serve starts
            pass

    ingress = Ingress.__new__(Ingress)
    await ingress.__init__(settings.model_dump(mode="json"), model, jobs, scorer)
    with mock.patch("ray.serve.get_replica_context", return_value=SimpleNamespace(servable_object=ingress)):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ingress.app, raise_app_exceptions=False), base_url="http://test") as client:
            yield client
