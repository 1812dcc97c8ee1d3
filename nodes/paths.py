"""Where the pack keeps its files inside ComfyUI. One place, so the collector node and the gallery agree."""

from __future__ import annotations

from pathlib import Path

DATASETS_FOLDER = "ipa_datasets"


def dataset_root() -> Path:
    """The folder holding every IPA dataset: ``<ComfyUI output directory>/ipa_datasets``.

    Looked up on each call, since ``--output-directory`` and ``folder_paths.set_output_directory`` may change it
    after the pack is imported. It is not created here: ``ipa_train.data.samples.create_dataset`` makes it on first use.
    """
    import folder_paths

    return Path(folder_paths.get_output_directory()) / DATASETS_FOLDER
