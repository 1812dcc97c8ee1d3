"""Background hand scoring of whole datasets for the gallery: one job per dataset at a time, in a thread, with
progress and cancelling.

The pose detector comes from a ``DetectorSource``: ``check()`` says cheaply whether it can be built (raising
``DetectorUnavailable`` with what is missing and where to put it), ``load(use_gpu)`` builds it inside the job's
thread. ``dwpose_source`` makes one from DWPose's two ONNX files; ``nodes/gallery.py`` gives it ComfyUI's weight
folders, tests give it stand-in detectors. Nothing here imports ComfyUI.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .hand_scoring import PoseDetector, ScoringCancelled, score_dataset

log = logging.getLogger(__name__)

ACTIVE_STATES = ("starting", "running", "cancelling")
DEFAULT_MAX_FRAMES = 16  # preview frames per sample: enough to judge the hands, half the cost of all 32


class DetectorUnavailable(Exception):
    """The detector cannot be built here; ``str()`` says what is missing and where to put it."""

    def __init__(self, message: str, missing_files: Sequence[str] = (), install_dir: Optional[str] = None):
        super().__init__(message)
        self.missing_files = list(missing_files)
        self.install_dir = install_dir

    def to_dict(self) -> dict[str, Any]:
        return {"message": str(self), "missing_files": self.missing_files, "install_dir": self.install_dir}


@dataclass
class DetectorSource:
    check: Callable[[], None]  # raises DetectorUnavailable; file look-ups only, called on every status request
    load: Callable[[bool], PoseDetector]  # use_gpu -> detector; may take seconds (runs in the job's thread)


def dwpose_source(search_dirs: Callable[[], Sequence[os.PathLike | str]], install_dir: Callable[[], os.PathLike | str]) -> DetectorSource:
    """DWPose (``ipa_train.pose.dwpose``) on the first ``yolox_l.onnx`` / ``dw-ll_ucoco_384.onnx`` found in
    ``search_dirs()``. Sessions are kept while the files and the provider choice stay the same."""
    from ..pose import dwpose

    cache: dict[str, Any] = {}
    lock = threading.Lock()

    def find() -> tuple[Path, Path]:
        dirs = [Path(d) for d in search_dirs()]
        try:
            return dwpose.find_weights(dirs, install_dir=install_dir())
        except dwpose.DWPoseWeightsMissing as exc:
            missing = [name for name in dwpose.WEIGHT_FILES if not any((d / name).is_file() for d in dirs)]
            raise DetectorUnavailable(str(exc), missing, str(install_dir())) from None

    def check() -> None:
        find()

    def load(use_gpu: bool) -> PoseDetector:
        det_path, pose_path = find()
        # CPU unless asked: ComfyUI runs one prompt at a time on the GPU and this job runs beside it, so a second
        # CUDA user would take VRAM the sampler counts on (DWPose's sessions hold about 1 GB) and slow the prompt
        # down; on CPU the scoring is slower but never disturbs a running graph.
        providers = dwpose.select_providers() if use_gpu else ["CPUExecutionProvider"]
        key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in (det_path, pose_path)) + tuple(providers)
        with lock:
            if cache.get("key") != key:
                cache.clear()
                cache["estimator"] = dwpose.DWPoseEstimator(det_path, pose_path, providers=providers)
                cache["key"] = key
            estimator = cache["estimator"]

        def detect(frames: Sequence[np.ndarray]) -> list[dict]:
            # keypoint threshold 0: the hand score wants the real confidences (agreement applies its own 0.3)
            return dwpose.estimate_video(estimator, frames, detection_threshold=0.3, keypoint_threshold=0.0)

        return detect

    return DetectorSource(check, load)


@dataclass
class HandScoreJob:
    dataset: str
    rescore: bool
    use_gpu: bool
    state: str = "starting"  # starting (loading the detector), running, cancelling, done, cancelled, failed
    done: int = 0
    total: Optional[int] = None
    counts: dict[str, int] = field(default_factory=dict)
    error: Optional[str] = None
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "counts": dict(self.counts),
            "error": self.error,
            "rescore": self.rescore,
            "device": "gpu" if self.use_gpu else "cpu",
            "started": self.started,
            "finished": self.finished,
        }


class JobRunning(Exception):
    def __init__(self, job: HandScoreJob):
        super().__init__(f"hand scoring of {job.dataset} is already running ({job.done}/{job.total or '?'} done)")
        self.job = job


class HandScoreJobs:
    """The jobs of one server, keyed by dataset folder; the last job of each dataset is kept for its status."""

    def __init__(self, max_frames: int = DEFAULT_MAX_FRAMES):
        self._lock = threading.Lock()
        self._jobs: dict[str, HandScoreJob] = {}
        self._threads: dict[str, threading.Thread] = {}
        self.max_frames = max_frames

    def get(self, dataset_dir: Path) -> Optional[HandScoreJob]:
        with self._lock:
            return self._jobs.get(str(dataset_dir))

    def start(self, dataset_dir: Path, load_detector: Callable[[bool], PoseDetector], rescore: bool = False, use_gpu: bool = False) -> HandScoreJob:
        """Starts scoring ``dataset_dir`` in a thread; raises ``JobRunning`` when its previous job is active."""
        key = str(dataset_dir)
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and current.active:
                raise JobRunning(current)
            job = HandScoreJob(dataset=dataset_dir.name, rescore=rescore, use_gpu=use_gpu)
            thread = threading.Thread(
                target=self._run, args=(job, dataset_dir, load_detector), name=f"ipa-hand-score-{dataset_dir.name}", daemon=True
            )
            self._jobs[key] = job
            self._threads[key] = thread
        thread.start()
        return job

    def cancel(self, dataset_dir: Path) -> Optional[HandScoreJob]:
        """Asks the active job to stop (between frames); returns it, or ``None`` when nothing runs."""
        with self._lock:
            job = self._jobs.get(str(dataset_dir))
            if job is None or not job.active:
                return None
            job.cancel_event.set()
            job.state = "cancelling"
            return job

    def wait(self, dataset_dir: Path, timeout: Optional[float] = None) -> Optional[HandScoreJob]:
        with self._lock:
            thread = self._threads.get(str(dataset_dir))
        if thread is not None:
            thread.join(timeout)
        return self.get(dataset_dir)

    def _run(self, job: HandScoreJob, dataset_dir: Path, load_detector: Callable[[bool], PoseDetector]) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            detector = load_detector(job.use_gpu)

            def detect_cancellable(frames: Sequence[np.ndarray]) -> list[dict]:
                # One frame at a time so a cancel takes effect within a frame, not a whole sample (seconds on CPU).
                result = []
                for frame in frames:
                    if job.cancel_event.is_set():
                        raise ScoringCancelled()
                    result.extend(detector([frame]))
                return result

            if not job.cancel_event.is_set():
                with self._lock:
                    if job.state == "starting":
                        job.state = "running"
                job.counts = score_dataset(
                    dataset_dir, detect_cancellable, rescore=job.rescore, progress=progress,
                    cancelled=job.cancel_event.is_set, max_frames=self.max_frames,
                )  # fmt: skip
        except DetectorUnavailable as exc:
            job.error = str(exc)
        except Exception as exc:  # a job thread must record every failure, never die silently
            log.exception("IPA hand scoring of %s failed", dataset_dir.name)
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                job.finished = time.time()
                if job.error is not None:
                    job.state = "failed"
                elif job.cancel_event.is_set():
                    job.state = "cancelled"
                else:
                    job.state = "done"
