"""Host-independent core of ComfyUI-IPA, in rooms by concern (see README, Layout):

- ``training/``: run config, launcher, objectives, LoRA set-up, the trainer (loop, batching, checkpoints, ...)
- ``gallery/``: the curation gallery's HTTP API and hand-score jobs
- ``demo/``: the main job and its report
- ``data/``: dataset format, candidate-to-sample conversion, previews
- ``pose/``: DWPose, hand masks, pose rendering, synthetic poses, hand score, hand crops
- ``wan/``: Wan model files, latents, LoRA layouts and metadata, fingerprints
- ``fileio``: atomic writes and safe reads, the one module every room may use

Dependencies point one way: demo -> training, gallery -> data -> pose, wan -> fileio (tests/test_layering.py).
Nothing in this package may import ComfyUI (``comfy``, ``folder_paths``, ``server``, ``nodes``): the
trainer runs in its own process without the host. Modules use relative imports so the package works
both as ``ipa_train`` (trainer subprocess, tests) and as a sub-package of the ComfyUI pack.
"""

__version__ = "0.1.0"
