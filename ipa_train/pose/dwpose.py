"""DWPose whole-body pose estimation with onnxruntime, offline, on the two published ONNX files.

The person detector ``yolox_l.onnx`` (YOLOX-L, COCO, 640x640 letterbox input, raw ``[1, 8400, 85]`` head output)
finds people; the pose model ``dw-ll_ucoco_384.onnx`` (RTMPose-style SimCC head, 288x384 input) places the 133
COCO-WholeBody keypoints of each person. The pre- and post-processing reproduce what ComfyUI's DWPose
preprocessor (comfyui_controlnet_aux, after the DWPose authors' ONNX code) does, so the keypoints match it:

- detector: letterbox (scale to fit, top-left aligned, padded with grey 114), raw 0..255 RGB, YOLOX grid
  decoding, person class only, class-aware NMS at IoU 0.45;
- pose: each box grown by 1.25 and widened to 3:4, warped to 288x384, normalised with the ImageNet mean/std;
  SimCC decoding takes the arg-max bin / 2 and the smaller of the two axis maxima as the score;
- conversion to the 18-point OpenPose body (neck = mean of the shoulders) and the ``POSE_KEYPOINT`` dict that
  the preprocessor emits, except that real scores are written instead of 1.0.

Written here rather than taken from rtmlib (see the README's DWPose section): rtmlib needs both opencv-python
and opencv-contrib-python (GUI builds that clash with the opencv-python-headless many ComfyUI installs carry),
downloads a checkpoint whenever a path does not exist, keeps every COCO class as a "person" with this 80-class
detector and averages the SimCC axis scores, so its keypoints differ from the preprocessor's. What is needed is
a few hundred lines of numpy, with no OpenCV at all.

Nothing here imports ComfyUI; nothing is ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
WEIGHTS_PUBLISHED_AT = "https://huggingface.co/yzd-v/DWPose"
WEIGHT_FILES = (DETECTOR_FILE, POSE_FILE)

DETECTOR_PAD_VALUE = 114
DETECTOR_STRIDES = (8, 16, 32)
DETECTOR_NMS_IOU = 0.45
PERSON_CLASS = 0
POSE_BOX_PADDING = 1.25
POSE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
NUM_WHOLEBODY_POINTS = 133

# COCO-WholeBody -> OpenPose body order, after inserting the neck at index 17 (as DWPose does).
_MMPOSE_TO_OPENPOSE_SRC = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
_MMPOSE_TO_OPENPOSE_DST = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
# Slices of the 134-point array (133 + neck) that make up each OpenPose part.
BODY_SLICE = slice(0, 18)
FACE_SLICE = slice(24, 92)
LEFT_HAND_SLICE = slice(92, 113)
RIGHT_HAND_SLICE = slice(113, 134)
OPENPOSE_RIGHT_EYE, OPENPOSE_LEFT_EYE = 14, 15


class DWPoseWeightsMissing(FileNotFoundError):
    """One or both ONNX files were not found; the message says where to put them and where they come from."""


class DWPoseModelError(RuntimeError):
    """An ONNX file could not be loaded or does not have the expected inputs and outputs."""


# ----------------------------------------------------------------------------------------------- weights


def find_weights(search_dirs: Sequence[os.PathLike | str], install_dir: os.PathLike | str) -> tuple[Path, Path]:
    """Returns ``(detector_path, pose_path)``: the first ``dir/<file>`` that exists for each file.

    ``install_dir`` is only named in the error, as the place to put missing files."""
    dirs = [Path(d) for d in search_dirs]
    found: dict[str, Path] = {}
    for name in WEIGHT_FILES:
        for folder in dirs:
            candidate = folder / name
            if candidate.is_file():
                found[name] = candidate
                break
    missing = [name for name in WEIGHT_FILES if name not in found]
    if missing:
        searched = "\n".join(f"  - {d}" for d in dirs) or "  (no folders)"
        lines = [
            f"DWPose weights missing: {', '.join(missing)}. Nothing is downloaded automatically.",
            *(f"- {name}: put it in {install_dir} (published at {WEIGHTS_PUBLISHED_AT}, file '{name}')" for name in missing),
            "Folders searched:",
            searched,
        ]
        raise DWPoseWeightsMissing("\n".join(lines))
    return found[DETECTOR_FILE], found[POSE_FILE]


# -------------------------------------------------------------------------------------- image resampling


def _bilinear_axis(dst_to_src: np.ndarray, size: int, zero_border: bool):
    """Source indices (clipped into the image) and the weights of the two neighbours along one axis.

    With ``zero_border`` neighbours outside the image weigh 0, i.e. the image is surrounded by black, like
    OpenCV's warpAffine with BORDER_CONSTANT; otherwise edges are replicated like cv2.resize."""
    low = np.floor(dst_to_src)
    frac = (dst_to_src - low).astype(np.float32)
    low = low.astype(np.int64)
    high = low + 1
    w_low, w_high = 1.0 - frac, frac
    if zero_border:
        w_low = np.where((low >= 0) & (low < size), w_low, 0.0)
        w_high = np.where((high >= 0) & (high < size), w_high, 0.0)
    i_low, i_high = np.clip(low, 0, size - 1), np.clip(high, 0, size - 1)
    return i_low, i_high, w_low.astype(np.float32), w_high.astype(np.float32)


