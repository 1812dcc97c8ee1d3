"""Access to the running ComfyUI server, if any."""

from __future__ import annotations

import sys


def prompt_server():
    """``PromptServer.instance`` when ComfyUI's server is running, else ``None``.

    Looked up in ``sys.modules`` rather than imported: importing ``server`` without a running ComfyUI (scripts,
    tests that import ``nodes`` first) fails, because ComfyUI's ``nodes`` puts ``comfy/`` on ``sys.path`` and its
    ``utils.py`` then shadows the ``utils`` package that ``server`` needs.
    """
    server = sys.modules.get("server")
    server_class = getattr(server, "PromptServer", None)
    return getattr(server_class, "instance", None)
