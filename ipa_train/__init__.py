"""Host-independent core of ComfyUI-IPA: loss, hand masks, dataset format, model loading, trainer, LoRA I/O.

Nothing in this package may import ComfyUI (``comfy``, ``folder_paths``, ``server``, ``nodes``): the
trainer runs in its own process without the host. Modules use relative imports so the package works
both as ``ipa_train`` (trainer subprocess, tests) and as a sub-package of the ComfyUI pack.
"""

__version__ = "0.1.0"
