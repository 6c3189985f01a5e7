"""The Serve application: its builder (``import_path: avsync_ray.serve.app:build_app`` in a Serve config file),
the Serve config ``avsync serve`` deploys (the same file ``serve deploy`` and a RayService's ``serveConfigV2``
take), and ``avsync serve`` itself.

What lives where in that config decides what a change costs: the application ``args`` (limits, auth, sizes,
batching) are fixed for the replicas' lifetime, so a change restarts them; each model deployment's
``user_config`` names its model, so a change swaps the model in ``reconfigure`` with no restart; replica counts
and request bounds are Serve's own deployment options, updated in place as well.
"""

from __future__ import annotations

import os
import time

from avsync_ray.config.base import ConfigError, validate_config
from avsync_ray.config.serve import (
    PRESET_PREFIX,
    SERVE_BUILDER,
    ModelSourceConfig,
    ReplicaSettings,
    ServeAppArgs,
    ServeConfig,
    ServeDeployments,
)
from avsync_ray.errors import WorkFailedError
from avsync_ray.serve.deployments import MODEL, SCORER, AnimationJobs, AVSyncDModel, SyncScorer
from avsync_ray.serve.ingress import INGRESS, AnimationIngress
from avsync_ray.tracking import is_registry_uri

BUILDER = SERVE_BUILDER


class ServeDeployError(WorkFailedError):
    """The application did not reach RUNNING (a replica failed to start: bad model source, missing token, ...)."""


def deployment_options(settings: ReplicaSettings, retry_after_s: float | None = None) -> dict:
    """Serve deployment options of one deployment (those a Serve config's ``deployments`` entry takes)."""
    options: dict = {
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
    }
    if isinstance(settings.replicas, int):
        options["num_replicas"] = settings.replicas
    else:
        low, high = settings.replicas
        options["autoscaling_config"] = {"min_replicas": low, "initial_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": settings.target_ongoing_requests}  # fmt: skip
    if retry_after_s is not None:  # what the HTTP proxy answers once this deployment's queue is full
        options["backpressure_config"] = {"status_code": 503, "retry_after_s": retry_after_s}
    return options


def build_app(args: dict):
    """The Serve application builder: ``args`` are :class:`ServeAppArgs`. Deployment options default to
    :class:`ServeDeployments`' and the models to :class:`ModelSourceConfig` ``preset:tiny``; a Serve config's
    ``deployments`` entries override both."""
    settings = validate_config(ServeAppArgs, args)
    defaults = ServeDeployments()
    tiny = ModelSourceConfig(source=f"{PRESET_PREFIX}tiny").model_dump()
    jobs = AnimationJobs.bind(settings.limits.model_dump())
    model = AVSyncDModel.options(**deployment_options(defaults.model), user_config=tiny).bind(settings.model_dump(mode="json"), jobs)
    scorer = SyncScorer.options(**deployment_options(defaults.sync_score), user_config=tiny).bind(settings.limits.model_dump()) if settings.sync_score else None
    ingress = AnimationIngress.options(**deployment_options(defaults.ingress, settings.limits.retry_after_s))
    return ingress.bind(settings.model_dump(mode="json"), model, jobs, scorer)


def app_args(config: ServeConfig) -> dict:
    return {**config.model_dump(mode="json", include=set(ServeAppArgs.model_fields)), "sync_score": config.sync_classifier.source is not None}


def deploy_config(config: ServeConfig) -> dict:
    """The Serve config (``ServeDeploySchema``) of ``config``: what ``avsync serve`` deploys and prints."""
    deployments = [
        {"name": INGRESS, **deployment_options(config.deployments.ingress, config.limits.retry_after_s)},
        {"name": MODEL, **deployment_options(config.deployments.model), "user_config": config.model.model_dump(mode="json")},
    ]
    if config.sync_classifier.source is not None:
        deployments.append({"name": SCORER, **deployment_options(config.deployments.sync_score), "user_config": config.sync_classifier.model_dump(mode="json")})
    return {
        "http_options": config.http.model_dump(mode="json"),
        "applications": [{"name": config.name, "route_prefix": "/", "import_path": BUILDER, "args": app_args(config), "deployments": deployments}],
    }


def check_local_sources(config: ServeConfig) -> None:
    """Fail before deploying when a model folder this machine should have is missing."""
    from avsync_ray.pipelines.loading import check_pipeline_folder

    source = config.model.source
    if not (is_registry_uri(source) or source.startswith(PRESET_PREFIX)):
        try:
            check_pipeline_folder(source)
        except FileNotFoundError as exc:
            raise ConfigError(f"model.source: {exc}") from None
    classifier = config.sync_classifier.source
    if classifier and not (is_registry_uri(classifier) or classifier.startswith(PRESET_PREFIX)) and not os.path.isdir(classifier):
        raise ConfigError(f"sync_classifier.source: {classifier} is not a folder (a SyncClassifier export or the official modules/ folder)")


def deploy(serve_config: dict, timeout_s: float = 600.0) -> None:
    """Deploy a Serve config (``deploy_config``'s, or a file's) on the connected Ray as ``serve run CONFIG_FILE``
    does: declaratively, so a later change of a ``user_config`` is applied in place; waits until it runs."""
    from ray.serve._private import api as serve_private
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config)
    client = serve_private.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema)
    for application in schema.applications:
        wait_until_running(application.name, timeout_s)


def wait_until_running(name: str, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise ServeDeployError(f"Serve application {name!r} failed to deploy: {_last_line(status.message)}")
        time.sleep(0.5)
    raise ServeDeployError(f"Serve application {name!r} is not running after {timeout_s:g} s (status {status.status if status else 'missing'})")


def _last_line(message: str) -> str:
    """The error at the end of a replica's traceback (the whole message is in Serve's logs)."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def run_serve(config: ServeConfig) -> dict:
    """``avsync serve``: start (or join) Ray, deploy, print where it answers, and keep serving until Ctrl-C;
    returns what was served. Model folders and SQLite stores are already absolute (the config's path types)."""
    from ray import serve

    from avsync_ray.ray_runtime import init_ray

    if config.ray.address is None:
        check_local_sources(config)
    init_ray(config.ray)
    deploy(deploy_config(config))
    url = f"http://{config.http.host}:{config.http.port}"
    print(f"avsync serve: {config.name} at {url}/ (API docs {url}/docs); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        if config.ray.address is None:
            serve.shutdown()
        else:
            serve.delete(config.name)
    return {"application": config.name, "url": f"{url}/", "stopped": True}
