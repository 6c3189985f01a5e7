"""`avsync serve` through HTTP: one Serve app on the session's Ray (loopback, a free port) with the tiny pipeline
from an MLflow registry, with its lineage: job lifecycle with per-step progress, the :sync route, cancellation, models, health,
auth, every limit, hostile uploads, sync scores, overload (503 with Retry-After, not timeouts), a bounded load,
a bounded OpenAPI fuzz and schemathesis with every check, quiet logs for client errors, then model swaps by
reconfigure and by moving the registry alias, without a replica restart, and a killed replica's folder removed."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from local_cluster import free_ports
from schemathesis.checks import not_a_server_error
from serve_support import mp4, png, serving, wav

from avsync_ray.config.base import load_config
from avsync_ray.config.serve import ServeConfig

TOKEN = "serve-test-token"
STEPS = 3  # the jobs' default: fast on the tiny pipeline
LONG = 60  # steps of a job that is still running when the test acts on it
MODEL = "avsyncd-serve-test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, synthetic_shards):
    """Two tiny pipelines (other seeds, so other weights) exported from one training run at steps 2 and 4, with their
    lineage (curated shards, training run, dataset: tests/lineage_support.py), registered as versions 1 (@champion)
    and 2 (@challenger)."""
    from lineage_support import lineage_store

    from avsync_ray.lineage import shard_dataset
    from avsync_ray.pipelines.presets import save_tiny_pipeline

    root = tmp_path_factory.mktemp("serve_registry")
    folders = {step: save_tiny_pipeline(root / f"tiny-{seed}", seed=seed) for step, seed in ((2, 0), (4, 1))}
    store = lineage_store(root, synthetic_shards["root"], folders, MODEL, {"champion": 1, "challenger": 2})
    return {**store, "digest": shard_dataset(store["shards"], "train").digest}


def app_config(port: int = 8000, tracking_uri: str = "sqlite:///unused.db") -> ServeConfig:
    return load_config(ServeConfig, "serve", overrides=[
        f"http.port={port}", f"model.source=models:/{MODEL}@champion", f"model.tracking_uri={tracking_uri}", "auth.token_env=AVSYNC_SERVE_TEST_TOKEN",
        f"sampling.num_inference_steps={STEPS}", "limits.max_upload_mb=2", "limits.max_image_pixels=40000", "limits.max_video_pixels=110000",
        "limits.max_audio_s=8", "limits.max_video_s=5", f"limits.max_steps={LONG}", "limits.max_sync_steps=30", "limits.max_active_jobs=8",
        "limits.retry_after_s=3", "deployments.ingress.num_cpus=0.1", "deployments.sync_score.num_cpus=0.1",
    ])  # fmt: skip


def published_schema() -> dict:
    """The OpenAPI schema the ingress publishes, built as it builds it (schemathesis needs it before the app runs:
    its pytest fixture loader does not work with this pytest); a test checks it is the live one."""
    from avsync_ray.config.serve import ServeAppArgs
    from avsync_ray.serve.api import openapi_schema
    from avsync_ray.serve.app import app_args
    from avsync_ray.serve.ingress import app

    return openapi_schema(app, ServeAppArgs(**app_args(app_config())))


@pytest.fixture(scope="module")
def app(ray_session, registry, tmp_path_factory):
    """The app, its replicas' temp folder their own (TMPDIR), to see what they leave there."""
    (port,) = free_ports(1)
    temp = tmp_path_factory.mktemp("replica_tmp")
    with serving(app_config(port, registry["uri"]), env_vars={"AVSYNC_SERVE_TEST_TOKEN": TOKEN, "TMPDIR": str(temp)}) as serve_config:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
            yield {"client": client, "serve_config": serve_config, "url": f"http://127.0.0.1:{port}", "temp": temp}
    left = sorted(path.name for path in temp.glob("avsync-serve-*"))
    assert not left, f"the replicas left their working folders behind on shutdown: {left}"


@pytest.fixture
def client(app) -> httpx.Client:
    return app["client"]


def pair(steps=None, **fields):
    data = {"category": "dog barking", **({"num_inference_steps": str(steps)} if steps else {}), **{k: str(v) for k, v in fields.items()}}
    return {"data": data, "files": {"image": ("frame.png", png()), "audio": ("sound.wav", wav(3.0))}}


def wait_for(client, job_id, done=lambda job: job["status"] not in ("queued", "running"), timeout_s=300):
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/animations/{job_id}").json()
        seen.append(job)
        if done(job):
            return job, seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {seen[-1]['status']} after {timeout_s} s")


