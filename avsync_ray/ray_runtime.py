"""Start or join Ray the same way from every command that uses it (curate, train, eval-sync, precompute, ...), and
check there that the cluster can give the resources a job asks for.

Output a person can follow: unless ``ray.verbose`` (or ``avsync --debug``), Ray's own driver logs are limited
to warnings and known harmless, repeated warnings of Ray internals are silenced in every worker; Ray Data's
progress bars and Ray's colour codes are only used when the output is a terminal.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass

from avsync_ray.config.base import ActorConfig, RayConfig
from avsync_ray.errors import InputError

logger = logging.getLogger(__name__)

VERBOSE_ENV_VAR = "AVSYNC_RAY_VERBOSE"
# Ray internals' log lines a person following a run does not need, and the level they are cut at: Ray Train's
# placement-group cleaner warns once a second without the dashboard (whose State API it polls); Ray Train narrates
# every resource request and checkpoint report (this project logs its own steps and checkpoints): this level holds
# in the driver, while in its controller and workers Train resets its loggers, so the launcher sets its
# LoggingConfig instead; Ray Data says it was told to hide its progress bars.
NOISY_RAY_LOGGERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.train": logging.WARNING,
    "ray.data": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,
}


# A line Ray's C++ core worker prints for every actor of Ray's own with its constructor arguments in the object
# store (every Ray Data actor pool, Ray Train's controller: ray-project/ray#53727). The driver drops the lines its
# workers forward that match RAY_DEDUP_LOGS_SKIP_REGEX, read when Ray is imported; the driver's own core worker
# writes the line straight to its stderr, out of Python's reach.
NOISY_WORKER_LINES = r"has constructor arguments in the object store and max_restarts > 0"


def skip_noisy_worker_lines() -> None:
    """Before Ray is imported by a command that is not verbose: forwarded worker lines matching
    :data:`NOISY_WORKER_LINES` are not printed."""
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", NOISY_WORKER_LINES)


def _train_report_logger() -> str:
    """Ray Train's workers narrate every report at INFO under a logger named by its file's path (not under
    ``ray.train``, so Train's own log level does not reach it)."""
    import ray

    return os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")


def quiet_ray_internals() -> None:
    """Every Ray worker's setup hook (``runtime_env.worker_process_setup_hook``), and the driver's, when not
    verbose."""
    for name, level in {**NOISY_RAY_LOGGERS, _train_report_logger(): logging.WARNING}.items():
        logging.getLogger(name).setLevel(level)


ARROW_POOL_ENV_VAR = "ARROW_DEFAULT_MEMORY_POOL"


def use_system_arrow_pool() -> None:
    """Give this (driver) process's Arrow memory to the C library's malloc instead of Arrow's default pool
    (mimalloc), which keeps much of what each step freed: a curate driver's memory grew with the corpus by the
    largest tables of its steps (listing, finalize) though what it held at the end did not. Arrow reads the choice
    once, when pyarrow loads, so this is called before anything imports it, and does nothing after (or when the
    user chose a pool). The variable is then removed again: a local Ray's workers would inherit it, and they keep
    Arrow's default, as on a cluster."""
    if "pyarrow" in sys.modules or ARROW_POOL_ENV_VAR in os.environ:
        return
    os.environ[ARROW_POOL_ENV_VAR] = "system"
    try:
        import pyarrow

        pyarrow.default_memory_pool()
    finally:
        del os.environ[ARROW_POOL_ENV_VAR]


def is_verbose(config: RayConfig) -> bool:
    return config.verbose or os.environ.get(VERBOSE_ENV_VAR) == "1"


def starts_local_ray(config: RayConfig) -> bool:
    """Whether :func:`init_ray` starts a Ray on this machine: without an address it never attaches to another Ray
    that happens to run here, but inside a Ray Job (RAY_ADDRESS set by the job's cluster) it joins that cluster."""
    return config.address is None and not os.environ.get("RAY_ADDRESS")


def init_ray(config: RayConfig) -> None:
    """Join ``config.address`` (or the cluster a Ray Job runs in) or start a local Ray just for this command,
    its workers with this process's storage credentials; then apply the output settings above."""
    import ray
    import ray.data

    verbose = is_verbose(config)
    terminal = sys.stderr.isatty()
    if not terminal:
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI codes in logs and captured output
    if not ray.is_initialized():
        runtime_env: dict = {}
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FSSPEC_", "GOOGLE_"))}
        if env:
            runtime_env["env_vars"] = env
        if not verbose:
            runtime_env["worker_process_setup_hook"] = f"{__name__}.quiet_ray_internals"
        address = "local" if starts_local_ray(config) else config.address
        kwargs = dict(address=address, runtime_env=runtime_env or None, include_dashboard=False)
        if address == "local" and config.num_cpus:
            kwargs["num_cpus"] = config.num_cpus
        if not verbose:
            kwargs["logging_level"] = logging.WARNING
        ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    if not verbose:
        quiet_ray_internals()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = terminal if config.progress_bars is None else config.progress_bars
    if not verbose:  # a 15-line note every 30 s that an actor's process uses more memory than the Ray resources it reserved
        context.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1


# ------------------------------------------------------------------------------------------------ resources


@dataclass(frozen=True)
class ResourceRequest:
    """What one part of a job needs at once: ``units`` alike bundles (an actor, a training worker; each on one
    node) of ``per_unit`` Ray resources, and the config settings that ask for them (for the message)."""

    unit: str  # what one bundle is: "actor", "training worker"
    per_unit: dict[str, float]  # Ray resource -> amount per unit (0: its node must have some, e.g. device=cuda)
    fields: dict[str, str]  # Ray resource -> the setting that asks for it, e.g. "generate_actor.num_gpus=1"
    units: int = 1
    units_field: str = ""  # the setting that asks for ``units``, e.g. "scaling.num_workers=2"


def actor_request(name: str, actor: ActorConfig) -> ResourceRequest:
    """The pool of the actor config field ``name``: one actor must fit (Ray Data runs a pool with the actors that
    start); an actor on a CUDA device needs a node with a GPU even when it reserves none."""
    per_unit = {"CPU": actor.num_cpus}
    fields = {"CPU": f"{name}.num_cpus={actor.num_cpus:g}"}
    if actor.num_gpus or actor.device.startswith("cuda"):  # ('auto' without a GPU is the CPU)
        per_unit["GPU"] = actor.num_gpus
        fields["GPU"] = f"{name}.num_gpus={actor.num_gpus:g}" if actor.num_gpus else f"{name}.device={actor.device}"
    return ResourceRequest("actor", per_unit, fields)


_UNBOUNDED = 1 << 30


def _units_on(node: dict[str, float], per_unit: dict[str, float]) -> int:
    """How many bundles of ``per_unit`` fit a node with these total resources."""
    counts = [math.floor(node.get(name, 0.0) / amount + 1e-9) if amount else (_UNBOUNDED if node.get(name, 0.0) > 0 else 0)
              for name, amount in per_unit.items()]  # fmt: skip
    return min(counts, default=_UNBOUNDED)


def shortfall(request: ResourceRequest, nodes: list[dict[str, float]]) -> str | None:
    """Why ``request`` can never be placed on nodes with these total resources (None: it can), naming the setting."""
    fitting = sum(_units_on(node, request.per_unit) for node in nodes)
    if fitting >= request.units:
        return None
    for name, amount in request.per_unit.items():
        most = max((node.get(name, 0.0) for node in nodes), default=0.0)
        if amount and most + 1e-9 < amount:
            has = f"no node of this Ray cluster has that many (at most {most:g})" if most else f"this Ray cluster has no {name}"
            return f"{request.fields[name]}: each {request.unit} needs {amount:g} {name}, and {has}"
        if not amount and not most:
            return f"{request.fields[name]}: needs a node with a {name}, and this Ray cluster has none"
    if not fitting:
        return f"{', '.join(request.fields[n] for n in request.per_unit)}: no node of this Ray cluster has all of them at once"
    bundle = ", ".join(f"{amount:g} {name}" for name, amount in request.per_unit.items() if amount)
    return f"{request.units_field}: {request.units} {request.unit}s of {bundle} must run at once, and this Ray cluster fits {fitting}"


def _cluster_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def _node_types() -> list[tuple[dict[str, float], int]] | None:
    """The (resources, most nodes; -1: unbounded) of each node type the cluster's autoscaler may add, as Ray
    publishes them (Ray Data reads the same); None where nothing is published (no autoscaler, or not known)."""
    try:
        import ray._private.state

        cluster = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - e.g. through Ray Client: not known
        return None
    if not cluster or not cluster.node_group_configs:
        return None
    return [(dict(group.resources), group.max_count) for group in cluster.node_group_configs if group.max_count != 0]


def _started_here() -> bool:
    """Whether this process started the Ray it uses (a local Ray: no autoscaler can add nodes to it)."""
    import ray._private.worker

    return bool(getattr(ray._private.worker._global_node, "head", False))


def require_resources(requests: list[ResourceRequest], config: RayConfig) -> None:
    """Refuse a job at start, in one line naming the setting, when the Ray cluster cannot give what it asks for
    (which would otherwise wait forever): at once on a Ray this command started (it cannot grow) or when no node
    type of the cluster's autoscaler has it; otherwise ask the autoscaler for it and wait up to
    ``ray.resource_wait_s``."""
    import ray.autoscaler.sdk

    problems = [p for p in (shortfall(r, _cluster_nodes()) for r in requests) if p]
    if not problems:
        return
    if _started_here():
        raise InputError("; ".join(problems) + " (this command's own local Ray cannot grow: set ray.address to join a cluster that has them)")
    node_types = _node_types()
    if node_types is not None:
        most_units = max(r.units for r in requests)
        largest = _cluster_nodes() + [resources for resources, count in node_types for _ in range(count if count > 0 else most_units)]
        never = [p for p in (shortfall(r, largest) for r in requests) if p]
        if never:
            raise InputError("; ".join(never) + " (nor any node type its autoscaler can add)")
    wait = config.resource_wait_s
    logger.warning("waiting up to %g s (ray.resource_wait_s) for the cluster to add nodes: %s", wait, "; ".join(problems))
    bundles = [{name: amount for name, amount in r.per_unit.items() if amount} for r in requests for _ in range(r.units)]
    ray.autoscaler.sdk.request_resources(bundles=bundles)
    try:
        deadline = time.monotonic() + wait
        while problems and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            problems = [p for p in (shortfall(r, _cluster_nodes()) for r in requests) if p]
    finally:
        ray.autoscaler.sdk.request_resources(bundles=[])  # the job's own demand keeps the nodes from now on
    if problems:
        raise InputError("; ".join(problems) + f" (still, after waiting {wait:g} s: ray.resource_wait_s)")
