"""`avsync serve` without Ray: the job book's bounds, request grouping, batched generation, upload probing and
limits, model sources and swaps, the lineage each model reports (from an MLflow store built as the jobs log), the
Serve config it deploys (checked with Ray's own schema) and the cluster's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml
from serve_support import Remote, ingress_client, mp4, png, wav

from avsync_ray.config.base import ConfigError, load_config
from avsync_ray.config.sampling import SamplingConfig
from avsync_ray.config.serve import ServeConfig, ServeLimits
from avsync_ray.lineage import shard_dataset
from avsync_ray.serve.jobs import JobBook
from avsync_ray.serve.schemas import ApiError, GenerationRequest, group_compatible

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"category": "dog barking", "num_inference_steps": 4, "scheduler": "pndm", "audio_guidance_scale": 4.0, "seed": 1}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def book(clock=None, **overrides) -> JobBook:
    bounds = dict(max_active=3, job_timeout_s=100.0, result_ttl_s=50.0, max_stored_results=2, retry_after_s=7.0)
    return JobBook(**{**bounds, **overrides}, clock=clock or Clock())


def status_of(error: ApiError) -> tuple[int, str]:
    return error.status, error.code


# ------------------------------------------------------------------------------------------------ job book


def test_the_job_book_refuses_past_its_bound_with_503_and_retry_after():
    jobs = book()
    ids = [jobs.submit(SETTINGS, 4)["id"] for _ in range(3)]
    with pytest.raises(ApiError) as refused:
        jobs.submit(SETTINGS, 4)
    assert status_of(refused.value) == (503, "overloaded") and refused.value.headers == {"Retry-After": "7"}
    assert "3 unfinished jobs" in refused.value.message
    jobs.succeed(ids[0], b"mp4", {})  # a finished job frees its slot
    assert jobs.submit(SETTINGS, 4)["status"] == "queued"


def test_a_job_goes_queued_running_succeeded_with_its_progress():
    jobs = book()
    job = jobs.submit(SETTINGS, 4)
    other = jobs.submit(SETTINGS, 4)
    assert (job["status"], job["queue_position"], other["queue_position"]) == ("queued", 0, 1)
    assert jobs.start([job["id"]], {"name": "tiny"}) == []
    assert jobs.progress([job["id"]], 3) == []
    running = jobs.view(job["id"])
    assert running["status"] == "running" and running["progress"] == {"step": 3, "total_steps": 4, "fraction": 0.75}
    assert running["queue_position"] is None and jobs.view(other["id"])["queue_position"] == 0
    with pytest.raises(ApiError) as early:
        jobs.video(job["id"])
    assert status_of(early.value) == (409, "not_ready") and "running (step 3/4)" in early.value.message
    jobs.succeed(job["id"], b"mp4-bytes", {"name": "tiny", "version": 2})
    video, view = jobs.video(job["id"])
    assert video == b"mp4-bytes" and view["status"] == "succeeded" and view["progress"]["step"] == 4
    assert view["video_url"] == f"/v1/animations/{job['id']}/video" and view["model"]["version"] == 2


def test_cancelling_stops_a_running_job_skips_a_queued_one_and_deletes_a_finished_one():
    jobs = book(max_stored_results=10)
    running, queued, done = (jobs.submit(SETTINGS, 4)["id"] for _ in range(3))
    jobs.start([running, done], {})
    jobs.succeed(done, b"x", {})
    assert jobs.cancel(running)["status"] == "cancelled"
    assert jobs.progress([running], 2) == [running]  # the model's next step report tells it to stop
    assert jobs.cancel(queued)["status"] == "cancelled"
    assert jobs.start([queued], {}) == [queued]  # never runs
    assert jobs.view(queued)["started_at"] is None
    jobs.succeed(running, b"late", {})  # a result arriving after the cancel is dropped
    assert jobs.view(running)["status"] == "cancelled"
    assert jobs.cancel(done)["status"] == "succeeded"
    with pytest.raises(ApiError) as gone:
        jobs.view(done)
    assert status_of(gone.value) == (404, "not_found")


def test_results_expire_the_oldest_go_first_and_stuck_jobs_time_out():
    clock = Clock()
    jobs = book(clock)
    first, second, third = (jobs.submit(SETTINGS, 4)["id"] for _ in range(3))
    for job_id in (first, second, third):
        clock.now += 1
        jobs.succeed(job_id, b"x", {})
    with pytest.raises(ApiError):  # max_stored_results=2: the oldest result went
        jobs.view(first)
    assert jobs.view(third)["status"] == "succeeded"
    clock.now += 51  # result_ttl_s=50
    with pytest.raises(ApiError):
        jobs.view(third)
    stuck = jobs.submit(SETTINGS, 4)["id"]
    clock.now += 101  # job_timeout_s=100
    timed_out = jobs.view(stuck)
    assert timed_out["status"] == "failed" and "timed out" in timed_out["error"]
    assert jobs.progress([stuck], 1) == [stuck]


# ------------------------------------------------------------------------------------------------ batching


def request(job_id, steps=4, scheduler="pndm", guidance=4.0, samples=32000, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    audio = (rng.standard_normal(samples) * 0.1).astype(np.float32)
    return GenerationRequest(job_id, image, audio, "dog barking", seed, steps, scheduler, guidance)


def test_compatible_requests_group_in_arrival_order():
    requests = [request("a"), request("b", steps=8), request("c"), request("d", scheduler="ddim"), request("e", guidance=1.0),
                request("f", samples=16000), request("g", steps=8)]  # fmt: skip
    groups = group_compatible(requests, GenerationRequest.batch_key)
    assert [[requests[i].job_id for i in group] for group in groups] == [["a", "c"], ["b", "g"], ["d"], ["e"], ["f"]]


def test_a_batched_pipeline_call_gives_each_request_what_it_gives_alone(tiny_pipe):
    from avsync_ray.conditioning import Conditioning
    from avsync_ray.generate import generate
    from avsync_ray.pipelines.sampling import generate_batch

    config = SamplingConfig(num_inference_steps=2, height=64, width=64)
    items = [request(str(i), seed=i) for i in range(3)]
    conditionings = [Conditioning(r.image, r.audio, {}) for r in items]
    prompts = ["dog barking", "hammering", "dog barking"]
    frames_b, audio_b = generate_batch(tiny_pipe, [c.image for c in conditionings], [c.audio for c in conditionings], prompts, [5, 6, 7], config)
    batched = list(zip(frames_b, audio_b))
    alone = [generate(tiny_pipe, c, p, config.model_copy(update={"seed": s})) for c, p, s in zip(conditionings, prompts, [5, 6, 7])]
    for (frames, audio), (solo_frames, solo_audio) in zip(batched, alone):
        assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
        assert np.abs(frames.astype(int) - solo_frames.astype(int)).max() <= 1 and np.array_equal(audio, solo_audio)
    assert not np.array_equal(batched[0][0], batched[2][0])  # same prompt, other seed


def test_a_step_callback_that_raises_stops_the_denoising_loop_between_steps(tiny_pipe):
    from avsync_ray.pipelines.sampling import generate_batch
    from avsync_ray.serve.deployments import GroupCancelled

    steps_seen = []

    def stop_after_two(pipe, index, timestep, tensors):
        steps_seen.append(index)
        if index == 1:
            raise GroupCancelled
        return {}

    item = request("a")
    with pytest.raises(GroupCancelled):
        generate_batch(tiny_pipe, [item.image], [item.audio], ["dog barking"], [0], SamplingConfig(num_inference_steps=10, height=64, width=64),
                       callback_on_step_end=stop_after_two)  # fmt: skip
    assert steps_seen == [0, 1]


def test_a_frame_cropped_for_another_size_is_cropped_again_for_the_model(tiny_pipe):
    """After a swap to a model of another size, a request the ingress sized for the old one gets the clip the
    new model gives a frame cropped for it (a replica re-crops; it never fails on a shape)."""
    from avsync_ray.media.frames import center_crop_resize, to_uint8_frames
    from avsync_ray.pipelines.sampling import generate_batch
    from avsync_ray.serve.deployments import AVSyncDModel

    config = SamplingConfig(num_inference_steps=2, height=64, width=64)
    stale = request("old", seed=4)
    stale.image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    (frames, audio), = AVSyncDModel.func_or_class._generate_group(tiny_pipe, config, [stale], None)
    recropped = to_uint8_frames(center_crop_resize(stale.image, (64, 64)))[0]
    expected, _ = generate_batch(tiny_pipe, [recropped], [stale.audio], [stale.prompt], [stale.seed], config)
    assert frames.shape == (12, 64, 64, 3) and np.array_equal(frames, expected[0])


# ------------------------------------------------------------------------------------------------ uploads


SMALL = ServeLimits(max_image_pixels=100 * 100, max_video_pixels=96 * 96, max_audio_s=8.0, max_video_s=5.0)
SIZES = SamplingConfig(height=64, width=64)


def prepare(image=None, audio=None, video=None, limits=SMALL):
    from avsync_ray.serve.uploads import prepare_animation_inputs

    return prepare_animation_inputs(SIZES, limits, image, audio, video)


def refusal(**files) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as refused:
        prepare(**files)
    return refused.value.status, refused.value.code, refused.value.message


def test_an_image_and_a_sound_become_the_model_inputs_at_the_output_size():
    conditioning = prepare(image=png(), audio=wav(5.0))
    assert conditioning.image.shape == (64, 64, 3) and conditioning.image.dtype == np.uint8
    assert conditioning.audio.dtype == np.float32 and conditioning.audio.shape == (32000,)  # the centred 2 s only


def test_a_video_gives_both_inputs(media_dir):
    limits = ServeLimits(max_video_pixels=400 * 300)
    conditioning = prepare(video=(media_dir / "av_speech_grid" / "bbaf2n.mpg").read_bytes(), limits=limits)
    assert conditioning.image.shape == (64, 64, 3) and conditioning.audio.shape == (32000,)


@pytest.mark.parametrize(
    "files, expected",
    [
        (dict(audio=b"sound"), (422, "invalid_request", "give an image and an audio file, or a video")),
        (dict(image=b"i", audio=b"a", video=b"v"), (422, "invalid_request", "not all three")),
        (dict(image=b"not an image", audio=b"a"), (415, "unsupported_media", "image: corrupt (not a readable image (PNG, JPEG")),
        (dict(image="big", audio="wav"), (413, "upload_too_large", "image: 120x90 is 10,800 pixels, above the limit of 10,000 (limits.max_image_pixels)")),
        (dict(image="png", audio=b"\x00garbage" * 100), (415, "unsupported_media", "audio: corrupt")),
        (dict(image="png", audio="long wav"), (422, "too_long", "audio: lasts 9.0 s, longer than the limit of 8 s (limits.max_audio_s)")),
        (dict(image="png", audio="short wav"), (422, "too_short", "audio: its audio lasts 0.30 s, shorter than 0.5 s (limits.min_audio_s)")),
        (dict(video="silent mp4"), (422, "unusable_media", "video: no audio stream")),
        (dict(video="large mp4"), (413, "upload_too_large", "video: 128x128 frames are 16,384 pixels, above the limit of 9,216 (limits.max_video_pixels)")),
        (dict(video="long mp4"), (422, "too_long", "video: lasts 6.0 s, longer than the limit of 5 s (limits.max_video_s)")),
        (dict(video="short mp4"), (422, "unusable_media", "video: out of range")),
        (dict(image="png", video=b"\x00" * 64), (415, "unsupported_media", "video: corrupt")),
        (dict(image="truncated png", audio="wav"), (415, "unsupported_media", "image: truncated (unreadable image: image file is truncated")),
        (dict(video="png", audio="wav"), (422, "unusable_media", "video: out of range")),  # a still image has no clip to take
    ],
)
def test_bad_uploads_are_refused_before_decoding_with_a_message(files, expected):
    made = {"big": png(120, 90), "wav": wav(3.0), "png": png(), "long wav": wav(9.0), "short wav": wav(0.3), "silent mp4": mp4(3.0, audio=False),
            "large mp4": mp4(3.0, size=128), "long mp4": mp4(6.0), "short mp4": mp4(1.0), "truncated png": png(90, 60)[:2000]}  # fmt: skip
    status, code, message = refusal(**{k: made.get(v, v) if isinstance(v, str) else v for k, v in files.items()})
    assert (status, code) == expected[:2] and expected[2] in message, message


def test_a_sync_score_request_scores_the_videos_own_track_unless_given_a_sound():
    from avsync_ray.serve.uploads import prepare_sync_inputs

    video = mp4(3.0)
    assert prepare_sync_inputs(SMALL, None, video).audio is video
    assert prepare_sync_inputs(SMALL, wav(3.0), video).audio != video
    with pytest.raises(ApiError) as refused:
        prepare_sync_inputs(SMALL, wav(3.0), None)
    assert refused.value.status == 422 and "give a video" in refused.value.message


# ------------------------------------------------------------------------------------------------ model sources


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_model_slot_loads_presets_and_folders_and_keeps_the_model_when_a_swap_fails(tmp_path):
    from avsync_ray.serve.model_slot import ModelSlot

    loads = []

    def loader(path):
        if "broken" in path:
            raise OSError(f"cannot load {path}")
        loads.append(path)
        return f"model at {path}"

    (tmp_path / "other").mkdir()
    (tmp_path / "broken").mkdir()
    slot = ModelSlot("animation", loader, presets={"tiny": lambda folder: folder.mkdir()})

    async def scenario():
        await slot.apply({"source": "preset:tiny"})
        assert slot.describe()["name"] == "tiny" and Path(slot.describe()["path"]).is_dir()
        await slot.apply({"source": "preset:tiny", "poll_registry_s": 5})  # same model: not loaded again
        assert len(loads) == 1
        await slot.apply({"source": str(tmp_path / "other")})
        assert slot.loaded.model == f"model at {tmp_path / 'other'}" and slot.describe()["name"] == "other"
        with pytest.raises(OSError):
            await slot.apply({"source": str(tmp_path / "broken")})
        assert slot.describe()["name"] == "other"  # the old model keeps serving
        with pytest.raises(FileNotFoundError, match="is not a folder on this machine"):
            await slot.apply({"source": str(tmp_path / "missing")})
        with pytest.raises(ValueError, match="no such preset"):
            await slot.apply({"source": "preset:huge"})
        with pytest.raises(ConfigError, match="poll_registry_s"):
            await slot.apply({"source": "preset:tiny", "poll_registry_s": -1})
        await slot.apply({"source": None})
        assert slot.loaded is None and slot.describe() == {"role": "animation", "source": None}

    run(scenario())
    slot.close()


def test_a_dead_replicas_working_folder_is_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    """A replica that dies leaves its folder (a copy of a registry model); the next replica on the node removes it,
    but never the folder of a replica still alive, in this process or another."""
    import os
    import subprocess
    import sys
    import tempfile

    from avsync_ray.serve.model_slot import ModelSlot

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    made = "from avsync_ray.serve.model_slot import owned_workdir; print(owned_workdir('animation')[0])"
    dead = Path(subprocess.run([sys.executable, "-c", made], capture_output=True, text=True, env=env, check=True).stdout.strip())
    assert dead.is_dir() and dead.parent == tmp_path
    (dead / "registry-1").mkdir()
    first = ModelSlot("animation", loader=str, presets={})
    assert not dead.exists()
    second = ModelSlot("sync-score", loader=str, presets={})
    assert first._workdir.is_dir() and second._workdir.is_dir()  # both alive: neither took the other for an orphan
    first.close()
    first.close()  # idempotent (Serve's __del__, then the interpreter's)
    assert not first._workdir.exists() and second._workdir.is_dir()
    second.close()
    assert list(tmp_path.iterdir()) == []


def test_the_schema_states_auth_the_upload_rules_and_every_answer_as_the_server_gives_them():
    from avsync_ray.config.serve import ServeAppArgs
    from avsync_ray.serve.api import openapi_schema
    from avsync_ray.serve.ingress import app

    open_server, guarded = openapi_schema(app, ServeAppArgs()), openapi_schema(app, ServeAppArgs(auth={"token_env": "TOKEN"}))
    operations = [op for methods in open_server["paths"].values() for op in methods.values()]
    assert "securitySchemes" not in open_server["components"] and not any("security" in op or "401" in op["responses"] for op in operations)
    assert guarded["paths"]["/v1/models"]["get"]["security"] == [{"HTTPBearer": []}] and "401" in guarded["paths"]["/v1/models"]["get"]["responses"]
    bodies = open_server["components"]["schemas"]
    animation = bodies["Body_submit_v1_animations_post"]
    assert animation["anyOf"] == [{"required": ["image", "audio"]}, {"required": ["video"]}] and animation["not"] == {"required": ["image", "audio", "video"]}
    assert animation["properties"]["image"] == {"type": "string", "contentMediaType": "application/octet-stream", "title": "Image", "description": animation["properties"]["image"]["description"]}
    assert bodies["Body_sync_score_v1_sync_score_post"]["required"] == ["video"]
    for path in ("/v1/animations", "/v1/animations:sync", "/v1/sync-score"):
        assert "400" in open_server["paths"][path]["post"]["responses"]  # a multipart body that does not parse


def test_the_api_docs_come_from_the_server_itself():
    async def scenario():
        async with api_client() as client:
            docs = (await client.get("/docs")).text
            assert "/docs/assets/swagger-ui-bundle.js" in docs and "/docs/assets/swagger-ui.css" in docs and "https://" not in docs
            script = await client.get("/docs/assets/swagger-ui-bundle.js")
            assert script.status_code == 200 and len(script.content) > 500_000
            options = await client.options("/v1/animations/abc")
            assert options.status_code == 405 and options.headers["allow"] == "GET, DELETE"
            broken = await client.post("/v1/animations", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=x"})
            assert broken.status_code in (400, 422) and broken.json()["error"] in ("bad_request", "invalid_request")

    run(scenario())


def test_auth_refuses_to_start_open_when_it_names_a_missing_variable(monkeypatch):
    from avsync_ray.config.serve import AuthConfig
    from avsync_ray.serve.api import configured_token_digest, token_digest

    monkeypatch.delenv("AVSYNC_TEST_MISSING_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="AVSYNC_TEST_MISSING_TOKEN, which is unset"):
        configured_token_digest(AuthConfig(token_env="AVSYNC_TEST_MISSING_TOKEN"))
    monkeypatch.setenv("AVSYNC_TEST_MISSING_TOKEN", "s3cret")
    assert configured_token_digest(AuthConfig(token_env="AVSYNC_TEST_MISSING_TOKEN")) == token_digest("s3cret") != "s3cret"
    assert configured_token_digest(AuthConfig()) is None


# ------------------------------------------------------------------------------------------------ lineage


def lineage_of(slot) -> dict:
    """The lineage a slot reports, checked against the schema /v1/models states it with (every field kept)."""
    from avsync_ray.serve.schemas import ModelLineage

    lineage = slot.describe()["lineage"]
    assert ModelLineage.model_validate(lineage).model_dump() == lineage
    return lineage


def test_a_registry_model_reports_its_lineage_read_once_per_load_and_a_moved_alias_reports_the_new_one(lineage_registry, monkeypatch):
    from lineage_support import REGISTERED
    from mlflow.tracking import MlflowClient

    from avsync_ray import lineage
    from avsync_ray.serve.model_slot import ModelSlot

    store, client = lineage_registry, MlflowClient(lineage_registry["uri"])
    reads, read = [], lineage.model_lineage
    monkeypatch.setattr(lineage, "model_lineage", lambda mlflow_client, model_id: reads.append(model_id) or read(mlflow_client, model_id))
    config = {"source": f"models:/{REGISTERED}@serving", "tracking_uri": store["uri"]}
    client.set_registered_model_alias(REGISTERED, "serving", "1")  # an alias of this test's own
    slot = ModelSlot("animation", loader=str, presets={})
    try:
        run(slot.apply(config))
        served = lineage_of(slot)
        assert served["model_id"] == store["exports"][2]["model_id"] and served["training_run_id"] == store["training"]
        assert (served["training_run_name"], served["step"], served["recorded_in"], served["missing"]) == ("tiny-run", 2, "mlflow", None)
        assert served["dataset"]["digest"] == shard_dataset(store["shards"], "train").digest and served["dataset"]["source"].endswith("/train.index.json")
        assert served["curation_runs"] == [{"run_id": store["curation"], "run_name": "curate-shards"}]
        run(slot.apply(config))  # the same version: nothing is loaded or read again, however often it is described
        assert lineage_of(slot) == served and reads == [store["exports"][2]["model_id"]]
        client.set_registered_model_alias(REGISTERED, "serving", "2")
        run(slot.apply(config))
        moved = lineage_of(slot)
        assert (slot.describe()["version"], moved["model_id"], moved["step"]) == (2, store["exports"][4]["model_id"], 4)
        assert moved["dataset"] == served["dataset"] and len(reads) == 2
    finally:
        client.delete_registered_model_alias(REGISTERED, "serving")
        slot.close()


def test_a_folder_reports_what_its_export_recorded_and_a_model_without_lineage_says_why(lineage_registry, tmp_path):
    import shutil

    from avsync_ray.lineage import LINEAGE_FILE, served_lineage
    from avsync_ray.serve.model_slot import ModelSlot
    from avsync_ray.tracking import ModelSource

    store = lineage_registry
    exported = store["exports"][4]["folder"]
    plain, corrupt = tmp_path / "plain", tmp_path / "corrupt"
    plain.mkdir()
    shutil.copytree(exported, corrupt)
    (corrupt / LINEAGE_FILE).write_text("{not json")
    slot = ModelSlot("animation", loader=str, presets={"tiny": lambda folder: folder.mkdir()})
    try:
        run(slot.apply({"source": str(exported)}))  # no store is asked: the folder's lineage.json says it
        served = lineage_of(slot)
        assert (served["model_id"], served["training_run_id"], served["step"]) == (store["exports"][4]["model_id"], store["training"], 4)
        assert served["dataset"] == {"name": "shards/train", "digest": shard_dataset(store["shards"], "train").digest, "source": None}
        assert (served["recorded_in"], served["training_run_name"], served["curation_runs"], served["missing"]) == (LINEAGE_FILE, None, [], None)
        for source, why in ((plain, "the folder has no lineage.json"), (corrupt, "its lineage.json is unreadable"), ("preset:tiny", "a preset: random weights")):
            run(slot.apply({"source": str(source)}))  # each loads and is served: only its report is empty
            unknown = lineage_of(slot)
            assert unknown["missing"].startswith(why) and [key for key, value in unknown.items() if value not in (None, [])] == ["missing"]
    finally:
        slot.close()
    # A registry version the store cannot answer for: its downloaded folder's lineage.json, else why not.
    ghost = {"uri": "models:/x/9", "name": "x", "version": 9, "model_id": "m-0123456789abcdef0123456789abcdef"}
    fallback = served_lineage(ModelSource(path=str(exported), **ghost), store["uri"])
    assert (fallback["recorded_in"], fallback["model_id"]) == (LINEAGE_FILE, store["exports"][4]["model_id"])
    lost = served_lineage(ModelSource(path=str(plain), **ghost), store["uri"])
    assert lost["model_id"] is None and lost["missing"].startswith(f"the MLflow store at {store['uri']} has no lineage of {ghost['model_id']}")
    unlinked = served_lineage(ModelSource(path=str(plain), **{**ghost, "model_id": None}), store["uri"])
    assert unlinked["missing"] == "version 9 of x points at no LoggedModel (not registered by `avsync export --register`)"


def test_models_jobs_and_every_video_report_the_model_and_its_lineage(lineage_registry):
    from lineage_support import REGISTERED
    from serve_support import fake_deployments

    from avsync_ray.config.serve import ServeAppArgs
    from avsync_ray.lineage import no_lineage, served_lineage
    from avsync_ray.serve.api import RESULT_HEADERS
    from avsync_ray.tracking import ModelSource

    store = lineage_registry
    champion = ModelSource(path=str(store["exports"][2]["folder"]), uri=f"models:/{REGISTERED}@champion", name=REGISTERED, version=1, alias="champion",
                           model_id=store["exports"][2]["model_id"])  # fmt: skip
    lineage = served_lineage(champion, store["uri"])
    registered = {"role": "animation", "name": REGISTERED, "source": champion.uri, "version": 1, "alias": "champion", "loaded_at": "now", "lineage": lineage}
    expected = {"x-avsync-model": REGISTERED, "x-avsync-model-version": "1", "x-avsync-model-id": store["exports"][2]["model_id"],
                "x-avsync-training-run": store["training"], "x-avsync-training-step": "2", "x-avsync-dataset-digest": lineage["dataset"]["digest"]}  # fmt: skip
    settings = ServeAppArgs(categories=["dog barking"], sampling={"height": 64, "width": 64, "num_inference_steps": 2})
    inputs = {"data": {"category": "dog barking"}, "files": {"image": ("a.png", png()), "audio": ("a.wav", wav(3.0))}}

    async def scenario(described):
        async with ingress_client(settings, **fake_deployments(settings, described=described)) as client:
            assert (await client.get("/v1/models")).json()["models"][0]["lineage"] == described["lineage"]
            now = await client.post("/v1/animations:sync", **inputs)
            job = (await client.post("/v1/animations", **inputs)).json()
            while job["status"] in ("queued", "running"):
                await asyncio.sleep(0.05)
                job = (await client.get(f"/v1/animations/{job['id']}")).json()
            assert job["status"] == "succeeded" and job["model"]["lineage"] == described["lineage"]
            later = await client.get(job["video_url"])
            assert now.status_code == later.status_code == 200 and {name.lower() for name in RESULT_HEADERS} <= set(later.headers)
            return now.headers, later.headers

    for headers in run(scenario(registered)):
        assert {name: headers[name] for name in expected} == expected
    # A model without lineage, in a folder whose name is no plain ASCII: the headers say nothing, the name in ASCII.
    from urllib.parse import unquote

    unnamed = {"role": "animation", "name": "modèle 100%", "source": "/models/modèle 100%", "loaded_at": "now", "lineage": no_lineage("no lineage.json")}
    for headers in run(scenario(unnamed)):
        assert {name: headers[name] for name in expected} == {**dict.fromkeys(expected, ""), "x-avsync-model": "mod%C3%A8le 100%25"}
        assert unquote(headers["x-avsync-model"]) == unnamed["name"]


def test_the_schema_states_the_lineage_and_the_headers_of_a_video():
    from avsync_ray.config.serve import ServeAppArgs
    from avsync_ray.serve.api import RESULT_HEADERS, openapi_schema
    from avsync_ray.serve.ingress import app

    schema = openapi_schema(app, ServeAppArgs())
    components = schema["components"]["schemas"]
    lineage = components["ModelLineage"]["properties"]
    assert {"model_id", "training_run_id", "step", "dataset", "curation_runs", "missing"} <= set(lineage) and "digest" in components["DatasetRef"]["required"]
    for model in ("ModelView", "ResultModel"):
        assert {"$ref": "#/components/schemas/ModelLineage"} in components[model]["properties"]["lineage"]["anyOf"]
    assert {"$ref": "#/components/schemas/ResultModel"} in components["JobView"]["properties"]["model"]["anyOf"]
    for path, method in (("/v1/animations/{job_id}/video", "get"), ("/v1/animations:sync", "post")):
        assert list(schema["paths"][path][method]["responses"]["200"]["headers"]) == list(RESULT_HEADERS)


# ------------------------------------------------------------------------------------------------ Serve configs


def serve_config(*overrides) -> ServeConfig:
    return load_config(ServeConfig, "serve", overrides=list(overrides))


def test_the_serve_config_validates_with_rays_schema_and_puts_the_model_in_user_config():
    from ray.serve.schema import ServeDeploySchema

    from avsync_ray.config.serve import ServeAppArgs
    from avsync_ray.serve.app import deploy_config

    config = serve_config("deployments.model.replicas=[1, 3]", "model.source=models:/avsyncd@champion", "http.port=8123")
    deployed = deploy_config(config)
    schema = ServeDeploySchema.model_validate(deployed)
    application = schema.applications[0]
    assert application.import_path == "avsync_ray.serve.app:build_app" and schema.http_options.port == 8123
    assert ServeAppArgs.model_validate(application.args).sync_score is True
    deployments = {d.name: d for d in application.deployments}
    assert set(deployments) == {"AnimationIngress", "AVSyncDModel", "SyncScorer"}
    model = deployments["AVSyncDModel"]
    assert model.user_config["source"] == "models:/avsyncd@champion"
    assert model.autoscaling_config["min_replicas"] == 1 and model.autoscaling_config["max_replicas"] == 3
    assert model.max_queued_requests == 16 and deployments["AnimationIngress"].backpressure_config.retry_after_s == 5
    no_scorer = deploy_config(serve_config("sync_classifier.source=null"))
    assert [d["name"] for d in no_scorer["applications"][0]["deployments"]] == ["AnimationIngress", "AVSyncDModel"]
    assert no_scorer["applications"][0]["args"]["sync_score"] is False


def test_serve_config_mistakes_name_their_field():
    with pytest.raises(ConfigError, match="max_ongoing_requests .2. must be at least batching.max_batch_size .4."):
        serve_config("deployments.model.max_ongoing_requests=2")
    with pytest.raises(ConfigError, match="model.source is required"):
        serve_config("model.source=null")
    with pytest.raises(ConfigError, match="deployments.ingress.replicas"):
        serve_config("deployments.ingress.replicas=[3, 1]")


def test_paths_are_taken_relative_to_where_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = serve_config("model.source=models/avsyncd", "sync_classifier.source=models:/sync@champion")
    assert config.model.source == str(tmp_path / "models" / "avsyncd")
    assert config.model.tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert config.sync_classifier.source == "models:/sync@champion"
    assert serve_config("model.source=preset:tiny").model.source == "preset:tiny"  # a preset is not a path


SERVE_FILE = ROOT / "cluster" / "serve" / "avsyncd.yaml"


def test_the_cluster_serve_config_validates_with_avsync_cluster_validate_and_typos_are_found(tmp_path):
    from typer.testing import CliRunner

    from avsync_ray.cli import app

    crds = str(ROOT / "cluster" / "kuberay" / "crds")
    good = CliRunner().invoke(app, ["cluster", "validate", str(SERVE_FILE), "--crds", crds])
    assert good.exit_code == 0 and "1 file(s) valid" in good.output, good.output

    data = yaml.safe_load(SERVE_FILE.read_text())
    application = data["applications"][0]
    application["args"]["sampling"]["num_inference_step"] = 20  # each a typo Serve itself would pass or drop
    application["deployments"][1]["max_ongoing_request"] = 4
    application["deployments"][1]["user_config"]["tracking"] = "http://mlflow:5000"
    bad = tmp_path / "serve.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["cluster", "validate", str(bad), "--crds", crds])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines() == [
        f"{bad}: applications[0].deployments[1].max_ongoing_request: unknown field (not a Serve deployment option)",
        f"{bad}: applications[0].deployments[1].user_config.tracking: Extra inputs are not permitted",
        f"{bad}: applications[0].args.sampling.num_inference_step: Extra inputs are not permitted",
        "error: 3 problem(s) in 1 file(s), listed above",
    ]


def test_the_cluster_serve_config_goes_into_a_valid_rayservice():
    from avsync_ray.cluster_configs import load_crd_schemas, manifest_problems, rayservice_manifest, read_cluster

    service = rayservice_manifest("avsyncd", SERVE_FILE.read_text(), read_cluster(ROOT / "cluster" / "kuberay" / "raycluster.yaml"))
    schemas = load_crd_schemas(ROOT / "cluster" / "kuberay" / "crds")
    assert manifest_problems(service, schemas) == []
    service["spec"]["serveConfigV2"] = SERVE_FILE.read_text().replace("max_batch_size: 4", "max_batch_size: 0")
    assert manifest_problems(service, schemas) == ["spec.serveConfigV2.applications[0].args.batching.max_batch_size: Input should be greater than or equal to 1"]


def test_avsync_serve_print_config_writes_the_serve_config(tmp_path):
    from ray.serve.schema import ServeDeploySchema
    from typer.testing import CliRunner

    from avsync_ray.cli import app

    result = CliRunner().invoke(app, ["serve", "--print-config", "--set", "model.source=models:/avsyncd@champion"])
    assert result.exit_code == 0, result.output
    schema = ServeDeploySchema.model_validate(yaml.safe_load(result.output))
    assert {d.name: d.user_config for d in schema.applications[0].deployments}["AVSyncDModel"]["source"] == "models:/avsyncd@champion"


# ------------------------------------------------------------------------------------------------ HTTP layer


async def _frame_size():
    return 64, 64


def api_client(**limits):
    from avsync_ray.config.serve import ServeAppArgs

    settings = ServeAppArgs(limits=limits, categories=["dog barking", "</script><b>"])
    return ingress_client(settings, model=Remote(frame_size=_frame_size))


def test_a_chunked_upload_over_the_limit_is_refused_while_it_streams():
    async def scenario():
        async with api_client(max_upload_mb=0.01) as client:
            head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'

            async def chunks():  # no Content-Length: only counting the bytes can stop it
                yield head
                for _ in range(20):
                    yield b"x" * 1024
                yield b"\r\n--x--\r\n"

            response = await client.post("/v1/animations", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
            assert response.status_code == 413 and response.json()["error"] == "upload_too_large"

    run(scenario())


def test_the_page_carries_the_settings_and_cannot_be_broken_out_of():
    async def scenario():
        async with api_client() as client:
            page = (await client.get("/")).text
            assert '"categories": ["dog barking", "<\\/script><b>"]' in page and "</script><b>" not in page
            assert (await client.get("/nope")).json() == {"error": "not_found", "message": "GET /nope: not found"}

    run(scenario())


def test_registry_uris_name_an_alias_or_a_version():
    from avsync_ray.tracking import parse_registry_uri

    assert parse_registry_uri("models:/avsyncd@champion") == ("avsyncd", "champion", None)
    assert parse_registry_uri("models:/avsyncd/3") == ("avsyncd", None, 3)
    for bad in ("models:/avsyncd", "models:/avsyncd/latest", "models:/@champion", "runs:/abc/model"):
        with pytest.raises(ValueError, match="is not a registry URI"):
            parse_registry_uri(bad)