def _sample_separable(image: np.ndarray, src_x: np.ndarray, src_y: np.ndarray, zero_border: bool) -> np.ndarray:
    """Bilinear sampling of an HWC uint8 image where source x depends only on output x and source y only on
    output y (scalings and translations). Returns uint8, rounded to nearest as OpenCV does. Only the four
    neighbours of each output pixel are read, so the cost follows the output size, not the frame size."""
    height, width = image.shape[:2]
    x0, x1, wx0, wx1 = _bilinear_axis(src_x, width, zero_border)
    y0, y1, wy0, wy1 = _bilinear_axis(src_y, height, zero_border)
    rows0, rows1 = image[y0], image[y1]  # [Ho, W, C] views of the needed rows only
    wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
    top = rows0[:, x0] * wx0 + rows0[:, x1] * wx1
    bottom = rows1[:, x0] * wx0 + rows1[:, x1] * wx1
    out = top * wy0[:, None, None] + bottom * wy1[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(..., INTER_LINEAR) semantics: half-pixel centres, replicated edges."""
    src_h, src_w = image.shape[:2]
    src_x = (np.arange(width, dtype=np.float64) + 0.5) * (src_w / width) - 0.5
    src_y = (np.arange(height, dtype=np.float64) + 0.5) * (src_h / height) - 0.5
    return _sample_separable(image, src_x, src_y, zero_border=False)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The YOLOX input: the frame scaled to fit ``size`` = (height, width), placed top-left on grey 114.

    Returns the padded HWC uint8 image and the scale ratio (detector pixels per frame pixel)."""
    target_h, target_w = size
    height, width = image.shape[:2]
    ratio = min(target_h / height, target_w / width)
    new_w, new_h = int(width * ratio), int(height * ratio)
    padded = np.full((target_h, target_w, 3), DETECTOR_PAD_VALUE, dtype=np.uint8)
    padded[:new_h, :new_w] = resize_linear(image, new_w, new_h)
    return padded, ratio


# --------------------------------------------------------------------------------------------- detector


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS with the +1 pixel area convention of the YOLOX/DWPose reference code."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(iou <= iou_threshold)[0] + 1]
    return keep


def decode_yolox(
    output: np.ndarray,
    ratio: float,
    input_size: tuple[int, int],
    score_threshold: float,
    nms_iou: float = DETECTOR_NMS_IOU,
) -> np.ndarray:
    """Person boxes ``[M, 4]`` (x1, y1, x2, y2 in frame pixels) from the raw YOLOX head output ``[1, A, 5 + C]``.

    Each anchor row holds (dx, dy, log w, log h) in grid units, the objectness and the class probabilities;
    the score of a box is objectness x person probability, as in the reference code."""
    preds = np.array(output, dtype=np.float32).reshape(-1, output.shape[-1])
    grids, strides = [], []
    for stride in DETECTOR_STRIDES:
        rows, cols = input_size[0] // stride, input_size[1] // stride
        xv, yv = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((rows * cols, 1), stride))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(strides).astype(np.float32)
    if grid.shape[0] != preds.shape[0]:
        raise DWPoseModelError(
            f"detector output has {preds.shape[0]} anchors; a {input_size[1]}x{input_size[0]} YOLOX input has "
            f"{grid.shape[0]} (strides 8/16/32): this is not a YOLOX detector like {DETECTOR_FILE}"
        )
    centers = (preds[:, :2] + grid) * stride
    sizes = np.exp(preds[:, 2:4]) * stride
    scores = preds[:, 4] * preds[:, 5 + PERSON_CLASS]
    keep = scores > score_threshold
    if not keep.any():
        return np.zeros((0, 4), dtype=np.float32)
    centers, sizes, scores = centers[keep], sizes[keep], scores[keep]
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1) / ratio
    return boxes[_nms(boxes, scores, nms_iou)].astype(np.float32)


