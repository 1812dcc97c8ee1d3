"""The curation gallery's server side inside ComfyUI: registers the ``/ipa/...`` routes of
``ipa_train.gallery_api`` on ComfyUI's server (mirrored under ``/api/ipa/...``). The page itself is the
frontend extension in ``web/``. No nodes here."""

from __future__ import annotations

import logging

from ..ipa_train.gallery_api import GalleryAPI
from .host import prompt_server
from .paths import dataset_root

NODES = []

_registered = False


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
    GalleryAPI(dataset_root).add_routes(instance.routes)
    _registered = True
