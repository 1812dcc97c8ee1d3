"""ComfyUI adapters for the pack. Each module owns one feature area and exports ``NODES``.

A module may also define ``setup()`` (register model folders, server routes); it is called once from
``comfy_entrypoint``, because ComfyUI v0.8 never calls ``ComfyExtension.on_load``.
"""

# The versioned API (comfy_api.v0_0_2), not ``latest``, which may change under us: every node module imports it.
# ComfyUI v0.8.0 (the oldest supported) and v0.28.0 both ship v0_0_2; there it re-exports latest's io/ui/ComfyExtension.
from comfy_api.v0_0_2 import ComfyExtension, io

from . import animate_sampler, collector, dwpose, gallery, hand_mask, lora_loader, model_loader, train_lora, vace_sampler

NODE_MODULES = [
    dwpose,
    hand_mask,
    model_loader,
    vace_sampler,
    animate_sampler,
    collector,
    train_lora,
    lora_loader,
    gallery,
]


class IPAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for module in NODE_MODULES for node in module.NODES]


async def comfy_entrypoint() -> IPAExtension:
    for module in NODE_MODULES:
        setup = getattr(module, "setup", None)
        if setup is not None:
            setup()
    return IPAExtension()