# ------------------------------------------------------------------------------------------- pose model


def box_to_center_scale(box: Sequence[float], aspect_ratio: float, padding: float = POSE_BOX_PADDING):
    """Centre and size of the crop for one box: grown by ``padding`` and widened to ``aspect_ratio`` = w / h."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], dtype=np.float64)
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > h * aspect_ratio:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h], dtype=np.float64)


def crop_person(image: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The pose model's view of one person: ``scale`` (w, h) around ``center`` warped to ``input_size`` (w, h),
    with warpAffine semantics (integer output pixel -> source point, zeros outside the frame)."""
    out_w, out_h = input_size
    pixel = scale[0] / out_w  # frame pixels per model pixel (same on both axes after widening)
    src_x = (np.arange(out_w, dtype=np.float64) - out_w / 2) * pixel + center[0]
    src_y = (np.arange(out_h, dtype=np.float64) - out_h / 2) * pixel + center[1]
    return _sample_separable(image, src_x, src_y, zero_border=True)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Locations ``[N, K, 2]`` in model-input pixels and scores ``[N, K]`` from SimCC vectors.

    Location = arg-max bin / split ratio; score = the smaller of the two axis maxima (DWPose's choice; rtmlib
    averages them). Points with a score <= 0 get location -1, as in the reference code."""
    n, k, _ = simcc_x.shape
    flat_x = simcc_x.reshape(n * k, -1)
    flat_y = simcc_y.reshape(n * k, -1)
    locs = np.stack([flat_x.argmax(1), flat_y.argmax(1)], axis=-1).astype(np.float32)
    scores = np.minimum(flat_x.max(1), flat_y.max(1)).astype(np.float32)
    locs[scores <= 0.0] = -1
    return locs.reshape(n, k, 2) / split_ratio, scores.reshape(n, k)


def to_frame_coordinates(locs: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`crop_person` for keypoint locations: model-input pixels -> frame pixels."""
    return locs / np.asarray(input_size, dtype=np.float64) * scale + center - scale / 2


# ----------------------------------------------------------------------------------- OpenPose conversion


