"""IPA LoRA Loader: any Wan LoRA layout onto a native MODEL, with a report of what really applied.

Keys are converted to ComfyUI's native Wan names by ``ipa_train.wan.lora_keys.to_comfy_native`` (native, diffusers,
DiffSynth/peft, kohya/musubi; VACE blocks included), then applied with ComfyUI's own ``comfy.lora`` code, exactly
what ``LoraLoaderModelOnly`` / ``comfy.sd.load_lora_for_models`` do for the model.

ComfyUI accepts a patch when its weight *name* exists and finds out only when the model is loaded whether its shape
fits (it then logs "ERROR lora ... shape ... is invalid" and leaves that weight unchanged). So before adding the
patches, each one is dry-run through ComfyUI's own ``comfy.lora.calculate_weight`` on a meta tensor of the weight's
shape (no memory, no compute): what fails there would have failed at load time, and is left out and reported.
"""

from __future__ import annotations

import logging
import os
import threading

import torch
from comfy_api.v0_0_2 import io, ui

from ..ipa_train.wan.lora_io import LoraFileError, read_lora_file
from ..ipa_train.wan.lora_meta import KEY_ORDER, WAN_SIZES, base_model_mismatch, size_tag_from_name, training_metadata
from .paths import model_file

log = logging.getLogger(__name__)


def _module_prefix(key: str) -> str:
    for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight",
                   ".alpha", ".dora_scale", ".diff", ".diff_b", ".w_norm", ".b_norm"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key.rsplit(".", 1)[0]


class _ThisThreadsLogRecords(logging.Filter):
    """Collects (and holds back) the log records this thread writes on the root logger, where ComfyUI's weight
    patching reports failures; other threads' records pass untouched."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())
        return False


def misfit_patches(model, patches: dict, strength: float) -> dict:
    """``{patch key: ComfyUI's message}`` for the patches that would not apply to this model's weights (a shape that
    does not fit), found by running ComfyUI's own ``calculate_weight`` on meta tensors of the weights' shapes."""
    import comfy.lora

    state = model.model.state_dict()
    misfits = {}
    root = logging.getLogger()
    for key, patch in patches.items():
        name, offset = (key, None) if isinstance(key, str) else (key[0], key[1])
        weight = state.get(name)
        if weight is None:
            continue  # no such weight: add_patches drops it and it is reported as unmatched
        meta = torch.empty(weight.shape, dtype=torch.float32, device="meta")
        records = _ThisThreadsLogRecords()
        root.addFilter(records)
        try:
            comfy.lora.calculate_weight([(strength, patch, 1.0, offset, None)], meta, name)
        except Exception as exc:  # a failure ComfyUI would not have caught either
            records.messages.append(f"{type(exc).__name__}: {exc}")
        finally:
            root.removeFilter(records)
        if records.messages:
            misfits[key] = records.messages[0]
    return misfits


def apply_native_lora(model, native: dict, strength: float):
    """ComfyUI's own LoRA application (model only), keeping only patches that really apply.

    Returns ``(patched_model, applied_weights, unmatched_keys, misfits)``: ``misfits`` maps each weight whose LoRA
    shape does not fit this model to ComfyUI's error message; those are not added."""
    import comfy.lora
    import comfy.lora_convert

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    lora = comfy.lora_convert.convert_lora(native)
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    used_prefixes = {prefix for prefix, target in key_map.items() if target in patches}
    unmatched = sorted(key for key in lora if _module_prefix(key) not in used_prefixes)
    misfits = misfit_patches(model, patches, strength)
    fitting = {key: patch for key, patch in patches.items() if key not in misfits}
    patched = model.clone()
    applied = set(patched.add_patches(fitting, strength))
    not_applied = sorted(str(key) for key in fitting if key not in applied)
    if not_applied:
        unmatched.extend(f"(no such weight) {key}" for key in not_applied)
    return patched, len(applied), unmatched, {_weight_name(key): message for key, message in misfits.items()}


def _weight_name(key) -> str:
    return key if isinstance(key, str) else str(key[0])


def _lora_width(state_dict: dict):
    """The model width a LoRA was made for: the input size of a main-block self-attention down matrix."""
    for key, value in state_dict.items():
        if ("self_attn.q" in key or "attn1.to_q" in key or "self_attn_q" in key) and ("lora_A" in key or "lora_down" in key) and value.dim() == 2:
            return int(value.shape[1])
    return None


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
                io.Model.Input("model", tooltip="The Wan2.1-VACE model (from Load Diffusion Model) to apply the LoRA to."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA in models/loras; IPA Train LoRA saves to ipa/<name>.safetensors."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly the LoRA applies (1 = as trained, 0 = not at all)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the LoRA's weights that fit it applied."),
                io.String.Output(display_name="report", tooltip="Weights applied, keys that did not match or fit, "
                                                                "base-model warnings, and the LoRA's training settings."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, lora_name, strength, **_):
        """Re-run when the file changes under the same name (a retrained LoRA replaces ipa/<name>.safetensors)."""
        import folder_paths

        path = folder_paths.get_full_path("loras", lora_name)
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        return (lora_name, strength, stat.st_mtime_ns if stat else None, stat.st_size if stat else None)

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        path = model_file("loras", lora_name, "lora_name")  # inside ComfyUI's loras folders, links included
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
        misfits = {}
        if strength == 0:
            lines.append("strength 0: the model is returned unchanged")
            patched, matched, unmatched = model, 0, []
        else:
            patched, matched, unmatched, misfits = apply_native_lora(model, native, strength)
            # Count source keys only: an .alpha the converter wrote for a file without one is not the file's key.
            written_alphas = {f"{module}.alpha" for module, source in conversion.alpha_from.items() if source != "file"}
            unmatched = [key for key in unmatched if key not in written_alphas]
            if matched == 0:
                raise ValueError(_nothing_applies(lora_name, native, metadata, misfits, model_width(model)))
            patched.model_options.setdefault("ipa_loras", []).append({"name": lora_name, "strength": strength, "weights": matched})
        unmatched = unconverted + unmatched
        lines.append(f"strength {strength}: {matched} weights patched, {len(unmatched)} keys unmatched"
                     + (f", {len(misfits)} weights left out (their shapes do not fit this model)" if misfits else ""))
        if misfits:
            first, message = next(iter(misfits.items()))
            text = f"{len(misfits)} weights of {lora_name} do not fit this model and were left out, e.g. {first}: {message}"
            log.warning("IPA LoRA Loader: %s", text)
            lines.append(f"WARNING: {text}")
        if unmatched:
            shown = unmatched[:20]
            lines.append("unmatched: " + ", ".join(shown) + (f" ... (+{len(unmatched) - 20})" if len(unmatched) > 20 else ""))
            log.warning("IPA LoRA Loader: %d keys of %s did not match: %s", len(unmatched), lora_name, shown)
        lines.append(base_model_words(metadata, model_width(model)))
        lines.append(settings_report(metadata))
        report = "\n".join(lines)
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))


