"""Per-frame cost of the DWPose pre-processing written in numpy (letterbox for the detector, the per-person crop
for the pose model), at common video sizes. When OpenCV happens to be importable, the same operations through
cv2.resize / cv2.warpAffine are timed in the same run as the baseline and the ratio is printed; the pack itself
never needs OpenCV. The ONNX models' own time is not measured here (it needs the real weights).

    python benchmarks/dwpose_preprocessing.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ipa_train.pose import dwpose  # noqa: E402

try:
    import cv2
except ImportError:
    cv2 = None


def best_ms(fn, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'frame':>10} {'letterbox ms':>13} {'crop ms':>8}" + ("  cv2 letterbox/crop ms  ratio" if cv2 else "  (OpenCV not installed: no baseline)"))
    for width, height in [(832, 480), (1280, 720), (1920, 1080)]:
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        box = [width * 0.3, height * 0.1, width * 0.6, height * 0.95]
        center, scale = dwpose.box_to_center_scale(box, 288 / 384)
        lb = best_ms(lambda: dwpose.letterbox(frame, (640, 640)))
        crop = best_ms(lambda: dwpose.crop_person(frame, center, scale, (288, 384)))
        line = f"{width}x{height:<5} {lb:13.2f} {crop:8.2f}"
        if cv2 is not None:
            r = min(640 / height, 640 / width)
            cv_lb = best_ms(lambda: cv2.resize(frame, (int(width * r), int(height * r)), interpolation=cv2.INTER_LINEAR))
            s = 288 / scale[0]
            matrix = np.array([[s, 0, 144 - s * center[0]], [0, s, 192 - s * center[1]]], np.float32)
            cv_crop = best_ms(lambda: cv2.warpAffine(frame, matrix, (288, 384), flags=cv2.INTER_LINEAR))
            line += f"  {cv_lb:8.2f} / {cv_crop:5.2f}     {(lb + crop) / (cv_lb + cv_crop):5.1f}x"
        print(line)


if __name__ == "__main__":
    main()
