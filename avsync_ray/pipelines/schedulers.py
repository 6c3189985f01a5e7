"""The samplers a user can choose by name (``scheduler`` in ``generate``, ``eval``, ``serve``), each built from the
pipeline's own scheduler config (the SD1.5 noise schedule it was trained with), as diffusers users swap them."""

from __future__ import annotations

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

# name -> (scheduler class, settings over the base config); the names are config.SchedulerName's
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),  # the official sampler (PLMS steps only)
    # Latents are not in [-1, 1]: never clip the predicted clean sample (SD1.5's own scheduler config says so, but a
    # base config without the key, like the presets', would leave DDIM's default clip_sample=True).
    "ddim": (DDIMScheduler, {"clip_sample": False}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "euler": (EulerDiscreteScheduler, {}),
}


def make_scheduler(name: str, base_config):
    """Scheduler ``name`` on the noise schedule of ``base_config`` (a diffusers scheduler's ``config``)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    cls, settings = SCHEDULERS[name]
    return cls.from_config(base_config, **settings)


def scheduler_name(scheduler) -> str | None:
    """The name of a scheduler built by :func:`make_scheduler` (None for any other)."""
    for name, (cls, settings) in SCHEDULERS.items():
        if type(scheduler) is cls and all(scheduler.config.get(k) == v for k, v in settings.items()):
            return name
    return None