def decoded(mp4_bytes):
    from avsync_ray.media import decode, probe

    return probe(mp4_bytes), decode(mp4_bytes)


def models(client) -> dict:
    return {m["role"]: m for m in client.get("/v1/models").json()["models"]}


def assert_error(response, status, code, *fragments):
    body = response.json()
    assert response.status_code == status and body["error"] == code, (response.status_code, body)
    for fragment in fragments:
        assert fragment in body["message"], body["message"]


# ------------------------------------------------------------------------------------------------ basics


def test_health_needs_no_token_everything_else_does(app):
    url = app["url"]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "Animate" in page.text and '"auth_required": true' in page.text
    assert httpx.get(f"{url}/openapi.json").json()["info"]["title"] == "AVSyncD"
    for method, path in (("GET", "/readyz"), ("GET", "/v1/models"), ("GET", "/v1/animations/x"), ("POST", "/v1/animations"), ("POST", "/v1/sync-score")):
        anonymous = httpx.request(method, f"{url}{path}")
        assert_error(anonymous, 401, "unauthorized", "bearer token")
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert_error(httpx.request(method, f"{url}{path}", headers={"Authorization": "Bearer wrong"}), 403, "forbidden")
    assert_error(httpx.get(f"{url}/v1/models", headers={"Authorization": f"Basic {TOKEN}"}), 401, "unauthorized")


def test_ready_and_models_name_the_registry_version_and_its_lineage(client, registry):
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] and "(version 1)" in ready.json()["message"]
    body = client.get("/v1/models").json()
    served = {m["role"]: m for m in body["models"]}
    animation = served["animation"]
    assert (animation["name"], animation["version"], animation["alias"], animation["source"]) == (MODEL, 1, "champion", f"models:/{MODEL}@champion")
    assert (animation["device"], animation["dtype"]) == ("cpu", "float32") and animation["replica"]
    assert animation["config"]["components"]["unet"] == "AVSyncDUNet3DModel"
    lineage = animation["lineage"]  # from the store, through the registry version's LoggedModel
    assert (lineage["model_id"], lineage["training_run_id"], lineage["training_run_name"], lineage["step"]) == (
        registry["exports"][2]["model_id"], registry["training"], "tiny-run", 2)  # fmt: skip
    assert lineage["dataset"]["digest"] == registry["digest"] and lineage["curation_runs"][0]["run_id"] == registry["curation"]
    assert served["sync-score"]["source"] == "preset:tiny" and served["sync-score"]["lineage"]["missing"].startswith("a preset")
    assert body["generation"]["num_inference_steps"] == STEPS and body["limits"]["max_steps"] == LONG and body["auth_required"]


# ------------------------------------------------------------------------------------------------ jobs


