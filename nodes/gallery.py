"""The curation gallery's server side inside ComfyUI: registers the ``/ipa/...`` routes of
``ipa_train.gallery.routes`` on ComfyUI's server (mirrored under ``/api/ipa/...``), with DWPose found where
``nodes/dwpose.py`` finds it for the hand score. The page itself is the frontend extension in ``web/``. No nodes here."""

from __future__ import annotations

import logging
import os

from ..ipa_train.gallery.api import GalleryAPI
from ..ipa_train.gallery.hand_score_jobs import DetectorSource, dwpose_source
from . import dwpose as dwpose_nodes
from .host import prompt_server
from .paths import dataset_root

NODES = []

_registered = False


def hand_score_detector() -> DetectorSource:
    """DWPose from models/dwpose (and extra_model_paths.yaml entries) or comfyui_controlnet_aux's ckpts folder,
    looked up on every request, so files put in place while ComfyUI runs are found without a restart."""
    import folder_paths

    return dwpose_source(
        dwpose_nodes.weight_search_dirs,
        lambda: os.path.join(folder_paths.models_dir, dwpose_nodes.WEIGHTS_FOLDER),
    )


def setup() -> None:
    """Adds the routes once. ComfyUI copies ``PromptServer.instance.routes`` into its app (and under ``/api``)
    after custom nodes are loaded, so registering here, at load time, is in time."""
    global _registered
    if _registered:
        return
    instance = prompt_server()
    if instance is None:  # imported without a running server (scripts, tests of other modules)
        logging.info("ComfyUI-IPA: no PromptServer instance; gallery routes not registered")
        return
    GalleryAPI(dataset_root, hand_scoring=hand_score_detector()).add_routes(instance.routes)
    _registered = True
