"""Checks on a finished training run that several test modules make."""

from __future__ import annotations

import os

import torch

from avsync_ray.training.engine import read_checkpoint_meta


def optimizer_steps(checkpoint: str) -> int:
    """DeepSpeed's own count of optimizer steps, as saved in the checkpoint."""
    meta = read_checkpoint_meta(checkpoint)
    states = torch.load(os.path.join(checkpoint, meta["tag"], "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    return states["global_steps"]
