"""IPA LoRA Loader: any Wan LoRA layout onto a native MODEL, with a report of what matched.

Keys are converted to ComfyUI's native Wan names by ``ipa_train.lora_keys.to_comfy_native`` (native, diffusers,
DiffSynth/peft, kohya/musubi; VACE blocks included), then applied with ComfyUI's own ``comfy.lora`` code, exactly
what ``LoraLoaderModelOnly`` / ``comfy.sd.load_lora_for_models`` do for the model.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..ipa_train.wan.lora_io import LoraFileError, read_lora_file
from ..ipa_train.wan.lora_meta import base_model_mismatch, summarize_metadata

log = logging.getLogger(__name__)


def _module_prefix(key: str) -> str:
    for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight",
                   ".alpha", ".dora_scale", ".diff", ".diff_b", ".w_norm", ".b_norm"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key.rsplit(".", 1)[0]


def apply_native_lora(model, native: dict, strength: float):
    """ComfyUI's own LoRA application (model only); returns ``(patched_model, matched_weights, unmatched_keys)``."""
    import comfy.lora
    import comfy.lora_convert

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    lora = comfy.lora_convert.convert_lora(native)
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    used_prefixes = {prefix for prefix, target in key_map.items() if target in patches}
    unmatched = sorted(key for key in lora if _module_prefix(key) not in used_prefixes)
    patched = model.clone()
    applied = set(patched.add_patches(patches, strength))
    not_applied = sorted(str(key) for key in patches if key not in applied)
    if not_applied:
        unmatched.extend(f"(no such weight) {key}" for key in not_applied)
    return patched, len(applied), unmatched


def model_width(model):
    diffusion_model = getattr(model.model, "diffusion_model", None)
    return getattr(diffusion_model, "dim", None)


class IPALoRALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="IPALoRALoader",
            display_name="IPA LoRA Loader",
            category="IPA",
            description=(
                "Applies a Wan LoRA to the model in any common layout (ComfyUI native, diffusers, DiffSynth/peft, kohya/musubi, "
                "VACE blocks included). Reports matched and unmatched keys and the LoRA's training metadata."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras")),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01),
            ],
            outputs=[io.Model.Output(display_name="model"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        import folder_paths

        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        try:  # errors name the file: truncated, a pickle (.pt/.ckpt, never loaded), no Wan LoRA key in any layout
            native, conversion, metadata = read_lora_file(path)
        except LoraFileError as exc:
            raise ValueError(str(exc)) from None
        unconverted = list(_report_list(conversion, "unmatched"))
        lines = [f"LoRA {lora_name}"]
        warning = base_model_mismatch(metadata, model_width(model))
        if warning:
            log.warning("IPA LoRA Loader: %s", warning)
            lines.append(f"WARNING: {warning}")
        if strength == 0:
            lines.append("strength 0: the model is returned unchanged")
            patched, matched, unmatched = model, 0, []
        else:
            patched, matched, unmatched = apply_native_lora(model, native, strength)
            # Count source keys only: an .alpha the converter wrote for a file without one is not the file's key.
            written_alphas = {f"{module}.alpha" for module, source in conversion.alpha_from.items() if source != "file"}
            unmatched = [key for key in unmatched if key not in written_alphas]
            if matched == 0:
                raise ValueError(
                    f"no key of {lora_name} matches this model ({len(native)} keys, e.g. {sorted(native)[:3]}). "
                    "Is it a Wan2.1 LoRA of the same size (1.3B/14B) as the model?"
                )
            patched.model_options.setdefault("ipa_loras", []).append({"name": lora_name, "strength": strength, "weights": matched})
        unmatched = unconverted + unmatched
        lines.append(f"strength {strength}: {matched} weights patched, {len(unmatched)} keys unmatched")
        if unmatched:
            shown = unmatched[:20]
            lines.append("unmatched: " + ", ".join(shown) + (f" ... (+{len(unmatched) - 20})" if len(unmatched) > 20 else ""))
            log.warning("IPA LoRA Loader: %d keys of %s did not match: %s", len(unmatched), lora_name, shown)
        lines.append("metadata:\n" + summarize_metadata(metadata))
        report = "\n".join(lines)
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))


def _report_list(report, key):
    if report is None:
        return []
    if isinstance(report, dict):
        return report.get(key, []) or []
    return getattr(report, key, []) or []


NODES = [IPALoRALoader]
