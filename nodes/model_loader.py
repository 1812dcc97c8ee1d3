"""IPA Load Wan + VACE Module: a Wan2.1 text-to-video file and kijai's separate VACE module as one native
Wan2.1-VACE MODEL.

ComfyUI v0.8.0's own loaders read only complete files (a VACE module alone is not detected as any model). This node
merges the pair with ``ipa_train.wan.vace_module.merge_vace_module``, the function the trainer uses for
``vace_module``, and builds the model with ComfyUI's ``load_diffusion_model_state_dict`` (what UNETLoader does after
reading its file), so the sampling model and the trainer's base are the same weights.
"""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..ipa_train.wan.vace_module import VaceModuleError, merge_vace_module
from .paths import model_file

WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]  # UNETLoader's choices, same meaning


def _model_options(weight_dtype: str) -> dict:
    options: dict = {}
    if weight_dtype.startswith("fp8_e4m3fn"):
        options["dtype"] = torch.float8_e4m3fn
        if weight_dtype.endswith("_fast"):
            options["fp8_optimizations"] = True
    elif weight_dtype == "fp8_e5m2":
        options["dtype"] = torch.float8_e5m2
    return options


class IPALoadWanVaceModule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        files = folder_paths.get_filename_list("diffusion_models")
        return io.Schema(
            node_id="IPALoadWanVaceModule",
            display_name="IPA Load Wan + VACE Module",
            category="IPA",
            description=(
                "Loads a Wan2.1 text-to-video model and a separate VACE module (kijai's Wan2_1-VACE_module_*.safetensors) "
                "as one Wan2.1-VACE model, the same weights IPA Train LoRA builds from base_model + vace_module."
            ),
            inputs=[
                io.Combo.Input("unet_name", options=files, tooltip="The Wan2.1 text-to-video file (models/diffusion_models)."),
                io.Combo.Input("vace_module", options=files,
                               tooltip="The VACE module of the same size (models/diffusion_models): VACE blocks only."),
                io.Combo.Input("weight_dtype", options=WEIGHT_DTYPES, default="default",
                               tooltip="As in Load Diffusion Model. fp8 here makes the sampling model differ from the trainer's "
                                       "base: the trainer refuses such samples unless allow_other_base is set."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="Wan2.1-VACE, for IPA VACE Sampler or the native VACE graph.")],
        )

    @classmethod
    def execute(cls, unet_name, vace_module, weight_dtype="default") -> io.NodeOutput:
        import comfy.sd
        import comfy.utils

        for name in (unet_name, vace_module):
            if not name.lower().endswith(".safetensors"):
                raise ValueError(f"{name}: only .safetensors files are loaded here (no pickle files, no GGUF)")
        base_path = model_file("diffusion_models", unet_name, "unet_name")
        module_path = model_file("diffusion_models", vace_module, "vace_module")
        base, metadata = comfy.utils.load_torch_file(base_path, safe_load=True, return_metadata=True)
        module = comfy.utils.load_torch_file(module_path, safe_load=True)
        try:
            merged = merge_vace_module(base, module, base_name=unet_name, module_name=vace_module)
        except VaceModuleError as exc:
            raise ValueError(str(exc)) from None
        del base, module
        model = comfy.sd.load_diffusion_model_state_dict(merged, model_options=_model_options(weight_dtype), metadata=metadata)
        if model is None:
            raise RuntimeError(f"ComfyUI could not build a model from {unet_name} + {vace_module}")
        return io.NodeOutput(model)


NODES = [IPALoadWanVaceModule]
