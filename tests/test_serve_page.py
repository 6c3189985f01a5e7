"""The web page of `avsync serve` in a real browser: Debian's Chromium driven by Playwright (never a browser of
Playwright's own), against the Serve app on loopback. A person's path: choose an image and a sound, animate,
watch the progress, play the clip with its sound, download it; the messages for mistakes, which say what to do;
the notice that the tiny model only makes noise; and the API docs, which load with no network. The same app has a
small ingress (two requests at once, a queue of a browser's parallel loads), to see Serve itself refuse the overflow
with 503 and Retry-After."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import FLAGS, chromium
from local_cluster import free_ports
from serve_support import serving

from avsync_ray.config.base import load_config
from avsync_ray.config.serve import ServeConfig

STEPS = 12
INGRESS_ONGOING = 2
INGRESS_QUEUED = 8  # a page's parallel loads (Swagger UI's script, styles, icon, schema) queue, never overflow


@pytest.fixture(scope="module")
def page_app(ray_session):
    (port,) = free_ports(1)
    config = load_config(ServeConfig, "serve", overrides=[
        f"http.port={port}", f"sampling.num_inference_steps={STEPS}", "sync_classifier.source=null", "deployments.ingress.num_cpus=0.1",
        f"deployments.ingress.max_ongoing_requests={INGRESS_ONGOING}", f"deployments.ingress.max_queued_requests={INGRESS_QUEUED}",
    ])  # fmt: skip
    with serving(config) as serve_config:
        yield {"url": f"http://127.0.0.1:{port}/", "serve_config": serve_config}


@pytest.fixture(scope="module")
def page_url(page_app):
    return page_app["url"]


@pytest.fixture(scope="module")
def browser():
    """Playwright and the browser, checked before the app is deployed, so a machine without them skips at once."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (the dev extra) is not installed")
    return sync_api, chromium()


@pytest.fixture(scope="module")
def browser_page(browser, page_url, tmp_path_factory):
    sync_api, executable = browser
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh profile each run
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(str(profile), executable_path=executable, headless=True, args=FLAGS,
                                                                viewport={"width": 1100, "height": 900}, accept_downloads=True)  # fmt: skip
        page = context.new_page()
        page.goto(page_url)
        yield page
        context.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, media_dir):
    import PIL.Image

    from avsync_ray.synth import generate_clip

    folder = tmp_path_factory.mktemp("page_inputs")
    PIL.Image.fromarray(generate_clip("sync", seed=3, duration=3.0, size=(96, 128)).frames[0]).save(folder / "frame.png")  # a ball about to bounce
    (folder / "not-an-image.png").write_bytes(b"this is text")
    sound = media_dir / "audio_sfx" / "sonicpi_drum_roll.flac"
    return {"image": folder / "frame.png", "audio": sound, "bad_image": folder / "not-an-image.png"}