def wholebody_to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``[N, 133, 2]`` + ``[N, 133]`` COCO-WholeBody -> ``[N, 134, 3]`` (x, y, score): the 18 OpenPose body
    points first (neck = mean of the shoulders, scored by the weaker shoulder), then feet, face and hands as
    DWPose orders them."""
    info = np.concatenate([keypoints, scores[..., None]], axis=-1).astype(np.float64)
    neck = info[:, [5, 6]].mean(axis=1)
    neck[:, 2] = np.minimum(info[:, 5, 2], info[:, 6, 2])
    out = np.insert(info, 17, neck, axis=1)
    out[:, _MMPOSE_TO_OPENPOSE_DST] = out[:, _MMPOSE_TO_OPENPOSE_SRC]
    return out


def _flat_part(points: np.ndarray, threshold: float, keep_empty: bool) -> Optional[list[float]]:
    """Flat [x, y, c, ...]: points under ``threshold`` become [0, 0, 0] (as the preprocessor writes them);
    a part with no point over it becomes None unless ``keep_empty``."""
    visible = points[:, 2] >= threshold
    if not visible.any() and not keep_empty:
        return None
    flat: list[float] = []
    for (x, y, c), ok in zip(points, visible):
        flat.extend((float(x), float(y), float(c)) if ok else (0.0, 0.0, 0.0))
    return flat


def openpose_frame(people: np.ndarray, width: int, height: int, keypoint_threshold: float) -> dict:
    """One ``POSE_KEYPOINT`` frame dict from ``[N, 134, 3]`` OpenPose-ordered people."""
    entries = []
    for person in people:
        face = person[FACE_SLICE]
        # OpenPose faces have 70 points: DWPose's 68 plus the two eyes taken from the body.
        face = np.concatenate([face, person[[OPENPOSE_RIGHT_EYE, OPENPOSE_LEFT_EYE]]], axis=0)
        face_flat = _flat_part(person[FACE_SLICE], keypoint_threshold, keep_empty=False)
        entries.append(
            {
                "pose_keypoints_2d": _flat_part(person[BODY_SLICE], keypoint_threshold, keep_empty=True),
                "face_keypoints_2d": None if face_flat is None else _flat_part(face, keypoint_threshold, keep_empty=True),
                "hand_left_keypoints_2d": _flat_part(person[LEFT_HAND_SLICE], keypoint_threshold, keep_empty=False),
                "hand_right_keypoints_2d": _flat_part(person[RIGHT_HAND_SLICE], keypoint_threshold, keep_empty=False),
            }
        )
    return {"people": entries, "canvas_height": int(height), "canvas_width": int(width)}


# -------------------------------------------------------------------------------------------- inference


def select_providers(available: Optional[Iterable[str]] = None) -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    available = list(available)
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def _open_session(path: Path, providers: Sequence[str]):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # keep ComfyUI's console free of onnxruntime's graph warnings
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as error:  # onnxruntime raises several private exception types
        raise DWPoseModelError(
            f"could not load {path}: {type(error).__name__}: {error}\nThe file is not a valid ONNX model (often an "
            f"interrupted download). Replace it with '{path.name}' from {WEIGHTS_PUBLISHED_AT}."
        ) from error


def _static_hw(shape: Sequence, what: str, path: Path) -> tuple[int, int]:
    if len(shape) != 4 or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]):
        raise DWPoseModelError(f"{path}: {what} input has shape {list(shape)}, expected [batch, 3, height, width] with a fixed size")
    return int(shape[2]), int(shape[3])


@dataclass
class PersonPose:
    """One frame's result: ``keypoints`` [N, 133, 2] frame pixels, ``scores`` [N, 133], ``boxes`` [N, 4]."""

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


