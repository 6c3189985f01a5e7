"""AVSyncD image + audio (+ class prompt) -> video, as a diffusers ``DiffusionPipeline``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, PNDMScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from transformers import CLIPTextModel, CLIPTokenizer

from avsync_ray.media.audio import DEFAULT_MEL, center_crop, resample, to_mono, waveform_to_mel
from avsync_ray.models.audio_encoder import ImageBindAudioEncoder
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from avsync_ray.media import decode, encode_mp4
        >>> from avsync_ray.pipelines import AVSyncDPipeline

        >>> pipe = AVSyncDPipeline.from_pretrained("path/to/avsyncd-avsync15")
        >>> clip = decode("lion.mp4", fps=6, start=0.0, end=2.0, size=(256, 256))
        >>> out = pipe(image=clip.frames[0], audio=clip.audio, prompt="lions roaring",
        ...            generator=torch.Generator().manual_seed(123))
        >>> encode_mp4((out.frames[0] * 255).round().astype("uint8"), 6, out.audio[0], 16000, "lion_animated.mp4")
        ```
"""


@dataclass
class AVSyncDPipelineOutput(BaseOutput):
    """``frames``: per ``output_type`` — np (b, f, h, w, 3) in [0, 1], pt (b, f, 3, h, w), pil (list of lists) or
    latent (b, 4, f, h/8, w/8). ``audio``: (b, samples) the 16 kHz mono conditioning clip, for muxing."""

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]
    audio: np.ndarray


@dataclass
class CompiledModules:
    """``torch.compile`` wrappers of a pipeline's UNet and VAE decoder, with the settings and modules they wrap."""

    mode: str
    backend: str
    unet_module: torch.nn.Module
    vae_module: torch.nn.Module
    unet: Callable
    vae_decode: Callable

    def wraps(self, pipe: "AVSyncDPipeline") -> bool:
        return self.unet_module is pipe.unet and self.vae_module is pipe.vae


