"""Shot boundaries with PySceneDetect's detectors, run on the frames curation has already decoded (so a
source video is decoded once for shots and scores together)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, ThresholdDetector
from scenedetect.common import FrameTimecode

from avsync_ray.config import ShotsConfig

logging.getLogger("pyscenedetect").setLevel(logging.WARNING)

_DETECTORS = {"content": ContentDetector, "adaptive": AdaptiveDetector, "threshold": ThresholdDetector}
_THRESHOLD_ARG = {"content": "threshold", "adaptive": "adaptive_threshold", "threshold": "threshold"}


def detect_shots(frames: np.ndarray, frame_times: np.ndarray, fps: float, duration: float, config: ShotsConfig) -> list[tuple[float, float]]:
    """(start, end) seconds of each shot, covering [0, duration]; a cut is at the timestamp of the first frame
    of the new shot (exact for variable frame rates too). ``frames`` are RGB (T, H, W, 3), every source frame;
    PySceneDetect works on downscaled frames anyway, so the decode's size is fine."""
    fps = float(fps)
    kwargs = {"min_scene_len": max(1, round(config.min_scene_len_s * fps))}
    if config.threshold is not None:
        kwargs[_THRESHOLD_ARG[config.detector]] = config.threshold
    detector = _DETECTORS[config.detector](**kwargs)
    cut_frames: list[int] = []
    for index, frame in enumerate(frames):
        cuts = detector.process_frame(FrameTimecode(index, fps), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cut_frames += [cut.frame_num for cut in cuts]
    cut_frames += [cut.frame_num for cut in detector.post_process(FrameTimecode(len(frames), fps))]
    cuts = sorted({round(float(frame_times[i]), 6) for i in cut_frames if 0 < i < len(frame_times)})
    bounds = [0.0, *[c for c in cuts if 0.0 < c < duration], duration]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