def test_the_page_animates_an_uploaded_image_with_an_uploaded_sound(browser_page, inputs, tmp_path):
    page = browser_page
    assert page.locator("#auth").is_hidden()  # this server needs no token
    assert page.locator("#category option").count() == 15
    page.set_input_files("#image", str(inputs["image"]))
    page.set_input_files("#audio", str(inputs["audio"]))
    assert page.locator("#image-preview img").is_visible() and page.locator("#audio-preview audio").count() == 1
    page.select_option("#category", "hammering")
    page.locator("#guidance").fill("6")
    assert page.locator("#guidance-value").inner_text() == "6.0"
    page.fill("#seed", "42")
    # Keep every status line the page shows, to see the per-step progress afterwards.
    page.evaluate("""() => { window.statuses = []; new MutationObserver(() => statuses.push(document.getElementById("status").textContent))
                        .observe(document.getElementById("status"), {childList: true, characterData: true, subtree: true}); }""")
    page.click("#animate")
    page.wait_for_selector("#result", state="visible", timeout=240_000)
    assert page.locator("#error").inner_text() == ""
    statuses = page.evaluate("() => statuses")
    assert any(f"of {STEPS}" in s for s in statuses), statuses
    playback = page.evaluate("""async () => {
        const video = document.getElementById("clip");
        if (video.readyState < 2) await new Promise((done) => video.addEventListener("loadeddata", done, {once: true}));
        video.muted = false;
        await video.play();
        await new Promise((done) => setTimeout(done, 1500));
        video.pause();
        return {duration: video.duration, width: video.videoWidth, height: video.videoHeight, error: video.error && video.error.message,
                audioBytes: video.webkitAudioDecodedByteCount, videoBytes: video.webkitVideoDecodedByteCount, played: video.currentTime};
    }""")
    assert playback["error"] is None and abs(playback["duration"] - 2.0) < 0.1, playback
    assert (playback["width"], playback["height"]) == (64, 64) and playback["played"] > 0.5
    assert playback["audioBytes"] > 0 and playback["videoBytes"] > 0, playback  # its sound was decoded and played
    details = page.locator("#details").inner_text()
    assert "seed 42" in details and f"{STEPS} steps" in details and "guidance 6" in details
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    from avsync_ray.media import probe

    info = probe(str(saved))
    assert saved.name == "avsyncd-hammering-seed42.mp4" and info.video.num_frames == 12 and info.audio is not None
    screenshot = page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
    if os.environ.get("AVSYNC_SERVE_SCREENSHOT"):  # how the README's picture is made
        Path(os.environ["AVSYNC_SERVE_SCREENSHOT"]).write_bytes(screenshot)


def test_the_page_says_what_is_missing_or_wrong(browser_page, inputs):
    page = browser_page
    page.reload()
    page.click("#animate")
    assert page.locator("#error").inner_text() == "Choose an image and a sound first."
    page.set_input_files("#image", str(inputs["bad_image"]))
    page.set_input_files("#audio", str(inputs["audio"]))
    page.click("#animate")
    page.wait_for_function("() => document.getElementById('error').textContent.length > 0", timeout=60_000)
    message = page.locator("#error").inner_text()
    assert message.startswith("image: corrupt (not a readable image") and message.endswith("Choose another file: this one could not be read."), message
    assert "Pillow" not in message and page.locator("#status").inner_text() == ""  # no longer "uploading…"
    assert page.locator("#animate").is_enabled()


def test_the_page_asks_for_the_token_in_words_a_person_can_act_on(browser_page, inputs):
    """This app needs no token; a server that does answers 401 (stood in for here by the browser's own routing)."""
    page = browser_page
    page.reload()
    unauthorized = '{"error": "unauthorized", "message": "this server needs a bearer token: send \'Authorization: Bearer <token>\'"}'
    page.route("**/v1/animations", lambda route: route.fulfill(status=401, body=unauthorized, content_type="application/json",
                                                               headers={"WWW-Authenticate": "Bearer"}))  # fmt: skip
    try:
        page.set_input_files("#image", str(inputs["image"]))
        page.set_input_files("#audio", str(inputs["audio"]))
        page.click("#animate")
        page.wait_for_function("() => document.getElementById('error').textContent.length > 0", timeout=60_000)
        message = page.locator("#error").inner_text()
        assert "paste it in the field above" in message and "Authorization" not in message and "Bearer" not in message, message
        assert page.locator("#auth").is_visible() and page.locator("#status").inner_text() == ""
        assert "Authorization" not in page.locator("#auth").inner_text()
    finally:
        page.unroute("**/v1/animations")


def test_the_page_says_the_tiny_model_only_makes_noise_and_has_no_lineage(browser_page):
    browser_page.reload()
    notice = browser_page.locator("#demo-model")
    assert notice.is_visible() and "random" in notice.inner_text() and "noise" in notice.inner_text()
    browser_page.wait_for_selector("#model-line", state="visible", timeout=60_000)
    assert browser_page.locator("#model-line").inner_text() == "Model: tiny: no lineage (a preset: random weights, never trained)"


