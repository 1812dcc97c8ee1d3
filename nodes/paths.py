"""Where the pack keeps its files inside ComfyUI. One place, so the collector node and the gallery agree; and the
check that a model file named by a widget stays inside its ComfyUI folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

DATASETS_FOLDER = "ipa_datasets"


def dataset_root() -> Path:
    """The folder holding every IPA dataset: ``<ComfyUI output directory>/ipa_datasets``.

    Looked up on each call, since ``--output-directory`` and ``folder_paths.set_output_directory`` may change it
    after the pack is imported. It is not created here: ``ipa_train.data.samples.create_dataset`` makes it on first use.
    """
    import folder_paths

    return Path(folder_paths.get_output_directory()) / DATASETS_FOLDER


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives on Windows
        return False


def model_file(category: str, name: str, what: str) -> str:
    """The real path of model file ``name`` (a widget value) in ComfyUI's ``category`` folders (``loras``,
    ``diffusion_models``), refused unless it resolves inside one of them.

    Why: a widget value comes from the request, not only from the list the page showed, and ComfyUI's lookup follows
    symlinks anywhere. Folders that are themselves links (``models/loras`` on another drive, extra_model_paths.yaml)
    still work: they are resolved too before comparing."""
    import folder_paths

    text = str(name or "")
    parts = text.replace("\\", "/").split("/")
    if os.path.isabs(text) or text.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", text):
        raise ValueError(f"{what} {text!r} is not a file name in ComfyUI's {category} folder: pick one from the list "
                         "(no absolute path, no '..')")
    path = folder_paths.get_full_path_or_raise(category, text)
    real = os.path.realpath(path)
    roots = [os.path.realpath(root) for root in folder_paths.get_folder_paths(category)]
    if not any(_inside(real, root) for root in roots):
        raise ValueError(f"{what} {text!r} resolves to {real}, outside ComfyUI's {category} folders ({', '.join(roots)}): "
                         "a link leading out of them is not followed. Move the file into one of these folders, or add its "
                         "folder to ComfyUI's extra_model_paths.yaml")
    return real
