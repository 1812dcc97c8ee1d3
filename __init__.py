"""ComfyUI-IPA: Implicit Preference Alignment for Wan2.1-VACE, as a ComfyUI custom-node pack.

ComfyUI imports this file. It stays cheap: the node modules import only torch/numpy and the
host-independent core in ``ipa_train``; models are loaded when a node runs, never at import.
Nodes are registered through the V3 entry point (no ``NODE_CLASS_MAPPINGS`` here, because a module
that defines both gets only the V1 mapping registered).
"""

WEB_DIRECTORY = "./web"

try:  # ComfyUI present: expose the V3 entry point.
    import comfy_api.v0_0_2  # noqa: F401  (the versioned API the nodes import: nodes/__init__.py)
except ImportError:  # Imported outside ComfyUI (tests, the trainer process): nothing to register.
    comfy_entrypoint = None
else:
    from .nodes import comfy_entrypoint  # noqa: F401

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