def test_the_api_docs_load_with_no_network(browser_page, page_url):
    """Swagger UI comes from the app itself: with every request off this server refused, /docs still shows the API."""
    page = browser_page.context.new_page()
    elsewhere = []

    def only_this_server(route):
        if route.request.url.startswith(page_url):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    page.route("**/*", only_this_server)
    refused = []
    page.on("response", lambda response: response.ok or refused.append(f"{response.status} {response.url}"))
    try:
        page.goto(f"{page_url}docs")
        try:
            page.wait_for_selector(".swagger-ui .info .title", timeout=60_000)
        except Exception as error:
            raise AssertionError(f"Swagger UI did not show; answers that were not OK: {refused}") from error
        assert not refused, refused
        assert "AVSyncD" in page.locator(".swagger-ui .info .title").inner_text()
        page.wait_for_selector(".opblock", timeout=60_000)
        assert page.locator(".opblock").count() >= 9 and not elsewhere, elsewhere
    finally:
        page.close()


def test_a_full_ingress_queue_is_refused_by_serve_with_503_and_retry_after(page_url, inputs):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    files = {"image": ("frame.png", inputs["image"].read_bytes()), "audio": ("roll.flac", inputs["audio"].read_bytes())}

    def send(_):  # threads: Playwright's loop owns this thread's asyncio
        return httpx.post(f"{page_url}v1/animations:sync", data={"category": "hammering", "num_inference_steps": "25"}, files=files, timeout=300)  # limits.max_sync_steps

    # Serve admits the replica's ongoing requests plus a queue of those not yet assigned to it, and admits more as
    # those finish: so the contract is some served and the overflow refused. The longest synchronous jobs hold
    # their places while the burst arrives.
    sent = 2 * (INGRESS_ONGOING + INGRESS_QUEUED)
    with ThreadPoolExecutor(sent) as pool:
        responses = list(pool.map(send, range(sent)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, {code: codes.count(code) for code in set(codes)}
    assert all(r.headers.get("retry-after") == "5" for r in responses if r.status_code == 503)  # limits.retry_after_s


def test_the_page_says_which_model_version_made_the_clip_and_what_it_was_trained_on(browser_page, page_app, inputs, lineage_registry):
    """Swapped in place to a registered version with its lineage (tests/lineage_support.py), the page names it, its
    training run and step and its dataset, above the form and under the clip it made."""
    from lineage_support import REGISTERED

    from avsync_ray.lineage import shard_dataset
    from avsync_ray.serve.app import deploy

    serve_config = page_app["serve_config"]
    model = next(d for d in serve_config["applications"][0]["deployments"] if d["name"] == "AVSyncDModel")
    preset = model["user_config"]
    model["user_config"] = {**preset, "source": f"models:/{REGISTERED}/2", "tracking_uri": lineage_registry["uri"]}
    expected = f"{REGISTERED} version 2, trained by run tiny-run (step 4) on shards/train #{shard_dataset(lineage_registry['shards'], 'train').digest}"
    page = browser_page
    try:
        deploy(serve_config, timeout_s=300)
        page.wait_for_function("""async (version) => {
            const models = await (await fetch("/v1/models")).json();
            return models.models.some((m) => m.role === "animation" && m.version === version);
        }""", arg=2, timeout=120_000, polling=500)  # fmt: skip
        page.reload()
        page.wait_for_function("() => document.getElementById('model-line').textContent.includes('version 2')", timeout=60_000)
        assert page.locator("#model-line").inner_text() == f"Model: {expected}" and page.locator("#demo-model").is_hidden()
        page.set_input_files("#image", str(inputs["image"]))
        page.set_input_files("#audio", str(inputs["audio"]))
        page.click("#animate")
        page.wait_for_selector("#result", state="visible", timeout=240_000)
        assert page.locator("#details").inner_text().endswith(f"model {expected}")
    finally:
        model["user_config"] = preset
        deploy(serve_config, timeout_s=300)
