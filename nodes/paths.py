"""Where the pack keeps its files inside ComfyUI's folders."""

from __future__ import annotations

import os

import folder_paths


def dataset_root() -> str:
    """The folder holding IPA datasets (one sub-folder each): ``<output>/ipa_datasets``."""
    return os.path.join(folder_paths.get_output_directory(), "ipa_datasets")
