"""Poses and hands: DWPose on onnxruntime (``dwpose``), hand masks and boxes (``hands``), pose pictures
(``render``), synthetic pose sequences (``synthetic``), the hand score (``hand_score``) and hand close-ups
(``hand_crops``). Depends on nothing in the pack but ``fileio``."""
