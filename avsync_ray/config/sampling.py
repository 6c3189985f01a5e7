"""How a clip is sampled (every generating command: generate, eval, serve, the MLflow model) and ``avsync generate``'s config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from avsync_ray.config.base import DType, PixelSize, StrictModel

SchedulerName = Literal["pndm", "ddim", "dpmpp-2m", "dpmpp-2m-karras", "euler"]  # avsync_ray.pipelines.schedulers


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]  # torch.compile's modes


class SamplingConfig(StrictModel):
    """How a clip is sampled: the fields every generating command shares (and ``avsync eval`` can sweep)."""

    scheduler: SchedulerName = Field("pndm", description="sampler: pndm (the official one), ddim, dpmpp-2m, dpmpp-2m-karras, euler")
    num_inference_steps: int = Field(50, ge=1, description="denoising steps (PNDM 50 = 51 UNet calls, as the official release)")
    guidance_scale: float = Field(1.0, description="text guidance; off at 1.0 as in the official release")
    audio_guidance_scale: float = Field(4.0, description="audio classifier-free guidance (1, 4 or 8 in the paper)")
    seed: int = Field(123, description="noise seed")
    num_frames: int = Field(12, ge=2, description="frames per clip (frame 0 is the input image)")
    fps: float = Field(6.0, gt=0, description="frame rate: clips last num_frames / fps seconds")
    height: PixelSize | None = Field(None, description="output size (None: the model's own, from its training config, else 256)")
    width: PixelSize | None = Field(None, description="output width (None: the model's own, from its training config, else 256)")
    compile: bool = Field(False, description="torch.compile the UNet and VAE decoder (the first call at each shape compiles, for minutes)")
    compile_mode: CompileMode = Field("reduce-overhead", description="torch.compile mode; reduce-overhead adds CUDA graphs on a GPU")
    official_inplace_step: bool = Field(
        False, description="reproduce the official loop's in-place PNDM step exactly (see AVSyncDPipeline.__call__)"
    )


class InputLimits(StrictModel):
    """Bounds on the conditioning inputs (image, audio, video) of every generating command: checked on the
    header before decoding, and again on what is decoded (see :mod:`avsync_ray.conditioning`)."""

    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest image, width x height")
    max_video_pixels: int = Field(4096 * 2160, ge=1, description="largest video frame, width x height")
    min_audio_s: float = Field(0.0, ge=0, description="shortest audio (the mel front end needs 0.025 s in any case)")
    max_audio_s: float = Field(600.0, gt=0, description="longest audio file; the model hears its centred 2 s")
    max_video_s: float = Field(3600.0, gt=0, description="longest video")

    @model_validator(mode="after")
    def _audio_range(self):
        if self.min_audio_s >= self.max_audio_s:
            raise ValueError(f"min_audio_s ({self.min_audio_s}) must be below max_audio_s ({self.max_audio_s})")
        return self


class PairConfig(StrictModel):
    """``avsync metric``: the bounds on the files of the pair it scores (the generating commands' defaults)."""

    limits: InputLimits = Field(InputLimits(), description="bounds on the audio and video files")


class GenerateConfig(SamplingConfig):
    """``avsync generate``: sampling settings (defaults are the official demo's) and where the model runs."""

    limits: InputLimits = Field(InputLimits(), description="bounds on the image, audio and video inputs")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: DType = "float32"
