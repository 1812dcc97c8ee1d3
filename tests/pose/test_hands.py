"""Hand masks from pose keypoints (ipa_train/pose/hands.py) and the synthetic pose sequences (ipa_train/pose/synthetic.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ipa_train.pose.hands import (
    _convex_hull,
    canvas_mapping,
    hand_boxes,
    hand_mask_preview,
    latent_hand_mask,
    pose_to_hand_masks,
    resize_frames,
)
from ipa_train.pose.synthetic import render_pose_frames, synthetic_pose_sequence

W, H = 832, 480


def flat(points, conf=1.0):
    """[[x, y], ...] -> the flat [x, y, c] list DWPose writes."""
    out = []
    for p in points:
        c = p[2] if len(p) > 2 else conf
        out += [float(p[0]), float(p[1]), float(c)]
    return out


def frame(*people, canvas=(W, H)):
    return {"people": list(people), "canvas_width": canvas[0], "canvas_height": canvas[1]}


def person(left=None, right=None):
    return {
        "pose_keypoints_2d": [0.0] * 54,
        "face_keypoints_2d": [],
        "hand_left_keypoints_2d": left,
        "hand_right_keypoints_2d": right,
    }


# A hand spanning x 100..140, y 200..260 (size 60): with margin 0.25 its box grows by 15 px on each side.
HAND = [(100, 200), (140, 200), (120, 230), (100, 260), (140, 260), (118, 215)]
HAND_BOX = (85, 185, 155, 275)


def box_mask(box, width=W, height=H):
    m = torch.zeros(height, width)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


# ------------------------------------------------------------------------------------------------ pixel masks


def test_pixel_coordinates_give_the_grown_box():
    masks = pose_to_hand_masks([frame(person(left=flat(HAND)))], W, H, margin=0.25)
    assert masks.shape == (1, H, W) and masks.dtype == torch.float32
    assert torch.equal(masks[0], box_mask(HAND_BOX))
    assert hand_boxes([frame(person(left=flat(HAND)))], W, H, margin=0.25) == [[HAND_BOX]]
    # margin is proportional to the hand's size: 0.5 grows by 30 px.
    assert hand_boxes([frame(person(left=flat(HAND)))], W, H, margin=0.5) == [[(70, 170, 170, 290)]]
    assert hand_boxes([frame(person(left=flat(HAND)))], W, H, margin=0.0) == [[(100, 200, 140, 260)]]


def test_normalised_coordinates_are_detected_per_array():
    normalised = [(x / W, y / H) for x, y in HAND]
    pixel_mask = pose_to_hand_masks([frame(person(left=flat(HAND)))], W, H)
    norm_mask = pose_to_hand_masks([frame(person(left=flat(normalised)))], W, H)
    assert torch.equal(norm_mask, pixel_mask)
    # Mixed in one frame: one hand normalised, the other in pixels, both land where they belong.
    other = [(x + 500, y) for x, y in HAND]
    mixed = pose_to_hand_masks([frame(person(left=flat(normalised), right=flat(other)))], W, H)
    expected = torch.maximum(box_mask(HAND_BOX), box_mask((585, 185, 655, 275)))
    assert torch.equal(mixed[0], expected)
    # Without a canvas size, normalised values refer to the requested size.
    no_canvas = pose_to_hand_masks([{"people": [person(left=flat(normalised))]}], W, H)
    assert torch.equal(no_canvas, pixel_mask)


def test_low_confidence_points_are_ignored_and_too_few_points_mean_no_hand():
    outlier = HAND + [(400, 400, 0.2)]
    masks = pose_to_hand_masks([frame(person(left=flat(outlier)))], W, H, threshold=0.3)
    assert torch.equal(masks[0], box_mask(HAND_BOX))
    # A lower threshold admits the outlier and the box grows to it.
    wide = hand_boxes([frame(person(left=flat(outlier)))], W, H, threshold=0.1)[0][0]
    assert wide[2] > 400 and wide[3] > 400
    # Zero-confidence points (DWPose zeroes undetected ones) never count, even with threshold 0.
    zeroed = HAND + [(0, 0, 0.0)] * 15
    assert hand_boxes([frame(person(left=flat(zeroed)))], W, H, threshold=0.0) == [[HAND_BOX]]
    # Two confident points are below min_points=3: the hand is absent.
    two = [(100, 200, 1.0), (140, 260, 1.0)] + [(120, 230, 0.1)] * 19
    assert pose_to_hand_masks([frame(person(left=flat(two)))], W, H).sum() == 0
    assert pose_to_hand_masks([frame(person(left=flat(two)))], W, H, min_points=2).sum() > 0


def test_missing_people_and_hands_give_empty_frames():
    poses = [
        frame(),  # no people
        {"people": None},
        {},
        None,
        frame(None),  # a None person placeholder
        frame(person(left=None, right=[])),
        frame({"pose_keypoints_2d": [0.0] * 54}),  # hand keys missing
        frame(person(left=flat(HAND))),
    ]
    masks = pose_to_hand_masks(poses, W, H)
    assert masks.shape == (len(poses), H, W)
    assert masks[:-1].sum() == 0
    assert torch.equal(masks[-1], box_mask(HAND_BOX))
    assert hand_boxes(poses, W, H) == [[]] * 7 + [[HAND_BOX]]


def test_two_people_and_both_hands_are_united():
    a = person(left=flat(HAND), right=flat([(x + 300, y) for x, y in HAND]))
    b = person(right=flat([(x + 500, y + 100) for x, y in HAND]))
    union = pose_to_hand_masks([frame(a, b)], W, H)[0]
    alone_a = pose_to_hand_masks([frame(a)], W, H)[0]
    alone_b = pose_to_hand_masks([frame(b)], W, H)[0]
    assert torch.equal(union, torch.maximum(alone_a, alone_b))
    assert len(hand_boxes([frame(a, b)], W, H)[0]) == 3
    assert alone_a.sum() == 2 * (70 * 90) and alone_b.sum() == 70 * 90


def test_hand_at_the_image_border_is_clipped():
    corner = [(-20, -10), (15, -10), (15, 30), (-20, 30), (0, 10)]  # partly left of / above the canvas
    masks = pose_to_hand_masks([frame(person(right=flat(corner)))], W, H, margin=0.25)
    (box,) = hand_boxes([frame(person(right=flat(corner)))], W, H, margin=0.25)[0]
    assert box == (0, 0, 25, 40)  # size 40, grown 10: x up to 15 + 10, y up to 30 + 10 (exclusive ends)
    assert masks[0, 0, 0] == 1 and masks.sum() == 25 * 40
    right_edge = [(W - 10, H - 30), (W + 30, H - 30), (W + 30, H + 10), (W - 10, H)]
    (box,) = hand_boxes([frame(person(left=flat(right_edge)))], W, H)[0]
    assert box[2] == W and box[3] == H and box[0] < W - 10


def test_hull_is_inside_the_box_and_covers_every_point():
    diagonal = [(100, 100), (110, 105), (160, 150), (200, 200), (195, 190), (150, 160), (105, 98)]
    poses = [frame(person(left=flat(diagonal)))]
    box = pose_to_hand_masks(poses, W, H, shape="box")[0]
    hull = pose_to_hand_masks(poses, W, H, shape="hull")[0]
    assert bool((hull <= box).all())
    assert hull.sum() < 0.6 * box.sum()  # a diagonal hand: the hull drops the empty corners
    for x, y in diagonal:
        assert hull[int(y), int(x)] == 1
    assert box[190, 80] == 1 and hull[190, 80] == 0  # the lower-left corner of the box is not hand


def test_hull_rows_match_a_full_grid_half_plane_test():
    # The row-interval rasteriser against the direct definition evaluated on every pixel centre.
    rng = np.random.default_rng(3)
    for trial in range(6):
        pts = rng.uniform(20, 90, size=(rng.integers(3, 21), 2))
        margin = [0.0, 0.2, 0.5][trial % 3]
        poses = [frame(person(left=flat(pts)), canvas=(120, 100))]
        for resize in ("stretch", "crop", "letterbox"):
            got = pose_to_hand_masks(poses, 96, 64, margin=margin, shape="hull", resize=resize)[0].numpy().astype(bool)
            sx, sy, ox, oy = canvas_mapping(120, 100, 96, 64, resize)
            (box,) = hand_boxes(poses, 96, 64, margin=margin, resize=resize)[0]
            size = max(np.ptp(pts[:, 0]), np.ptp(pts[:, 1]))
            slack = margin * size + 0.5 * max(1 / sx, 1 / sy)
            hull = _convex_hull(pts)
            xs, ys = np.meshgrid((np.arange(96) + 0.5 - ox) / sx, (np.arange(64) + 0.5 - oy) / sy)
            inside = np.ones((64, 96), dtype=bool)
            for a, b in zip(hull, np.roll(hull, -1, axis=0)):
                e = b - a
                n = np.array([e[1], -e[0]]) / math.hypot(*e)
                inside &= (xs - a[0]) * n[0] + (ys - a[1]) * n[1] <= slack
            in_box = np.zeros_like(inside)
            in_box[box[1] : box[3], box[0] : box[2]] = True
            assert np.array_equal(got, inside & in_box), (trial, resize)


def test_resize_modes_map_keypoints_like_the_frames():
    canvas = (1000, 500)
    hand = [(600, 100), (640, 100), (640, 140), (600, 140)]
    poses = [frame(person(left=flat(hand)), canvas=canvas)]
    # stretch: each axis scales on its own.
    assert hand_boxes(poses, 416, 240, margin=0.0, resize="stretch") == [[(249, 48, 267, 68)]]
    # crop: comfy.utils.common_upscale(crop="center") crops round((1000 - 1000 * (416/240) / 2) / 2) = 67 px
    # from each side, then scales 866 -> 416.
    s = 416 / 866
    assert canvas_mapping(*canvas, 416, 240, "crop") == pytest.approx((s, 240 / 500, -67 * s, 0.0), abs=1e-12)
    tall = canvas_mapping(500, 1000, 240, 416, "crop")  # the other axis: 67 px off the top and bottom
    assert tall == pytest.approx((240 / 500, s, 0.0, -67 * s), abs=1e-12)
    x0, x1 = (600 - 67) * s, (640 - 67) * s
    assert hand_boxes(poses, 416, 240, margin=0.0, resize="crop") == [[(math.floor(x0), 48, math.ceil(x1), 68)]]
    # letterbox: uniform scale 0.416, content 416 x 208 centred with 16 px bands above and below.
    assert hand_boxes(poses, 416, 240, margin=0.0, resize="letterbox") == [[(249, 57, 267, 75)]]
    # A hand in the part that "crop" cuts away vanishes there, but not with stretch.
    edge = [frame(person(left=flat([(10, 100), (50, 100), (50, 140)])), canvas=canvas)]
    assert hand_boxes(edge, 416, 240, margin=0.0, resize="crop") == [[]]
    assert pose_to_hand_masks(edge, 416, 240, resize="crop").sum() == 0
    assert pose_to_hand_masks(edge, 416, 240, resize="stretch").sum() > 0


def test_resize_frames_geometry():
    frames = torch.rand(2, 500, 1000, 3)
    crop = resize_frames(frames, 416, 240, "crop")
    expected = torch.nn.functional.interpolate(frames[:, :, 67:933].movedim(-1, 1), size=(240, 416), mode="bilinear")
    assert torch.allclose(crop, expected.movedim(1, -1))
    stretch = resize_frames(frames, 416, 240, "stretch")
    assert torch.allclose(stretch, torch.nn.functional.interpolate(frames.movedim(-1, 1), size=(240, 416), mode="bilinear").movedim(1, -1))
    letter = resize_frames(frames, 416, 240, "letterbox")
    assert letter.shape == (2, 240, 416, 3)
    assert letter[:, :16].abs().sum() == 0 and letter[:, 224:].abs().sum() == 0 and letter[:, 16:224].abs().sum() > 0
    assert resize_frames(frames, 1000, 500, "crop") is frames


@pytest.mark.parametrize("resize", ["stretch", "crop", "letterbox"])
def test_rendered_hands_after_resizing_frames_lie_inside_the_mask(resize):
    # Render at the pose canvas, resize the frames with the mode, and check every drawn hand pixel is masked.
    poses = synthetic_pose_sequence(3, 320, 200, people=2, seed=5)
    hand_only = [
        {**f, "people": [{k: v for k, v in p.items() if k.startswith("hand")} for p in f["people"]]} for f in poses
    ]
    frames = resize_frames(render_pose_frames(hand_only), 256, 256, resize)
    masks = pose_to_hand_masks(poses, 256, 256, margin=0.1, resize=resize)
    drawn = frames.amax(dim=-1) > 0.2
    assert drawn.sum() > 100
    assert bool((masks[drawn] == 1).all())


# ------------------------------------------------------------------------------------------------ latent masks


def naive_latent(pixel: torch.Tensor) -> torch.Tensor:
    T, Hp, Wp = pixel.shape
    F = (T - 1) // 4 + 1
    out = torch.zeros(1, 1, F, Hp // 8, Wp // 8)
    for j in range(F):
        sources = [0] if j == 0 else range(4 * j - 3, 4 * j + 1)
        for y in range(Hp // 8):
            for x in range(Wp // 8):
                out[0, 0, j, y, x] = max(float(pixel[s, 8 * y : 8 * y + 8, 8 * x : 8 * x + 8].max()) for s in sources)
    return out


@pytest.mark.parametrize("frames", [5, 9, 81])
def test_latent_temporal_and_spatial_mapping_element_by_element(frames):
    gen = torch.Generator().manual_seed(frames)
    pixel = (torch.rand(frames, 16, 24, generator=gen) > 0.995).float()  # sparse single hand pixels
    latent = latent_hand_mask(pixel)
    assert latent.shape == (1, 1, (frames - 1) // 4 + 1, 2, 3)
    assert torch.equal(latent, naive_latent(pixel))


def test_latent_frame_boundaries():
    pixel = torch.zeros(9, 16, 16)
    pixel[0, 0, 0] = 1  # latent frame 0 only
    pixel[4, 9, 9] = 1  # last pixel frame of latent frame 1
    pixel[5, 15, 0] = 1  # first pixel frame of latent frame 2
    latent = latent_hand_mask(pixel)[0, 0]
    assert latent.shape == (3, 2, 2)
    assert latent[0].tolist() == [[1, 0], [0, 0]]
    assert latent[1].tolist() == [[0, 0], [0, 1]]
    assert latent[2].tolist() == [[0, 0], [1, 0]]


def test_latent_shape_for_wan_81_frames_at_480p():
    poses = synthetic_pose_sequence(81, W, H, people=1, seed=0)
    latent = latent_hand_mask(pose_to_hand_masks(poses, W, H))
    assert latent.shape == (1, 1, 21, 60, 104)
    assert set(latent.unique().tolist()) == {0.0, 1.0}
    assert bool((latent.flatten(2).amax(-1) == 1).all())  # a hand in every latent frame
    batched = latent_hand_mask(torch.zeros(2, 5, 16, 16))
    assert batched.shape == (2, 1, 2, 2, 2)


@pytest.mark.parametrize("frames", [2, 4, 80, 82])
def test_latent_mask_refuses_frame_counts_that_are_not_4k_plus_1(frames):
    with pytest.raises(ValueError, match=r"4k\+1"):
        latent_hand_mask(torch.zeros(frames, 16, 16))


def test_latent_mask_refuses_sizes_not_divisible_by_8():
    with pytest.raises(ValueError, match="divisible"):
        latent_hand_mask(torch.zeros(5, 20, 16))


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="multiple of 3"):
        pose_to_hand_masks([frame(person(left=[1.0, 2.0, 1.0, 4.0]))], W, H)
    with pytest.raises(ValueError, match="empty"):
        pose_to_hand_masks([], W, H)
    with pytest.raises(ValueError, match="shape"):
        pose_to_hand_masks([frame()], W, H, shape="circle")
    with pytest.raises(ValueError, match="resize"):
        pose_to_hand_masks([frame()], W, H, resize="zoom")
    with pytest.raises(ValueError, match="threshold"):
        pose_to_hand_masks([frame()], W, H, threshold=1.5)
    with pytest.raises(ValueError, match="frame 1"):
        pose_to_hand_masks([frame(), "not a frame"], W, H)
    with pytest.raises(ValueError, match="width and height"):
        pose_to_hand_masks([frame()], 0, H)


# ------------------------------------------------------------------------------------------------ synthetic poses


def test_synthetic_sequence_has_the_dwpose_layout_and_moving_hands():
    poses = synthetic_pose_sequence(17, W, H, people=2, seed=7)
    assert len(poses) == 17
    for f in poses:
        assert set(f) == {"people", "canvas_width", "canvas_height"}
        assert (f["canvas_width"], f["canvas_height"]) == (W, H)
        assert len(f["people"]) == 2
        for p in f["people"]:
            assert len(p["pose_keypoints_2d"]) == 18 * 3
            assert len(p["face_keypoints_2d"]) == 70 * 3
            assert len(p["hand_left_keypoints_2d"]) == 21 * 3
            assert len(p["hand_right_keypoints_2d"]) == 21 * 3
            arr = np.array(p["hand_left_keypoints_2d"] + p["hand_right_keypoints_2d"]).reshape(-1, 3)
            assert (arr[:, 2] == 1).all()  # hands stay inside the canvas
            assert arr[:, 0].max() < W and arr[:, 1].max() < H and arr[:, :2].min() >= 0
            assert all(isinstance(v, float) for v in p["pose_keypoints_2d"])
    boxes = hand_boxes(poses, W, H)
    assert all(len(b) == 4 for b in boxes)
    centres = np.array([[(b[0] + b[2]) / 2 for b in frame_boxes] for frame_boxes in boxes])
    assert np.ptp(centres, axis=0).max() > 20  # at least one hand travels > 20 px: it waves
    assert synthetic_pose_sequence(17, W, H, people=2, seed=7) == poses
    assert synthetic_pose_sequence(17, W, H, people=2, seed=8) != poses


def test_synthetic_normalised_output_gives_the_same_masks():
    pixel = synthetic_pose_sequence(5, 320, 192, seed=2)
    normalised = synthetic_pose_sequence(5, 320, 192, seed=2, normalized=True)
    values = np.array(normalised[0]["people"][0]["hand_left_keypoints_2d"]).reshape(-1, 3)
    assert values[:, :2].max() <= 1.0
    a = pose_to_hand_masks(pixel, 320, 192)
    b = pose_to_hand_masks(normalised, 320, 192)
    assert (a != b).float().mean() < 0.002  # only 4-decimal rounding of normalised values differs
    assert a.sum() > 0


def test_render_and_preview():
    poses = synthetic_pose_sequence(2, 160, 96, seed=1)
    frames = render_pose_frames(poses)
    assert frames.shape == (2, 96, 160, 3) and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1 and frames.sum() > 0
    masks = pose_to_hand_masks(poses, 160, 96)
    boxes = hand_boxes(poses, 160, 96)
    dark = hand_mask_preview(masks, None, boxes)
    assert dark.shape == (2, 96, 160, 3)
    outside = masks[0] == 0
    assert torch.allclose(dark[0][outside & (frames[0].sum(-1) >= 0)][:10], torch.full((10, 3), 0.08))
    x0, y0, x1, y1 = boxes[0][0]
    assert torch.allclose(dark[0, y0, x0], torch.tensor([1.0, 0.8, 0.0]))  # box outline
    inner = dark[0, (y0 + y1) // 2, (x0 + x1) // 2]
    assert inner[1] > inner[0] and inner[1] > 0.4  # green tint inside the mask
    over = hand_mask_preview(masks, frames)
    assert torch.equal(over[0][outside], frames[0][outside])
    with pytest.raises(ValueError, match="do not match"):
        hand_mask_preview(masks, frames[:1])
