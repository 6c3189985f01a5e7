"""Start or join Ray the same way from every command that uses it (curate, train, eval-sync, precompute)."""

from __future__ import annotations

import os

from avsync_ray.config import RayConfig


def init_ray(config: RayConfig) -> None:
    """Join ``config.address`` or start a local Ray (its workers get this process's storage credentials), and
    apply the Ray Data progress-bar setting of this driver."""
    import ray
    import ray.data

    if not ray.is_initialized():
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FSSPEC_", "GOOGLE_"))}
        kwargs = dict(address=config.address, runtime_env={"env_vars": env} if env else None, include_dashboard=False)
        if config.address is None and config.num_cpus:
            kwargs["num_cpus"] = config.num_cpus
        ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    ray.data.DataContext.get_current().enable_progress_bars = config.progress_bars
