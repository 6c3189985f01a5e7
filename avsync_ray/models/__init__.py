"""Models: the AVSyncD 3-D UNet, the ImageBind adapter and segment-mask audio encoder, and presets."""

from avsync_ray.models.audio_encoder import ImageBindAudioEncoder, ImageBindAudioEncoderOutput
from avsync_ray.models.unet_avsyncd import AVSyncDUNet3DModel, AVSyncDUNet3DOutput

__all__ = ["AVSyncDUNet3DModel", "AVSyncDUNet3DOutput", "ImageBindAudioEncoder", "ImageBindAudioEncoderOutput"]