class DWPoseEstimator:
    """Detector + pose model on onnxruntime. Checks that each file has the expected inputs and outputs."""

    def __init__(self, detector_path: os.PathLike | str, pose_path: os.PathLike | str, providers: Optional[Sequence[str]] = None):
        self.detector_path, self.pose_path = Path(detector_path), Path(pose_path)
        self.providers = list(providers) if providers is not None else select_providers()
        self.detector = _open_session(self.detector_path, self.providers)
        self.pose = _open_session(self.pose_path, self.providers)

        det_in = self.detector.get_inputs()
        det_out = self.detector.get_outputs()
        if len(det_in) != 1 or len(det_out) < 1:
            raise DWPoseModelError(f"{self.detector_path}: expected one input and an output like YOLOX's, got {len(det_in)} inputs")
        self.detector_size = _static_hw(det_in[0].shape, "detector", self.detector_path)  # (h, w)
        out_shape = det_out[0].shape
        if len(out_shape) != 3 or not isinstance(out_shape[-1], int) or out_shape[-1] < 6:
            raise DWPoseModelError(
                f"{self.detector_path}: detector output has shape {list(out_shape)}, expected [1, anchors, 5 + classes] "
                f"(a YOLOX export without NMS, like {DETECTOR_FILE}). Did you swap the two files?"
            )

        pose_in = self.pose.get_inputs()
        pose_out = {o.name: o for o in self.pose.get_outputs()}
        if len(pose_in) != 1 or len(pose_out) != 2:
            raise DWPoseModelError(
                f"{self.pose_path}: expected one input and the two SimCC outputs (simcc_x, simcc_y) of {POSE_FILE}, got "
                f"{len(pose_in)} inputs and {len(pose_out)} outputs. Did you swap the two files?"
            )
        h, w = _static_hw(pose_in[0].shape, "pose", self.pose_path)
        self.pose_size = (w, h)
        outputs = list(pose_out.values())
        if {"simcc_x", "simcc_y"} <= pose_out.keys():
            outputs = [pose_out["simcc_x"], pose_out["simcc_y"]]
        self.pose_output_names = [o.name for o in outputs]
        x_bins, y_bins = outputs[0].shape[-1], outputs[1].shape[-1]
        if not (isinstance(x_bins, int) and isinstance(y_bins, int)) or x_bins * h != y_bins * w or outputs[0].shape[1] != NUM_WHOLEBODY_POINTS:
            raise DWPoseModelError(
                f"{self.pose_path}: SimCC outputs {list(outputs[0].shape)} and {list(outputs[1].shape)} do not fit a "
                f"{w}x{h} input with {NUM_WHOLEBODY_POINTS} whole-body keypoints"
            )
        self.simcc_split_ratio = x_bins / w
        batch = pose_in[0].shape[0]
        self.pose_batch = batch if isinstance(batch, int) else None  # None: any number of people per run

    def detect(self, image: np.ndarray, score_threshold: float) -> np.ndarray:
        padded, ratio = letterbox(image, self.detector_size)
        tensor = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        output = self.detector.run(None, {self.detector.get_inputs()[0].name: tensor})[0]
        return decode_yolox(output, ratio, self.detector_size, score_threshold)

    def estimate(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(boxes) == 0:
            return np.zeros((0, NUM_WHOLEBODY_POINTS, 2), np.float32), np.zeros((0, NUM_WHOLEBODY_POINTS), np.float32)
        w, h = self.pose_size
        crops, centers, scales = [], [], []
        for box in boxes:
            center, scale = box_to_center_scale(box, aspect_ratio=w / h)
            crop = (crop_person(image, center, scale, self.pose_size).astype(np.float32) - POSE_MEAN) / POSE_STD
            crops.append(crop.transpose(2, 0, 1))
            centers.append(center)
            scales.append(scale)
        batch = np.ascontiguousarray(np.stack(crops), dtype=np.float32)
        name = self.pose.get_inputs()[0].name
        step = self.pose_batch or len(batch)
        parts = [self.pose.run(self.pose_output_names, {name: batch[i : i + step]}) for i in range(0, len(batch), step)]
        simcc_x = np.concatenate([p[0] for p in parts])
        simcc_y = np.concatenate([p[1] for p in parts])
        locs, scores = decode_simcc(simcc_x, simcc_y, self.simcc_split_ratio)
        keypoints = np.stack(
            [to_frame_coordinates(locs[i], centers[i], scales[i], self.pose_size) for i in range(len(locs))]
        )
        return keypoints.astype(np.float32), scores

    def __call__(self, image: np.ndarray, detection_threshold: float = 0.3) -> PersonPose:
        image = as_rgb_uint8(image)
        boxes = self.detect(image, detection_threshold)
        keypoints, scores = self.estimate(image, boxes)
        return PersonPose(keypoints, scores, boxes)


def as_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    """HWC RGB uint8 from uint8 or 0..1 float frames with 3 or 4 (alpha dropped) channels."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"a frame must be height x width x 3 (RGB) or 4 (RGBA), got shape {list(frame.shape)}")
    frame = frame[..., :3]
    if frame.dtype != np.uint8:
        frame = np.clip(np.rint(frame.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame)


def estimate_video(
    estimator: Callable[[np.ndarray, float], PersonPose],
    frames: Sequence[np.ndarray],
    detection_threshold: float = 0.3,
    keypoint_threshold: float = 0.3,
    on_frame: Optional[Callable[[int], None]] = None,
) -> list[dict]:
    """``POSE_KEYPOINT`` (one dict per frame) for a video. ``on_frame(i)`` runs after frame ``i``: the host's
    progress bar, which raises to cancel between frames."""
    if len(frames) == 0:
        raise ValueError("no frames to estimate poses on: the video is empty")
    first = tuple(np.asarray(frames[0]).shape[:2])
    for index, frame in enumerate(frames):
        if tuple(np.asarray(frame).shape[:2]) != first:
            raise ValueError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is {first[1]}x{first[0]}: all frames "
                f"of a video must have one size; resize them first"
            )
    result = []
    for index, frame in enumerate(frames):
        pose = estimator(frame, detection_threshold)
        people = wholebody_to_openpose(pose.keypoints, pose.scores)
        result.append(openpose_frame(people, width=first[1], height=first[0], keypoint_threshold=keypoint_threshold))
        if on_frame is not None:
            on_frame(index)
    return result
