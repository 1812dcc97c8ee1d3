"""Tiny stand-ins for DWPose's two ONNX files, built with onnx.helper: the same input/output names and shapes as
``yolox_l.onnx`` (images [1,3,640,640] -> output [1,8400,85]) and ``dw-ll_ucoco_384.onnx`` (input [N,3,384,288]
-> simcc_x [N,133,576], simcc_y [N,133,768]), random weights, and behaviour simple enough to predict:

- the detector reports one person (box (80, 80)-(560, 560) in its 640x640 letterbox input) when the letterboxed
  image is bright enough on average, and nobody on a black frame;
- the pose model puts every keypoint at the brightest column and row (of the red channel) of its crop, scored by
  a sigmoid with a random per-keypoint bias; the nose (COCO point 0) always scores about 0; hand points are
  moved from there by ``HAND_OFFSETS`` model pixels (a per-keypoint shift convolution), so hands have a size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
PERSON_ANCHOR = 6400 + 1600 + 10 * 20 + 10  # stride-32 grid cell (10, 10): centre (320, 320) in the letterbox
PERSON_BOX_SIZE = 480.0
LOW_SCORE_POINTS = (0,)  # COCO-WholeBody nose
SHIFT_RADIUS = 20  # SimCC bins (10 model pixels)
# (dx, dy) in model pixels for each COCO-WholeBody point: hands (91..132) spread over a 20 x 20 square.
HAND_OFFSETS = np.zeros((133, 2), np.int64)
for _j in range(21):
    HAND_OFFSETS[91 + _j] = (_j - 10, (_j * 7) % 21 - 10)
    HAND_OFFSETS[112 + _j] = (10 - _j, (_j * 5) % 21 - 10)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def build_detector(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    anchors, channels = 8400, 85
    base = np.zeros((1, anchors, channels), np.float32)
    base[..., :2] = rng.uniform(0, 1, (1, anchors, 2))
    base[..., 2:4] = rng.uniform(-1, 1, (1, anchors, 2))
    base[..., 4:] = rng.uniform(0, 0.05, (1, anchors, channels - 4))  # every other anchor: score < 0.0025
    gain = np.zeros_like(base)
    base[0, PERSON_ANCHOR, :4] = [0.0, 0.0, np.log(PERSON_BOX_SIZE / 32), np.log(PERSON_BOX_SIZE / 32)]
    base[0, PERSON_ANCHOR, 4:6] = 0.0
    gain[0, PERSON_ANCHOR, 4:6] = 1.0  # objectness and "person" follow the brightness gate
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean4"], keepdims=1),
        helper.make_node("Reshape", ["mean4", "shape3"], ["mean"]),
        helper.make_node("Mul", ["mean", "gate_scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "gate_offset"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "one"], ["gate"]),
        helper.make_node("Mul", ["gate", "gain"], ["gated"]),
        helper.make_node("Add", ["base", "gated"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape3"),
        numpy_helper.from_array(np.array(8.0 / 255.0, np.float32), "gate_scale"),
        numpy_helper.from_array(np.array(1.5, np.float32), "gate_offset"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(base, "base"),
        numpy_helper.from_array(gain, "gain"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolox",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, anchors, channels])],
        inits,
    )
    return _save(graph, path)


def _duplicate(n: int) -> np.ndarray:
    """[n, 2n] matrix repeating each bin twice (SimCC split ratio 2)."""
    up = np.zeros((n, 2 * n), np.float32)
    up[np.arange(n), 2 * np.arange(n)] = 1.0
    up[np.arange(n), 2 * np.arange(n) + 1] = 1.0
    return up


def _shift_kernels(offsets_px: np.ndarray) -> np.ndarray:
    """Conv weights [133, 1, 2R+1] moving keypoint k's peak by offsets_px[k] model pixels (2 bins each)."""
    kernels = np.zeros((133, 1, 2 * SHIFT_RADIUS + 1), np.float32)
    kernels[np.arange(133), 0, SHIFT_RADIUS - 2 * offsets_px] = 1.0  # out[i] = in[i - 2 d]
    return kernels


def build_pose(path: Path, batch: int | str = "batch", seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    bias = rng.uniform(0.5, 1.5, (133, 1)).astype(np.float32)
    bias[list(LOW_SCORE_POINTS)] = -40.0
    nodes = [
        helper.make_node("Slice", ["input", "c_start", "c_end", "c_axis"], ["red"]),
        helper.make_node("ReduceMean", ["red"], ["cols"], axes=[2], keepdims=0),  # [N,1,288]
        helper.make_node("ReduceMean", ["red"], ["rows"], axes=[3], keepdims=0),  # [N,1,384]
        helper.make_node("MatMul", ["cols", "up_x"], ["cols2"]),
        helper.make_node("MatMul", ["rows", "up_y"], ["rows2"]),
        # lift above the zero padding, shift per keypoint, lower again: [N,1,B] -> [N,133,B]
        helper.make_node("Add", ["cols2", "lift"], ["cols_up"]),
        helper.make_node("Add", ["rows2", "lift"], ["rows_up"]),
        helper.make_node("Conv", ["cols_up", "shift_x"], ["cols_shifted"], pads=[SHIFT_RADIUS, SHIFT_RADIUS]),
        helper.make_node("Conv", ["rows_up", "shift_y"], ["rows_shifted"], pads=[SHIFT_RADIUS, SHIFT_RADIUS]),
        helper.make_node("Sub", ["cols_shifted", "lift"], ["cols_k"]),
        helper.make_node("Sub", ["rows_shifted", "lift"], ["rows_k"]),
        helper.make_node("Add", ["cols_k", "bias"], ["x_logits"]),
        helper.make_node("Add", ["rows_k", "bias"], ["y_logits"]),
        helper.make_node("Sigmoid", ["x_logits"], ["simcc_x"]),
        helper.make_node("Sigmoid", ["y_logits"], ["simcc_y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "c_start"),
        numpy_helper.from_array(np.array([1], np.int64), "c_end"),
        numpy_helper.from_array(np.array([1], np.int64), "c_axis"),
        numpy_helper.from_array(_duplicate(288), "up_x"),
        numpy_helper.from_array(_duplicate(384), "up_y"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array(10.0, np.float32), "lift"),
        numpy_helper.from_array(_shift_kernels(HAND_OFFSETS[:, 0]), "shift_x"),
        numpy_helper.from_array(_shift_kernels(HAND_OFFSETS[:, 1]), "shift_y"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_dwpose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 384, 288])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, 133, 576]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, 133, 768]),
        ],
        inits,
    )
    return _save(graph, path)


def build_weights(folder: Path, pose_batch: int | str = "batch") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return build_detector(folder / "yolox_l.onnx"), build_pose(folder / "dw-ll_ucoco_384.onnx", batch=pose_batch)


def cross_frame(width: int, height: int, x0: int, y0: int, background: int = 100, stripe: int = 4) -> np.ndarray:
    """A grey uint8 RGB frame with a white vertical stripe at x0..x0+stripe-1 and horizontal one at y0.."""
    frame = np.full((height, width, 3), background, np.uint8)
    frame[:, x0 : x0 + stripe] = 255
    frame[y0 : y0 + stripe, :] = 255
    return frame
