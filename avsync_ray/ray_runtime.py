"""Start or join Ray the same way from every command that uses it (curate, train, eval-sync, precompute, ...).

Output a person can follow: unless ``ray.verbose`` (or ``avsync --debug``), Ray's own driver logs are limited
to warnings and known harmless, repeated warnings of Ray internals are silenced in every worker; Ray Data's
progress bars and Ray's colour codes are only used when the output is a terminal.
"""

from __future__ import annotations

import logging
import os
import sys

from avsync_ray.config.base import RayConfig

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


def is_verbose(config: RayConfig) -> bool:
    return config.verbose or os.environ.get(VERBOSE_ENV_VAR) == "1"


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
        # Without an address, never attach to another Ray that happens to run on this machine; inside a Ray Job
        # (RAY_ADDRESS set by the job's cluster) join that cluster.
        address = config.address or (None if os.environ.get("RAY_ADDRESS") else "local")
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