def test_a_job_reports_every_step_and_ends_with_an_mp4_with_its_audio(client, registry):
    submitted = client.post("/v1/animations", **pair(steps=12, seed=11))
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert submitted.headers["location"] == f"/v1/animations/{job['id']}" and job["status"] == "queued"
    finished, seen = wait_for(client, job["id"])
    assert finished["status"] == "succeeded", finished
    steps = [j["progress"]["step"] for j in seen]
    assert steps == sorted(steps) and finished["progress"] == {"step": 12, "total_steps": 12, "fraction": 1.0}
    assert any(0 < step < 12 for step in steps), steps  # polled while it ran
    assert finished["model"]["version"] == 1 and finished["model"]["lineage"]["step"] == 2 and finished["settings"]["seed"] == 11
    video = client.get(finished["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.headers["x-avsync-seed"] == "11" and video.headers["x-avsync-model-version"] == "1"
    made_by = {name: video.headers[f"x-avsync-{name}"] for name in ("model-id", "training-run", "training-step", "dataset-digest")}
    assert made_by == {"model-id": registry["exports"][2]["model_id"], "training-run": registry["training"], "training-step": "2", "dataset-digest": registry["digest"]}
    info, clip = decoded(video.content)
    assert (info.video.codec, info.video.width, info.video.height, info.video.num_frames) == ("h264", 64, 64, 12)
    assert info.audio.codec == "aac" and abs(info.audio.duration - 2.0) < 0.1 and np.abs(clip.audio).max() > 0.05


def test_the_sync_route_answers_with_the_mp4_and_keeps_nothing(client):
    first = client.post("/v1/animations:sync", **pair(seed=5))
    assert first.status_code == 200 and first.headers["x-avsync-seed"] == "5", first.text
    again = client.post("/v1/animations:sync", **pair(seed=5))
    other = client.post("/v1/animations:sync", **pair(seed=6))
    frames = [decoded(r.content)[1].frames.astype(int) for r in (first, again, other)]
    assert np.abs(frames[0] - frames[1]).max() <= 2 < np.abs(frames[0] - frames[2]).max()  # the seed decides
    assert_error(client.get(f"/v1/animations/{first.headers['x-avsync-job']}"), 404, "not_found")


def test_a_video_alone_gives_the_image_and_the_sound(client, media_dir):
    response = client.post("/v1/animations:sync", data={"category": "playing cello"},
                           files={"video": ("grid.mpg", (media_dir / "av_speech_grid" / "bbaf2n.mpg").read_bytes())})  # fmt: skip
    assert response.status_code == 200, response.text
    assert decoded(response.content)[0].audio is not None


def test_cancelling_a_running_job_stops_its_denoising_loop_and_a_queued_job_never_runs(client):
    running = client.post("/v1/animations", **pair(steps=LONG)).json()
    wait_for(client, running["id"], done=lambda job: job["progress"]["step"] >= 1)
    queued = client.post("/v1/animations", **pair(steps=LONG, scheduler="ddim")).json()  # another group: waits for the next batch
    calls = models(client)["animation"]["stats"]["pipeline_calls"]
    assert client.delete(f"/v1/animations/{queued['id']}").json()["status"] == "cancelled"
    cancelled = client.delete(f"/v1/animations/{running['id']}").json()
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by the client"
    deadline = time.monotonic() + 120
    while (stats := models(client)["animation"]["stats"])["pipeline_calls"] == calls and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stats["last_call"]["cancelled"] and stats["last_call"]["steps_run"] < LONG, stats
    assert stats["pipeline_calls"] == calls + 1  # the queued job's group never ran
    assert client.get(f"/v1/animations/{queued['id']}").json()["started_at"] is None
    assert_error(client.get(f"/v1/animations/{running['id']}/video"), 409, "not_ready", "cancelled")
    assert client.delete(f"/v1/animations/{running['id']}").status_code == 200  # a finished job is deleted
    assert_error(client.get(f"/v1/animations/{running['id']}"), 404, "not_found")


def test_a_sync_client_that_goes_away_cancels_its_job(client, app):
    before = models(client)["animation"]["stats"]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{app['url']}/v1/animations:sync", headers=AUTH, timeout=1.0, **pair(steps=30))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stats = models(client)["animation"]["stats"]
        if stats["skipped_jobs"] > before["skipped_jobs"] or stats["cancelled_calls"] > before["cancelled_calls"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the abandoned job ran on: {stats}")
    if stats["cancelled_calls"] > before["cancelled_calls"]:  # it had started: it stopped before its last step
        assert stats["last_call"]["steps_run"] < 30, stats


# ------------------------------------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    "request_kwargs, status, code, fragment",
    [
        ({"data": {"category": "dog barking"}, "files": {"image": ("a.png", png())}}, 422, "invalid_request", "give an image and an audio file, or a video"),
        ({"data": {}, "files": {"image": ("a.png", png()), "audio": ("a.wav", wav(3))}}, 422, "invalid_request", "category: Field required"),
        (pair(category="unicorns"), 422, "invalid_request", "category: Input should be 'baby babbling crying'"),
        (pair(steps=LONG + 1), 422, "invalid_request", f"num_inference_steps: Input should be less than or equal to {LONG}"),
        (pair(audio_guidance_scale=13), 422, "invalid_request", "audio_guidance_scale: Input should be less than or equal to 12"),
        (pair(audio_guidance_scale=0.5), 422, "invalid_request", "audio_guidance_scale: Input should be greater than or equal to 1"),
        (pair(scheduler="lms"), 422, "invalid_request", "scheduler: Input should be 'pndm'"),
        (pair(seed=-1), 422, "invalid_request", "seed: Input should be greater than or equal to 0"),
        ({"data": {"category": "dog barking"}, "files": {"image": ("a.png", png(250, 200)), "audio": ("a.wav", wav(3))}}, 413, "upload_too_large", "limits.max_image_pixels"),
        ({"data": {"category": "dog barking"}, "files": {"image": ("a.png", b"GIF89a-not-really"), "audio": ("a.wav", wav(3))}}, 415, "unsupported_media", "image: corrupt"),
        ({"data": {"category": "dog barking"}, "files": {"image": ("a.png", png()), "audio": ("a.wav", b"RIFF" + bytes(500))}}, 415, "unsupported_media", "audio:"),
        ({"data": {"category": "dog barking"}, "files": {"image": ("a.png", png()), "audio": ("a.wav", wav(9))}}, 422, "too_long", "limits.max_audio_s"),
        ({"data": {"category": "dog barking"}, "files": {"image": ("a.png", png()), "audio": ("a.wav", wav(0.3))}}, 422, "too_short", "limits.min_audio_s"),
        ({"data": {"category": "dog barking"}, "files": {"video": ("v.mp4", mp4(6))}}, 422, "too_long", "limits.max_video_s"),
        ({"data": {"category": "dog barking"}, "files": {"video": ("v.mp4", mp4(3, size=352))}}, 413, "upload_too_large", "limits.max_video_pixels"),
        ({"data": {"category": "dog barking"}, "files": {"video": ("v.mp4", mp4(3, audio=False))}}, 422, "unusable_media", "video: no audio stream"),
        ({"data": {"category": "dog barking"}, "files": {"image": ("a.png", png()), "audio": ("a.wav", bytes(3 * 2**20))}}, 413, "upload_too_large", "limits.max_upload_mb"),
    ],
)
def test_every_limit_answers_a_4xx_with_a_message(client, request_kwargs, status, code, fragment):
    assert_error(client.post("/v1/animations", **request_kwargs), status, code, fragment)


def test_the_sync_route_takes_only_short_jobs(client):
    assert_error(client.post("/v1/animations:sync", **pair(steps=31)), 422, "invalid_request", "num_inference_steps: Input should be less than or equal to 30")


def test_unknown_jobs_and_routes_are_json_404s(client):
    assert_error(client.get("/v1/animations/nope"), 404, "not_found", "no job 'nope'")
    assert_error(client.delete("/v1/animations/nope"), 404, "not_found")
    assert_error(client.get("/v1/animations/nope/video"), 404, "not_found")
    assert_error(client.get("/v2/anything"), 404, "not_found", "GET /v2/anything")
    assert_error(client.put("/v1/models"), 405, "method_not_allowed")


def test_hostile_uploads_get_a_4xx_naming_the_field_and_the_ingress_does_not_grow(app, client):
    """The cases of tests/test_serve_fuzz.py that broke the server before, through Serve: a FLAC whose header says
    2 s but which holds 600 s (decoded in full it took about 1 GB), a truncated PNG, a PNG sent as the video."""
    from hostile_media import lying_flac, truncated

    _, ingress = _replica("AnimationIngress")
    before = _peak_rss_mb(ingress)
    lying = client.post("/v1/animations", data={"category": "dog barking"}, files={"image": ("a.png", png()), "audio": ("a.flac", lying_flac())})
    assert_error(lying, 422, "too_long", "audio: too long (limits.max_audio_s): more than 8 s of audio decoded, and the header says 2.0 s")
    assert _peak_rss_mb(ingress) - before < 100, (before, _peak_rss_mb(ingress))
    cut = client.post("/v1/animations", data={"category": "dog barking"}, files={"image": ("a.png", truncated(png(160, 120))), "audio": ("a.wav", wav(3))})
    assert_error(cut, 415, "unsupported_media", "image: truncated")
    still = client.post("/v1/animations", data={"category": "dog barking"}, files={"video": ("v.png", png()), "audio": ("a.wav", wav(3))})
    assert_error(still, 422, "unusable_media", "video: out of range")


def _replica(deployment: str):
    """(the actor of the one replica of ``deployment``, its process id)."""
    import os

    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "serve" and f"avsyncd#{deployment}#" in a["name"]]
    assert len(names) == 1, names
    actor = ray.get_actor(names[0], namespace="serve")
    return actor, ray.get(actor.__ray_call__.remote(lambda replica: os.getpid()))


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


# ------------------------------------------------------------------------------------------------ sync scores


def test_the_sync_score_route_scores_a_pair_with_the_classifier(client, media_dir):
    grid = (media_dir / "av_speech_grid" / "bbaf2n.mpg").read_bytes()
    own = client.post("/v1/sync-score", files={"video": ("grid.mpg", grid)})
    assert own.status_code == 200, own.text
    body = own.json()
    assert isinstance(body["score"], float) and 0 <= body["psync"]["a2v"] <= 1 and 0 <= body["psync"]["v2a"] <= 1
    assert body["model"]["source"] == "preset:tiny"
    dubbed = client.post("/v1/sync-score", files={"video": ("grid.mpg", grid), "audio": ("other.wav", wav(3.0))}).json()
    assert dubbed["score"] != body["score"]
    short = client.post("/v1/sync-score", files={"video": ("clip.mp4", mp4(2.0))}).json()
    assert short["psync"] is None and "P_sync needs 2.5 s" in short["psync_error"] and isinstance(short["score"], float)
    assert_error(client.post("/v1/sync-score", files={"audio": ("a.wav", wav(3))}), 422, "invalid_request", "give a video")


def test_a_silent_video_is_scored_against_a_separate_sound(client):
    silent = mp4(3.0, audio=False)
    scored = client.post("/v1/sync-score", files={"video": ("silent.mp4", silent), "audio": ("sound.wav", wav(3.0))})
    assert scored.status_code == 200, scored.text
    assert isinstance(scored.json()["score"], float) and scored.json()["psync"] is not None
    assert_error(client.post("/v1/sync-score", files={"video": ("silent.mp4", silent)}), 422, "unusable_media", "video: no audio stream")


# ------------------------------------------------------------------------------------------------ load


async def _timed(http: httpx.AsyncClient, path: str, kwargs: dict) -> tuple[int, float, httpx.Response]:
    start = time.perf_counter()
    response = await http.post(path, **kwargs)
    return response.status_code, time.perf_counter() - start, response


async def _burst(app, path: str, kwargs: dict, total: int, concurrency: int) -> list[tuple[int, float, httpx.Response]]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=app["url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as http:

        async def one():
            async with limit:
                return await _timed(http, path, kwargs)

        return await asyncio.gather(*(one() for _ in range(total)))


@pytest.mark.parametrize("total", [16, pytest.param(96, marks=pytest.mark.slow)])
def test_a_bounded_load_at_concurrency_8_has_no_errors(app, total):
    results = asyncio.run(_burst(app, "/v1/animations:sync", pair(steps=2), total=total, concurrency=8))
    codes = [code for code, _, _ in results]
    latencies = sorted(seconds for _, seconds, _ in results)
    assert codes == [200] * total, [r.text for c, _, r in results if c != 200][:2]
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"\n{total} :sync requests, concurrency 8, 2 steps: p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s")


def test_past_the_job_bound_the_server_answers_503_with_retry_after_not_a_timeout(app, client):
    results = asyncio.run(_burst(app, "/v1/animations", pair(steps=LONG), total=12, concurrency=12))
    accepted = [r.json()["id"] for code, _, r in results if code == 202]
    refused = [r for code, _, r in results if code == 503]
    try:
        assert len(accepted) + len(refused) == 12 and len(accepted) == 8, [c for c, _, _ in results]  # limits.max_active_jobs
        for response in refused:
            assert_error(response, 503, "overloaded", "8 unfinished jobs")
            assert response.headers["retry-after"] == "3"
    finally:
        for job_id in accepted:
            client.delete(f"/v1/animations/{job_id}")


# ------------------------------------------------------------------------------------------------ fuzzing


fuzzed = schemathesis.openapi.from_dict(published_schema())
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_fuzzed_schema_is_the_served_one(app):
    assert httpx.get(f"{app['url']}/openapi.json").json() == published_schema()


@fuzzed.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
def test_no_generated_request_gets_a_5xx(case, app):
    case.call_and_validate(base_url=app["url"], headers=AUTH, checks=[not_a_server_error], timeout=60)


@pytest.mark.slow
@fuzzed.parametrize()
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_generated_request_gets_a_5xx_long(case, app):
    case.call_and_validate(base_url=app["url"], headers=AUTH, checks=[not_a_server_error], timeout=60)


def test_schemathesis_with_every_check_finds_no_failure(app, tmp_path):
    """`schemathesis run --checks all` (coverage and fuzzing phases, seeded, a few hundred cases): the schema says what
    the server does (auth, the uploads' rules, 400 for a broken multipart body, 405 with Allow). tests/schemathesis.toml
    says why an upload may be refused for its content."""
    tests = Path(__file__).resolve().parent
    command = [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(tests / "schemathesis.toml"), "run", f"{app['url']}/openapi.json",
               "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}", "--phases", "examples,coverage,fuzzing", "--max-examples", "10",
               "--seed", "1", "--generation-database", "none", "--request-timeout", "60", "--workers", "1", "--no-color"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache stays out of the repo
    summary = done.stdout[done.stdout.find("SUMMARY") :]
    assert done.returncode == 0, done.stdout[-6000:]
    assert " passed" in summary and "generated" in summary, summary


def test_405_names_every_method_and_expected_client_errors_log_no_traceback(app, client):
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    sizes = {path: path.stat().st_size for path in logs.glob("replica_avsyncd_*.log")}
    options = client.options("/v1/animations/nope")
    assert options.status_code == 405 and options.headers["allow"] == "GET, DELETE", (options.status_code, options.headers)
    assert_error(client.get("/v1/animations/nope"), 404, "not_found")
    running = client.post("/v1/animations", **pair(steps=LONG)).json()
    assert_error(client.get(f"/v1/animations/{running['id']}/video"), 409, "not_ready")
    client.delete(f"/v1/animations/{running['id']}")
    time.sleep(2)  # replica logs are flushed as they are written; give the files a moment
    written = "".join(path.read_text(errors="replace")[sizes.get(path, 0) :] for path in logs.glob("replica_avsyncd_*.log"))
    assert "Traceback" not in written and "Request failed" not in written, written[-3000:]


# ------------------------------------------------------------------------------------------------ swaps


def test_a_user_config_change_swaps_the_model_in_place(app, client, registry):
    from avsync_ray.serve.app import deploy

    before = models(client)["animation"]
    serve_config = app["serve_config"]
    model_entry = next(d for d in serve_config["applications"][0]["deployments"] if d["name"] == "AVSyncDModel")
    model_entry["user_config"] = {**model_entry["user_config"], "source": f"models:/{MODEL}@challenger"}
    deploy(serve_config, timeout_s=300)
    deadline = time.monotonic() + 120
    while (after := models(client)["animation"])["version"] != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (after["version"], after["alias"], after["lineage"]["step"]) == (2, "challenger", 4)
    assert after["replica"] == before["replica"] and after["stats"]["requests"] >= before["stats"]["requests"]  # the same replica
    response = client.post("/v1/animations:sync", **pair())
    assert response.headers["x-avsync-model-version"] == "2" and response.headers["x-avsync-training-step"] == "4"
    assert response.headers["x-avsync-model-id"] == registry["exports"][4]["model_id"] != before["lineage"]["model_id"]


def test_moving_the_registry_alias_swaps_the_model_without_a_restart(app, client, registry):
    from mlflow.tracking import MlflowClient

    from avsync_ray.serve.app import deploy

    serve_config = app["serve_config"]
    model_entry = next(d for d in serve_config["applications"][0]["deployments"] if d["name"] == "AVSyncDModel")
    model_entry["user_config"] = {**model_entry["user_config"], "source": f"models:/{MODEL}@champion", "poll_registry_s": 1.0}
    deploy(serve_config, timeout_s=300)
    deadline = time.monotonic() + 120
    while (current := models(client)["animation"])["version"] != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (current["version"], current["alias"]) == (1, "champion")
    assert current["lineage"]["model_id"] == registry["exports"][2]["model_id"]
    MlflowClient(registry["uri"]).set_registered_model_alias(MODEL, "champion", "2")
    deadline = time.monotonic() + 120
    while (moved := models(client)["animation"])["version"] != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (moved["version"], moved["alias"], moved["replica"]) == (2, "champion", current["replica"])
    assert (moved["lineage"]["model_id"], moved["lineage"]["step"]) == (registry["exports"][4]["model_id"], 4)  # what it reports moved too


def test_a_killed_model_replica_leaves_no_model_copy_behind(app, client):
    """A replica that dies without stopping cannot remove its working folder (a copy of the registry model); the
    replica Serve starts in its place does."""
    import ray

    described = models(client)["animation"]
    workdir = app["temp"] / Path(described["path"]).relative_to(app["temp"]).parts[0]
    assert workdir.is_dir() and workdir.name.startswith("avsync-serve-animation-"), workdir
    ray.kill(_replica("AVSyncDModel")[0], no_restart=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            replaced = models(client)["animation"]
            if replaced.get("replica") not in (None, described["replica"]) and replaced.get("loaded_at"):
                break
        except (httpx.HTTPError, KeyError):
            pass
        time.sleep(1)
    else:
        raise AssertionError("no new model replica within 300 s")
    assert not workdir.exists(), f"{workdir} of the killed replica is still there"
    assert len(list(app["temp"].glob("avsync-serve-animation-*"))) == 1
