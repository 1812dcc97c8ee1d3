"""GGUF Wan2.1-VACE files (city96's layout, as ComfyUI-GGUF's *Unet Loader (GGUF)* reads them) as a frozen base.

city96's files keep the original Wan key names (``blocks.0.self_attn.q.weight``, prefix stripped), quantise the
linear weights (Q8_0, Q4_K, ...), keep 1-D tensors, ``.modulation`` and small tensors in F32, and store the 5-D
patch embeddings in F32 at full shape (``fix_5d_tensors``). diffusers reads them with its own GGUF support: the
quantised weights stay quantised on the module (``GGUFParameter``) and ``GGUFLinear`` dequantises them in every
forward, as ComfyUI-GGUF's ops do. peft wraps ``GGUFLinear`` like any ``nn.Linear``, so LoRA training on top
works; measured on a tiny Q8_0 file: the forward pass and the LoRA gradients equal those of the same model with
its weights dequantised up front, bit for bit in fp32 on CPU (tests/wan/test_gguf_model.py).
"""

from __future__ import annotations

from pathlib import Path

# city96's loader reshapes tensors with this metadata; diffusers' GGUF reader ignores it.
_ORIG_SHAPE_FIELD = "comfy.gguf.orig_shape."


class GGUFFileError(ValueError):
    """A GGUF file the trainer cannot read as a Wan model; the message says what to use instead."""


def read_gguf_state_dict(path: Path) -> dict:
    """The GGUF file's tensors (quantised ones as diffusers' ``GGUFParameter``), keys without ComfyUI's prefix."""
    try:
        import gguf
    except ImportError:
        raise GGUFFileError(
            f"{path.name} is a GGUF file: reading it needs the 'gguf' package (pip install gguf, the same one ComfyUI-GGUF "
            "uses) in the Python environment that runs the trainer. Or train from the safetensors release "
            "(wan2.1_vace_1.3B_fp16.safetensors / wan2.1_vace_14B_fp16.safetensors)."
        ) from None
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    reader = gguf.GGUFReader(str(path))
    field = reader.get_field("general.architecture")
    arch = str(field.parts[field.data[-1]], encoding="utf-8") if field is not None else None
    if arch not in (None, "wan"):
        raise GGUFFileError(f"{path.name} is a GGUF file of architecture {arch!r}, not Wan ('wan'): choose a Wan2.1-VACE GGUF.")
    reshaped = [name[len(_ORIG_SHAPE_FIELD):] for name in reader.fields if name.startswith(_ORIG_SHAPE_FIELD)]
    if reshaped:
        raise GGUFFileError(
            f"{path.name} stores {len(reshaped)} tensors reshaped (comfy.gguf.orig_shape, e.g. {reshaped[0]}), which city96's "
            "Wan files never do and diffusers cannot undo; use a Wan GGUF made by city96's convert.py, or the safetensors file."
        )
    del reader
    try:
        tensors = load_gguf_checkpoint(str(path))
    except ValueError as exc:  # an unsupported quantisation type: diffusers names it and lists the supported ones
        raise GGUFFileError(f"{path.name}: {exc}") from None
    from .vace_module import strip_prefix

    return strip_prefix(tensors)


def logical_shapes(tensors: dict) -> dict[str, tuple[int, ...]]:
    return {key: tuple(int(n) for n in getattr(value, "quant_shape", value.shape)) for key, value in tensors.items()}


def tensor_kinds(tensors: dict) -> dict[str, int]:
    """How many tensors of each GGUF type (Q8_0, Q4_K, ...) or torch dtype the file holds."""
    kinds: dict[str, int] = {}
    for value in tensors.values():
        kind = getattr(getattr(value, "quant_type", None), "name", None) or str(value.dtype).replace("torch.", "")
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def is_gguf_model(model) -> bool:
    """True when ``model`` holds GGUF-quantised weights (diffusers' GGUF quantiser)."""
    return any(getattr(parameter, "quant_type", None) is not None for parameter in model.parameters())
