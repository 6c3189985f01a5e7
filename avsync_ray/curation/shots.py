"""Shot boundaries with PySceneDetect's detectors, fed the frames curation decodes, one at a time (so a source
video is decoded once for its shots and never held whole)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, ThresholdDetector
from scenedetect.common import FrameTimecode

from avsync_ray.config.curate import ShotsConfig

logging.getLogger("pyscenedetect").setLevel(logging.WARNING)

_DETECTORS = {"content": ContentDetector, "adaptive": AdaptiveDetector, "threshold": ThresholdDetector}
_THRESHOLD_ARG = {"content": "threshold", "adaptive": "adaptive_threshold", "threshold": "threshold"}


class ShotDetector:
    """Push every source frame in order (RGB, any size: PySceneDetect works on downscaled frames anyway), then
    :meth:`shots`; a cut is at the timestamp of the first frame of the new shot (exact for variable frame rates)."""

    def __init__(self, fps: float, config: ShotsConfig):
        self.fps = float(fps)
        kwargs = {"min_scene_len": max(1, round(config.min_scene_len_s * self.fps))}
        if config.threshold is not None:
            kwargs[_THRESHOLD_ARG[config.detector]] = config.threshold
        self.detector = _DETECTORS[config.detector](**kwargs)
        self.cut_frames: list[int] = []
        self.count = 0

    def push(self, frame: np.ndarray) -> None:
        cuts = self.detector.process_frame(FrameTimecode(self.count, self.fps), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.cut_frames += [cut.frame_num for cut in cuts]
        self.count += 1

    def shots(self, frame_times: np.ndarray, duration: float) -> list[tuple[float, float]]:
        """(start, end) seconds of each shot, covering [0, duration]; ``frame_times`` are the pushed frames' times."""
        cut_frames = self.cut_frames + [cut.frame_num for cut in self.detector.post_process(FrameTimecode(self.count, self.fps))]
        cuts = sorted({round(float(frame_times[i]), 6) for i in cut_frames if 0 < i < len(frame_times)})
        bounds = [0.0, *[c for c in cuts if 0.0 < c < duration], duration]
        return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

