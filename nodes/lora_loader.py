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
from dataclasses import dataclass
from typing import Optional

import torch
from comfy_api.v0_0_2 import io, ui

from ..ipa_train.wan.lora_io import LoraFileError, read_lora_file
from ..ipa_train.wan.lora_meta import (
    EXPERT_WORDS,
    EXPERTS,
    KEY_ORDER,
    WAN_SIZES,
    base_model_mismatch,
    expert_from_metadata,
    expert_from_name,
    pair_partner_name,
    size_tag_from_name,
    training_metadata,
)
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
                "VACE blocks included). Reports matched and unmatched keys and the LoRA's training metadata. With a two-expert "
                "model (Wan2.2-VACE-Fun A14B) connect both experts: each LoRA goes to the expert its metadata names, and a "
                "<name>_high / <name>_low pair is applied each to its own."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The Wan VACE model (from Load Diffusion Model) to apply the LoRA to; with "
                                                "model_low_noise connected, the high-noise expert."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA in models/loras; IPA Train LoRA saves to ipa/<name>.safetensors, and for two "
                                       "experts ipa/<name>_low.safetensors and/or ipa/<name>_high.safetensors: pick either "
                                       "file of a pair, its partner is found next to it."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly the LoRA applies (1 = as trained, 0 = not at all); both files of a pair."),
                io.Model.Input("model_low_noise", optional=True,
                               tooltip="The low-noise expert of a two-expert model (Wan2.2-VACE-Fun A14B). Connected, each LoRA "
                                       "goes to the expert its metadata (ipa.expert) or name names; one naming neither goes "
                                       "to both."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model (high-noise expert) with the LoRA weights meant for "
                                                              "it that fit it applied."),
                io.String.Output(display_name="report", tooltip="Which LoRA went to which expert, weights applied, keys that "
                                                                "did not match or fit, base-model warnings, the training settings."),
                io.Model.Output(display_name="model_low_noise", tooltip="The low-noise expert with its LoRA applied (nothing "
                                                                        "when model_low_noise is not connected)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, lora_name, strength, **_):
        """Re-run when the file (or its pair's partner) changes under the same name: a retrained LoRA replaces
        ipa/<name>.safetensors."""
        return (lora_name, strength, _file_stamp(lora_name), _file_stamp(pair_partner_name(lora_name)))

    @classmethod
    def execute(cls, model, lora_name, strength, model_low_noise=None) -> io.NodeOutput:
        first = read_lora(lora_name)
        if model_low_noise is None:
            patched, lines = apply_lora_file(model, first, strength)
            if first.expert:
                lines.insert(1, f"trained for the {EXPERT_WORDS[first.expert]} expert of a two-expert model "
                                f"({first.expert_source}); applied to model, the only model connected: that must be "
                                f"the {EXPERT_WORDS[first.expert]} expert")
            report = "\n".join(lines)
            return io.NodeOutput(patched, report, None, ui=ui.PreviewText(report))
        routes = route_to_experts(first)
        sockets = {"high": model, "low": model_low_noise}
        checks = [line for lora, _ in routes if (line := check_expert_socket(lora, dict(sockets)))]
        summary, sections = [], []
        for lora, experts in routes:
            for expert in experts:
                sockets[expert], lines = apply_lora_file(sockets[expert], lora, strength)
                sections.append("\n".join(lines))
            summary.append(f"{lora.name} -> {' and '.join(_SOCKETS[e] for e in experts)} ({lora.expert_source})")
        for expert in EXPERTS:
            if not any(expert in experts for _, experts in routes):
                summary.append(f"{_SOCKETS[expert]}: no LoRA for the {EXPERT_WORDS[expert]} expert, returned unchanged")
        report = "\n".join(["applied: " + "; ".join(summary)] + checks + sections)
        return io.NodeOutput(sockets["high"], report, sockets["low"], ui=ui.PreviewText(report))


_SOCKETS = {"high": "model (high-noise expert)", "low": "model_low_noise (low-noise expert)"}


def _file_stamp(lora_name):
    import folder_paths

    path = folder_paths.get_full_path("loras", lora_name) if lora_name else None
    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    return (stat.st_mtime_ns, stat.st_size) if stat else None


@dataclass
class LoraFile:
    """One LoRA file as read for applying: native keys, the conversion report, metadata, and its expert."""

    name: str
    native: dict
    conversion: object
    metadata: dict
    expert: Optional[str]  # "high" / "low" from the metadata, else from the name; None: neither says
    expert_source: str  # how the expert was told, for the report


def read_lora(lora_name: str) -> LoraFile:
    """Reads a LoRA named by the widget; refuses a file whose name and metadata claim different experts."""
    path = model_file("loras", lora_name, "lora_name")  # inside ComfyUI's loras folders, links included
    try:  # errors name the file: truncated, a pickle (.pt/.ckpt, never loaded), no Wan LoRA key in any layout
        native, conversion, metadata = read_lora_file(path)
    except LoraFileError as exc:
        raise ValueError(str(exc)) from None
    recorded, named = expert_from_metadata(metadata), expert_from_name(lora_name)
    if recorded and named and recorded != named:
        right = pair_partner_name(lora_name)
        raise ValueError(
            f"{lora_name} is named for the {EXPERT_WORDS[named]} expert, but its metadata (ipa.expert = {recorded}) says "
            f"it was trained for the {EXPERT_WORDS[recorded]} expert: the files of a pair were swapped or renamed. Rename "
            f"it to {os.path.basename(right)} (and its partner the other way), then pick it again")
    if recorded:
        return LoraFile(lora_name, native, conversion, metadata, recorded, "ipa.expert in its metadata")
    if named:
        return LoraFile(lora_name, native, conversion, metadata, named, "from its name; no ipa.expert in its metadata")
    return LoraFile(lora_name, native, conversion, metadata, None, "no expert in its metadata or name: applied to both")


def check_expert_socket(lora: LoraFile, sockets: dict) -> Optional[str]:
    """Are the experts connected the right way round for this LoRA? Its metadata names the file it was trained on
    (``ipa.base_model``); when that file is in ComfyUI's diffusion_models, its weights fingerprint (the one the sampler
    records, ``wan.fingerprint``) is compared with each connected expert's. The other expert's socket holding those
    weights is an error naming the fix; neither holding them (another precision of the file, say) is a report line."""
    import folder_paths

    from ..ipa_train.wan.fingerprint import file_weights_fingerprint
    from .model_identity import base_weights_fingerprint

    base = str(training_metadata(lora.metadata).get("base_model") or "").strip()
    path = folder_paths.get_full_path("diffusion_models", base) if lora.expert and base else None
    if not path or not base.lower().endswith(".safetensors"):
        return None
    try:
        trained_on = file_weights_fingerprint(path)
    except (OSError, ValueError) as exc:
        return f"expert check: {base} could not be read ({exc}); not checked"
    own, other = lora.expert, next(expert for expert in EXPERTS if expert != lora.expert)
    if base_weights_fingerprint(sockets[own]) == trained_on:
        return f"expert check: {_SOCKETS[own]} holds {base}, the model {lora.name} was trained on"
    if base_weights_fingerprint(sockets[other]) == trained_on:
        raise ValueError(
            f"{lora.name} was trained on the {EXPERT_WORDS[own]} expert {base}, but that model is connected to "
            f"{_SOCKETS[other].split(' ')[0]}: the experts are connected the other way round. Connect the high-noise expert "
            "(..._high_noise_...) to model and the low-noise one (..._low_noise_...) to model_low_noise")
    return (f"expert check: neither connected model holds the weights of {base}, the model {lora.name} was trained on "
            "(another file or precision of it?)")


def route_to_experts(first: LoraFile) -> list[tuple[LoraFile, list[str]]]:
    """Which expert(s) each LoRA goes to: a LoRA naming an expert goes to it, with its pair's partner (found by name
    next to it) going to the other; a LoRA naming none goes to both."""
    import folder_paths

    if first.expert is None:
        return [(first, list(EXPERTS))]
    routes = [(first, [first.expert])]
    partner_name = pair_partner_name(first.name)
    if partner_name and folder_paths.get_full_path("loras", partner_name):
        partner = read_lora(partner_name)  # its name claims the other expert; read_lora refuses metadata saying otherwise
        routes.append((partner, [partner.expert]))
    return routes


def apply_lora_file(model, lora: LoraFile, strength: float):
    """One LoRA onto one model, ComfyUI's own way; returns the patched model and the report's lines."""
    native, conversion, metadata, lora_name = lora.native, lora.conversion, lora.metadata, lora.name
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
        entry = {"name": lora_name, "strength": strength, "weights": matched}
        if lora.expert:
            entry["expert"] = lora.expert
        patched.model_options.setdefault("ipa_loras", []).append(entry)
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
    return patched, lines


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