_UNSET = ("", "none", "null", "[]", "{}")


def settings_report(metadata, max_value: int = 120) -> str:
    """The LoRA's training settings for a person: only the keys that are set (an empty ``init_lora`` or
    ``vace_module`` says nothing), without the fingerprints (``*_hash``: for the trainer's checks, not for reading)."""
    settings = training_metadata(metadata)
    keys = [key for key in KEY_ORDER if key in settings] + sorted(key for key in settings if key not in KEY_ORDER)
    lines = []
    for key in keys:
        value = str(settings[key]).strip()
        if key.endswith("_hash") or value.lower() in _UNSET:
            continue
        lines.append(f"{key}: {value if len(value) <= max_value else value[: max_value - 3] + '...'}")
    return "training settings:\n" + "\n".join(lines) if lines else "training settings: none recorded in this LoRA"


def base_model_words(metadata, width) -> str:
    """One sentence: does the LoRA's base model (from its metadata) match the model it is applied to? Compared by
    model size (the transformer's width), the only thing both sides reliably know."""
    settings = training_metadata(metadata)
    base = str(settings.get("base_model") or settings.get("ss_base_model_version") or "").strip()
    current = WAN_SIZES.get(width or -1)
    trained = size_tag_from_name(base)
    name = os.path.basename(base) if base else ""
    if not name:
        return "base model: not recorded in the LoRA, so it cannot be checked (the weights applied above fit this model's shapes)"
    if not trained or not current:
        return f"base model: trained on {name}; its size could not be compared with this model's"
    if trained == current:
        return f"base model: matches (trained on {name}, Wan2.1 {trained}; this model is Wan2.1 {current})"
    return f"base model: does NOT match (trained on {name}, Wan2.1 {trained}; this model is Wan2.1 {current})"


def _nothing_applies(lora_name, state_dict, metadata, misfits, width) -> str:
    if not misfits:
        return (f"no key of {lora_name} matches this model ({len(state_dict)} keys, e.g. {sorted(state_dict)[:3]}). "
                "Is it a Wan2.1 LoRA of the same size (1.3B/14B) as the model?")
    first, message = next(iter(misfits.items()))
    made_for = _lora_width(state_dict)
    base = training_metadata(metadata).get("base_model")
    parts = [f"none of the {len(misfits)} weights of {lora_name} fit this model: their shapes differ "
             f"(e.g. {first}: {message})."]
    if made_for and width and made_for != width:
        parts.append(f"The LoRA was made for a Wan model of width {made_for}; this model's width is {width}.")
    if base:
        parts.append(f"Its metadata names the base model {base!r}: load that model (or train a LoRA on this one).")
    else:
        parts.append("Load the base model it was trained on (Wan2.1 1.3B and 14B LoRAs do not mix).")
    return " ".join(parts)


def _report_list(report, key):
    if report is None:
        return []
    if isinstance(report, dict):
        return report.get(key, []) or []
    return getattr(report, key, []) or []


NODES = [IPALoRALoader]
