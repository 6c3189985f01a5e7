"""Devices, dtypes and pipeline folders by the names configs use: one place, clear errors for what is missing."""

from __future__ import annotations

import json

import pytest
import torch

from avsync_ray.config.base import ActorConfig, ConfigError, load_config
from avsync_ray.config.train import PrecomputeConfig
from avsync_ray.devices import DeviceError, resolve_device, torch_dtype
from avsync_ray.pipelines.loading import NotAPipelineError, check_pipeline_folder, load_pipeline


def test_auto_is_cuda_only_for_a_process_that_has_a_gpu():
    assert resolve_device("auto", num_gpus=0) == torch.device("cpu")  # an actor without a GPU never takes one
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device("auto", num_gpus=1).type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_names_the_choice():
    with pytest.raises(DeviceError, match="device='cuda' needs a CUDA GPU.*device=cpu"):
        resolve_device("cuda")


def test_bad_device_and_dtype_names_are_clear_errors():
    with pytest.raises(DeviceError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(DeviceError, match="unknown dtype 'fp8'"):
        torch_dtype("fp8")
    assert torch_dtype("bfloat16") is torch.bfloat16


def test_actor_placement_takes_a_count_or_a_range():
    assert ActorConfig(concurrency=[1, 4]).concurrency == (1, 4)
    for bad in (0, [3, 2], [0, 2]):
        with pytest.raises(ValueError, match="concurrency"):
            ActorConfig(concurrency=bad)


def test_precompute_actors_run_in_the_training_precision():
    with pytest.raises(ConfigError, match="actor.dtype.*model.frozen_dtype"):
        load_config(PrecomputeConfig, "precompute-tiny", overrides=["actor.dtype=bfloat16"], values={"input.root": "x", "output": "y"})


def test_pipeline_folders_are_checked_before_loading(tmp_path, tiny_model_dir):
    with pytest.raises(NotAPipelineError, match="does not exist"):
        check_pipeline_folder(tmp_path / "missing")
    with pytest.raises(NotAPipelineError, match="has no model_index.json"):
        check_pipeline_folder(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(NotAPipelineError, match="holds a StableDiffusionPipeline"):
        check_pipeline_folder(tmp_path)
    pipe = load_pipeline(tiny_model_dir, device="cpu", dtype="float32")
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