class AVSyncDPipeline(DiffusionPipeline):
    r"""Animate an image with an audio clip (AVSyncD, ECCV 2024).

    The first frame is the clean VAE latent of ``image``; it is kept outside the scheduler's math, so any
    diffusers scheduler works (PNDM by default, as in the official release). Text and audio guidance branches
    run as one batched UNet call; any batch size works.

    Components: ``vae`` (SD1.5 ``AutoencoderKL``), ``text_encoder``/``tokenizer`` (SD1.5 CLIP-L; optional when
    ``prompt_embeds`` are passed), ``unet`` (:class:`AVSyncDUNet3DModel`), ``audio_encoder``
    (:class:`ImageBindAudioEncoder`) and ``scheduler``.
    """

    model_cpu_offload_seq = "text_encoder->audio_encoder->unet->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "audio_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: AVSyncDUNet3DModel,
        audio_encoder: ImageBindAudioEncoder,
        scheduler: SchedulerMixin,
        text_encoder: CLIPTextModel | None = None,
        tokenizer: CLIPTokenizer | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, unet=unet, audio_encoder=audio_encoder, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor)
        self._compiled: CompiledModules | None = None
        self._use_compiled = False

    @classmethod
    def from_stable_diffusion(
        cls,
        sd15_dir: str | Path,
        unet: AVSyncDUNet3DModel,
        audio_encoder: ImageBindAudioEncoder,
        scheduler: SchedulerMixin | None = None,
        dtype: torch.dtype | None = None,
    ) -> "AVSyncDPipeline":
        """Assemble a pipeline from a local SD1.5 diffusers folder (``vae/``, ``text_encoder/``, ``tokenizer/``,
        ``scheduler/``) plus an AVSyncD UNet and audio encoder. Nothing is downloaded."""
        sd15_dir = Path(sd15_dir)
        for sub in ("vae", "text_encoder", "tokenizer", "scheduler"):
            if not (sd15_dir / sub).is_dir():
                raise FileNotFoundError(f"{sd15_dir} is not a Stable Diffusion 1.5 diffusers folder: {sub}/ is missing")
        kwargs = dict(local_files_only=True, dtype=dtype)
        return cls(
            vae=AutoencoderKL.from_pretrained(sd15_dir / "vae", **kwargs),
            text_encoder=CLIPTextModel.from_pretrained(sd15_dir / "text_encoder", **kwargs),
            tokenizer=CLIPTokenizer.from_pretrained(sd15_dir / "tokenizer", local_files_only=True),
            unet=unet,
            audio_encoder=audio_encoder,
            scheduler=scheduler or PNDMScheduler.from_pretrained(sd15_dir / "scheduler", local_files_only=True),
        )

    # ------------------------------------------------------------------------------------------ properties

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def audio_guidance_scale(self) -> float:
        return self._audio_guidance_scale

    @property
    def do_text_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def do_audio_guidance(self) -> bool:
        return self._audio_guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ------------------------------------------------------------------------------------------ compilation

    def enable_torch_compile(self, mode: str = "reduce-overhead", backend: str = "inductor") -> None:
        """Run the UNet and the VAE decoder through ``torch.compile``, each as one graph (no graph breaks).

        ``mode="reduce-overhead"`` adds CUDA graphs on a GPU (a CPU runs it as ``"default"``). Shapes are static:
        the first call at each input shape (batch x guidance branches, frames, size) compiles, later calls replay.
        Inductor's layout optimisation runs the convolutions channels-last where its heuristics expect a gain
        (on CPUs always). The modules themselves are not changed: :meth:`disable_torch_compile` returns to them,
        and the compiled graphs are kept for a later enable with the same settings. ``backend`` is torch.compile's
        (``"eager"`` only traces: a quick check that the model compiles as one graph)."""
        compiled = self._compiled
        if compiled is None or (compiled.mode, compiled.backend) != (mode, backend) or not compiled.wraps(self):
            options = dict(backend=backend, fullgraph=True, dynamic=False, **({"mode": mode} if backend == "inductor" else {}))
            self._compiled = CompiledModules(mode, backend, self.unet, self.vae, torch.compile(self.unet, **options),
                                             torch.compile(self.vae.decode, **options))  # fmt: skip
        self._use_compiled = True

    def disable_torch_compile(self) -> None:
        """Back to the eager UNet and VAE decoder: outputs bit-identical to a pipeline never compiled."""
        self._use_compiled = False

    @property
    def torch_compile_mode(self) -> str | None:
        """The ``torch.compile`` mode in use, or None when the pipeline runs eagerly."""
        return self._compiled.mode if self._use_compiled else None

    def _denoiser_and_decoder(self) -> tuple[Callable, Callable]:
        """The UNet and ``vae.decode`` to call: compiled when compilation is on, else the modules' own."""
        if not self._use_compiled:
            return self.unet, self.vae.decode
        if not self._compiled.wraps(self):
            raise RuntimeError("the pipeline's unet or vae was replaced after enable_torch_compile(); call it again")
        return self._compiled.unet, self._compiled.vae_decode

    # ------------------------------------------------------------------------------------------ conditions

    def encode_prompt(self, prompt: list[str], device: torch.device) -> torch.Tensor:
        """CLIP ``last_hidden_state`` of max-length-padded prompts, (b, 77, d): SD1.5's text path."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text_encoder/tokenizer: pass prompt_embeds (and negative_prompt_embeds)")
        tokens = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def prepare_audio(self, audio, audio_sample_rate: int, batch_size: int) -> torch.Tensor:
        """Waveform(s) -> (b, samples) 16 kHz mono centre clips, the audio the model hears."""
        waveforms = audio if isinstance(audio, (list, tuple)) else [audio]
        if len(waveforms) == 1 and batch_size > 1:
            waveforms = waveforms * batch_size
        if len(waveforms) != batch_size:
            raise ValueError(f"got {len(waveforms)} audio clips for a batch of {batch_size}")
        clips = [center_crop(resample(to_mono(w), audio_sample_rate, DEFAULT_MEL.sample_rate), DEFAULT_MEL.clip_samples) for w in waveforms]
        if len({clip.shape[-1] for clip in clips}) != 1:
            raise ValueError("all audio clips of a batch must have the same length after resampling")
        return torch.stack(clips)

    def encode_audio(self, clips: torch.Tensor, num_frames: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, samples) -> ImageBind tokens (b, L, d) and per-frame segment masks (b, num_frames, L)."""
        mels = waveform_to_mel(clips, DEFAULT_MEL.sample_rate).to(device=device, dtype=self.audio_encoder.dtype)
        encoded = self.audio_encoder(mels, num_segments=num_frames)
        return encoded.audio_encodings.to(dtype), encoded.audio_segment_masks

    def encode_image(self, image: torch.Tensor, generator, device) -> torch.Tensor:
        """Preprocessed image(s) in [-1, 1] -> clean first-frame latents (b, c, h/8, w/8), sampled with ``generator``."""
        image = image.to(device=device, dtype=self.vae.dtype)
        if isinstance(generator, list):
            latents = [retrieve_latents(self.vae.encode(image[i : i + 1]), generator[i]) for i in range(image.shape[0])]
            latents = torch.cat(latents)
        else:
            latents = retrieve_latents(self.vae.encode(image), generator)
        return latents * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        """(b, c, f, h, w) latents -> (b, 3, f, H, W) video in [-1, 1], decoded frame by frame."""
        batch, channels, num_frames, height, width = latents.shape
        flat = latents.transpose(1, 2).reshape(batch * num_frames, channels, height, width) / self.vae.config.scaling_factor
        decode = self._denoiser_and_decoder()[1]
        images = torch.cat([decode(chunk.to(self.vae.dtype)).sample for chunk in flat.split(decode_chunk_size)])
        return images.reshape(batch, num_frames, *images.shape[1:]).transpose(1, 2).float()

    def _extra_step_kwargs(self, generator, eta: float) -> dict:
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in parameters:
            kwargs["eta"] = eta
        if "generator" in parameters:
            kwargs["generator"] = generator
        return kwargs

    # ------------------------------------------------------------------------------------------ call

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        audio: np.ndarray | torch.Tensor | list | None = None,
        audio_sample_rate: int = 16_000,
        prompt: str | list[str] | None = None,
        num_frames: int = 12,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        audio_guidance_scale: float = 4.0,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        decode_chunk_size: int = 16,
        official_inplace_step: bool = False,
        null_audio: bool = False,
    ) -> AVSyncDPipelineOutput | tuple:
        r"""Generate ``num_frames`` frames that animate ``image`` in sync with ``audio``.

        Args:
            image: the first frame (PIL, (h, w, 3) uint8 array, tensor in [0, 1], or a list for a batch). Its size
                sets ``height``/``width`` unless given. Optional when ``latents`` are given (frame 0 comes from them).
            audio: waveform (``(samples,)`` or ``(channels, samples)``), or a list for a batch; the centre
                2 s are used (at ``audio_sample_rate``, resampled to 16 kHz mono).
            prompt / prompt_embeds: the class prompt (e.g. "lions roaring") or its CLIP embeddings (b, 77, d).
            guidance_scale: text guidance (off at 1.0, the AVSyncD default); negative prompt / embeds apply then.
            audio_guidance_scale: audio classifier-free guidance against the null audio (4.0; off at <= 1.0).
            latents: the complete initial latents (b, 4, num_frames, h/8, w/8) with the clean image latent as
                frame 0 and the initial noise (already scaled) as frames 1..; drawn from ``generator`` otherwise.
            output_type: "np", "pt", "pil" or "latent".
            callback_on_step_end: ``fn(pipe, step, timestep, callback_kwargs) -> dict``; may replace
                ``latents`` (the full video latents, frame 0 included).
            official_inplace_step: step frames 1.. in place inside the video latents, as the official loop
                does. PNDM keeps a reference to the sample of its first step and re-reads it in the second
                (warm-up) step; writing in place overwrites it, so the official warm-up step starts from the
                wrong sample. Off (the correct PNDM) by default; on only to reproduce the official outputs and
                published numbers exactly. Other schedulers are unaffected.
            null_audio: condition on the null audio (the encoding the audio drop of training feeds) instead of
                ``audio``, with audio guidance off: the model without its audio, to measure what the audio buys.
                ``audio`` is still prepared and returned (for muxing).

        Examples:

        Returns:
            :class:`AVSyncDPipelineOutput`, or ``(frames, audio)`` when ``return_dict`` is False.
        """
        # 1. Check inputs and batch size
        if audio is None:
            raise ValueError("audio is required")
        if image is None and latents is None:
            raise ValueError("pass image (the first frame) or complete initial latents")
        if not set(callback_on_step_end_tensor_inputs) <= set(self._callback_tensor_inputs):
            raise ValueError(f"callback tensors must be among {self._callback_tensor_inputs}")
        if num_frames < 2:
            raise ValueError("num_frames must be at least 2 (frame 0 is the input image)")
        self._guidance_scale, self._audio_guidance_scale = guidance_scale, 1.0 if null_audio else audio_guidance_scale
        device = self._execution_device
        dtype = self.unet.dtype
        if latents is not None:
            batch_size = latents.shape[0]
        elif isinstance(image, list):
            batch_size = len(image)
        elif isinstance(image, torch.Tensor) and image.ndim == 4 or isinstance(image, np.ndarray) and image.ndim == 4:
            batch_size = image.shape[0]
        else:
            batch_size = 1
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}")

        # 2. Text condition (b, 77, d) and, for text guidance, the negative one
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass prompt or prompt_embeds")
            prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
            if len(prompts) != batch_size:
                raise ValueError(f"got {len(prompts)} prompts for a batch of {batch_size}")
            prompt_embeds = self.encode_prompt(prompts, device)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).expand(batch_size, -1, -1)
        if self.do_text_guidance:
            if negative_prompt_embeds is None:
                negatives = negative_prompt or ""
                negatives = [negatives] * batch_size if isinstance(negatives, str) else list(negatives)
                negative_prompt_embeds = self.encode_prompt(negatives, device)
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype).expand(batch_size, -1, -1)

        # 3. Audio condition (b, L, d) + segment masks; the null audio is cached by the encoder
        audio_clips = self.prepare_audio(audio, audio_sample_rate, batch_size)
        audio_embeds, audio_masks = self.encode_audio(audio_clips, num_frames, device, dtype)
        null_audio_embeds = self.audio_encoder.null_audio_encodings(device, dtype).expand_as(audio_embeds)
        if null_audio:
            audio_embeds = null_audio_embeds

        # 4. Guidance branches, batched into one UNet call: [text-uncond?, audio-uncond?, full]
        text_branches, audio_branches = [prompt_embeds], [audio_embeds]
        if self.do_audio_guidance:
            text_branches.insert(0, prompt_embeds)
            audio_branches.insert(0, null_audio_embeds)
        if self.do_text_guidance:
            text_branches.insert(0, negative_prompt_embeds)
            audio_branches.insert(0, null_audio_embeds if self.do_audio_guidance else audio_embeds)
        num_branches = len(text_branches)
        text_condition = torch.cat(text_branches)
        audio_condition = torch.cat(audio_branches)
        mask_condition = audio_masks.repeat(num_branches, 1, 1)

        # 5. Timesteps, then the initial latents: clean image latent (frame 0) + noise for frames 1.. (noise
        # drawn first), scaled by the scheduler's initial sigma for these timesteps (Euler's depends on them).
        # The scheduler works on host-side timesteps (its per-step scalar math then needs no device sync);
        # the UNet gets a device copy made once.
        self.scheduler.set_timesteps(num_inference_steps, device="cpu")
        timesteps = self.scheduler.timesteps
        unet_timesteps = timesteps.to(device)
        self._num_timesteps = len(timesteps)
        if latents is None:
            if isinstance(image, list):
                image = [np.asarray(i) if isinstance(i, PIL.Image.Image) else i for i in image]
            image = self.image_processor.preprocess(image, height=height, width=width)
            height, width = image.shape[-2:]
            shape = (batch_size, self.unet.config.in_channels, num_frames - 1, height // self.vae_scale_factor, width // self.vae_scale_factor)
            noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * self.scheduler.init_noise_sigma
            first = self.encode_image(image, generator, device).to(dtype).unsqueeze(2)
        else:
            if latents.shape[2] != num_frames:
                raise ValueError(f"latents have {latents.shape[2]} frames, num_frames is {num_frames}")
            latents = latents.to(device=device, dtype=dtype)
            first, noise = latents[:, :, :1], latents[:, :, 1:]

        # 6. Denoising loop: the scheduler only ever sees frames 1..
        unet = self._denoiser_and_decoder()[0]
        extra_step_kwargs = self._extra_step_kwargs(generator, eta)
        noisy = noise
        # The official loop writes each step into one video tensor (see ``official_inplace_step``).
        video = torch.cat([first, noisy], dim=2) if official_inplace_step else None
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([first, self.scheduler.scale_model_input(noisy, t)], dim=2)
                noise_pred = unet(
                    model_input.repeat(num_branches, 1, 1, 1, 1),
                    unet_timesteps[i],
                    encoder_hidden_states=text_condition,
                    audio_encoder_hidden_states=audio_condition,
                    audio_attention_mask=mask_condition,
                ).sample
                # A copy of frames 1..: schedulers keep past model outputs, and a CUDA-graph UNet reuses its
                # output buffer in the next step.
                model_output = self._combine_guidance(noise_pred.chunk(num_branches))[:, :, 1:].clone()
                if official_inplace_step:
                    video[:, :, 1:] = self.scheduler.step(model_output, t, video[:, :, 1:], **extra_step_kwargs).prev_sample
                    noisy = video[:, :, 1:]
                else:
                    noisy = self.scheduler.step(model_output, t, noisy, **extra_step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    tensors = {"latents": torch.cat([first, noisy], dim=2), "prompt_embeds": prompt_embeds, "audio_embeds": audio_embeds}
                    returned = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                    if "latents" in returned:
                        first, noisy = returned["latents"][:, :, :1], returned["latents"][:, :, 1:]
                        video = torch.cat([first, noisy], dim=2) if official_inplace_step else None
                progress_bar.update()

        # 7. Decode
        latents = torch.cat([first, noisy], dim=2)
        if output_type == "latent":
            frames = latents
        else:
            frames = self.video_processor.postprocess_video(self.decode_latents(latents, decode_chunk_size), output_type=output_type)
        self.maybe_free_model_hooks()
        audio_out = audio_clips.cpu().numpy()
        if not return_dict:
            return (frames, audio_out)
        return AVSyncDPipelineOutput(frames=frames, audio=audio_out)

    def _combine_guidance(self, branches: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Classifier-free guidance over the branch layout built in step 4 (official formulas)."""
        if self.do_text_guidance and self.do_audio_guidance:
            uncond, text, text_audio = branches
            return uncond + self.guidance_scale * (text - uncond) + self.audio_guidance_scale * (text_audio - text)
        if self.do_text_guidance:
            audio_only, text_audio = branches
            return audio_only + self.guidance_scale * (text_audio - audio_only)
        if self.do_audio_guidance:
            text, text_audio = branches
            return text + self.audio_guidance_scale * (text_audio - text)
        return branches[0]
