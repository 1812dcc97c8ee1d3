"""Letting go of a LoRA file before the train node replaces it.

ComfyUI's ``LoraLoader`` (and ``LoraLoaderModelOnly``, its subclass) keeps the last file it loaded in
``self.loaded_lora = (path, state dict[, metadata])`` on the node instance ComfyUI caches between prompts. Its
tensors come from ``safetensors.safe_open``, which memory-maps the file, and on Windows a mapped file cannot be
replaced: retraining a LoRA under the same name after loading it would fail at the very end of training. The IPA LoRA
Loader caches nothing of its own, and ``wan.lora_io.read_lora_file`` copies the tensors it reads, so the patched model
it outputs (which ComfyUI caches) holds no mapping of the file.

The loader instances live in ComfyUI's executor caches, which no API reaches, so they are found among the live
objects by the attribute ComfyUI's loader uses (any node that follows the same convention is released too).
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _same_file(held, target: str) -> bool:
    try:
        return os.path.normcase(os.path.realpath(str(held))) == target
    except (TypeError, ValueError, OSError):
        return False


def release_cached_lora(path: os.PathLike | str) -> int:
    """Clears every cached ``loaded_lora`` entry that holds ``path`` and collects the garbage, so the file's memory
    map closes once nothing else (a patched model in ComfyUI's output cache) refers to its tensors. Returns how many
    entries were cleared."""
    target = os.path.normcase(os.path.realpath(str(Path(path))))
    released = 0
    for obj in gc.get_objects():
        try:
            state = object.__getattribute__(obj, "__dict__")
        except (AttributeError, TypeError):
            continue
        if not isinstance(state, dict):  # classes and modules: a mappingproxy or their globals, never a loader
            continue
        held = state.get("loaded_lora")
        if isinstance(held, (tuple, list)) and held and _same_file(held[0], target):
            state["loaded_lora"] = None
            released += 1
    if released:
        gc.collect()
        log.info("IPA Train LoRA: released %d cached cop%s of %s before replacing it", released, "y" if released == 1 else "ies", path)
    return released
