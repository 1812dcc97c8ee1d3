"""Wan2.2-Animate-14B in the trainer: diffusers' ``WanAnimateTransformer3DModel`` loaded from ComfyUI's single file,
and its velocity from the inputs ComfyUI's ``AnimateWanModel`` saw.

ComfyUI (``WanAnimateToVideo`` -> ``WAN21.extra_conds``) gives the diffusion model: ``c_concat`` (4 mask + 16 reference/
continuation latent channels, concatenated to ``x`` on the channel axis), ``clip_fea`` (CLIP-vision penultimate hidden
states), ``pose_latents`` ([B, 16, F - 1, h, w], added to the patch embedding of frames 1..) and ``face_pixel_values``
([B, 3, T, 512, 512] in -1..1; all -1 for the negative). diffusers' forward takes the same four as ``hidden_states =
cat([x_t, c_concat])``, ``encoder_hidden_states_image``, ``pose_hidden_states`` and ``face_pixel_values``.

One difference is bridged here: ComfyUI pads (zeros) or cuts the face motion tokens to the latent frame count, while
diffusers needs the face video to give exactly that many; :func:`animate_velocity` aligns them as ComfyUI does.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from .model import (
    CONFIG_ROOT,
    ModelLoadError,
    _config_dir,
    _count_blocks,
    _strip_wan_prefix,
    read_checkpoint_header,
)

log = logging.getLogger(__name__)

ANIMATE_CONFIG_NAME = "wan2.2-animate-14b"
MODEL_TYPE = "wan_animate"  # the samples' and run's model_type for this model
# The key ComfyUI's model_detection uses to call a Wan file WAN22_Animate (and diffusers' own marker).
ANIMATE_MARKERS = ("face_adapter.fuser_blocks.0.k_norm.weight", "motion_encoder.dec.direction.weight")
FACE_SIZE = 512  # the motion encoder's fixed input resolution
FACE_BLOCK_EVERY = 5  # ComfyUI applies a face-adapter block after blocks 0, 5, 10, ... (fixed in AnimateWanModel)
# ComfyUI's Blur layers store their fixed 4x4 kernels; diffusers rebuilds them (non-persistent buffers).
_BLUR_KERNEL = re.compile(r"^motion_encoder\..*\.kernel$")
# A tiny random-weight WanAnimateTransformer3DModel for the trainer's CPU tests: the real classes and module layout,
# its motion encoder shrunk to 16x16 face frames (ComfyUI fixes 512: the ComfyUI-loadable tiny model is in
# tests/support/animate_tiny.py).
TINY_ANIMATE_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, latent_channels=16, out_channels=16,
    text_dim=32, freq_dim=256, ffn_dim=32, num_layers=5, cross_attn_norm=True, qk_norm="rms_norm_across_heads", image_dim=16,
    added_kv_proj_dim=24, rope_max_seq_len=32, motion_encoder_size=16, motion_style_dim=32, motion_dim=4, motion_encoder_dim=32,
    face_encoder_hidden_dim=16, face_encoder_num_heads=4, inject_face_latents_blocks=5, motion_encoder_batch_size=8,
    motion_encoder_channel_sizes={"4": 32, "8": 32, "16": 16},
)


def model_type_of(transformer) -> str:
    """The samples' ``model_type`` a loaded transformer trains on: ``"wan_animate"`` or ``"wan_vace"``."""
    bare = getattr(transformer, "module", transformer)
    return MODEL_TYPE if hasattr(bare, "face_adapter") and hasattr(bare, "motion_encoder") else "wan_vace"


def is_animate_weights(shapes: Mapping[str, Any]) -> bool:
    """Whether bare or prefixed Wan weight names are a Wan2.2-Animate model."""
    _, bare = _strip_wan_prefix(shapes)
    return any(marker in bare for marker in ANIMATE_MARKERS)


def build_tiny_animate_transformer(seed: int = 0, **overrides):
    """A tiny random-weight ``WanAnimateTransformer3DModel`` (float32, eval mode)."""
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(seed)
    model = WanAnimateTransformer3DModel(**{**TINY_ANIMATE_CONFIG, **overrides})
    with torch.no_grad():  # diffusers initialises the face encoder's padding tokens to zero: make them count
        model.face_encoder.padding_tokens.normal_(0, 0.5)
    return model.eval()


def shipped_animate_config() -> dict:
    with open(CONFIG_ROOT / ANIMATE_CONFIG_NAME / "config.json", "r", encoding="utf-8") as handle:
        return json.load(handle)


def detect_animate_config(shapes: Mapping[str, Any]) -> dict:
    """The diffusers config for ComfyUI-layout Wan2.2-Animate weights (key -> shape, bare or ``model.diffusion_model.``).

    The released 14B returns the shipped config; other sizes (the tiny test models) are derived from the shapes the way
    ComfyUI's model_detection derives them (128-wide heads), the Animate parts sized as ComfyUI fixes them."""
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in shapes.items()}
    _, shapes = _strip_wan_prefix(shapes)
    if not is_animate_weights(shapes) or "patch_embedding.weight" not in shapes:
        raise ModelLoadError(
            "These weights are not Wan2.2-Animate (no face_adapter / motion_encoder weights). Choose "
            "Wan2_2-Animate-14B (e.g. wan2.2_animate_14B_bf16.safetensors) for model_type 'wan_animate'."
        )
    dim, in_channels, *patch = shapes["patch_embedding.weight"]
    num_layers = _count_blocks(shapes, "blocks.")
    config = shipped_animate_config()
    if (dim, num_layers) == (config["num_attention_heads"] * config["attention_head_dim"], config["num_layers"]):
        return config
    if dim % 128:
        raise ModelLoadError(f"A Wan2.2-Animate model {dim} wide: ComfyUI and the trainer need a multiple of 128 (128-wide heads).")
    try:
        _derive_sizes(config, shapes, dim, in_channels, patch, num_layers)
    except KeyError as exc:
        raise ModelLoadError(f"The Wan2.2-Animate weights lack {exc.args[0]}: the file is truncated or not a whole model.") from None
    expected_faces = num_layers // FACE_BLOCK_EVERY
    if _count_blocks(shapes, "face_adapter.fuser_blocks.") != expected_faces:
        raise ModelLoadError(f"The weights have {num_layers} blocks but not {expected_faces} face-adapter blocks: not a whole Wan2.2-Animate model.")
    return config


def _derive_sizes(config: dict, shapes: Mapping[str, tuple], dim: int, in_channels: int, patch: list, num_layers: int) -> None:
    conv1 = shapes["face_encoder.conv1_local.conv.weight"]  # [hidden * heads, motion_dim_out, 3]; ComfyUI: 4 heads
    heads = config["face_encoder_num_heads"]
    config.update(
        added_kv_proj_dim=dim, attention_head_dim=128, num_attention_heads=dim // 128, num_layers=num_layers,
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0], freq_dim=shapes["time_embedding.0.weight"][1],
        image_dim=shapes["img_emb.proj.0.weight"][0], in_channels=in_channels,
        latent_channels=shapes["pose_patch_embedding.weight"][1], out_channels=shapes["head.head.weight"][0] // (patch[0] * patch[1] * patch[2]),
        patch_size=list(patch), text_dim=shapes["text_embedding.0.weight"][1],
        motion_dim=shapes["motion_encoder.dec.direction.weight"][1], motion_encoder_dim=conv1[1],
        face_encoder_hidden_dim=conv1[0] // heads,
    )


def empty_animate_transformer(config: Mapping[str, Any]):
    """A ``WanAnimateTransformer3DModel`` with its weights on the meta device (what the planner counts)."""
    from diffusers import WanAnimateTransformer3DModel

    init = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        return WanAnimateTransformer3DModel(**init)


def _check_animate_layout(name: str, config: Mapping[str, Any], shapes: Mapping[str, tuple]) -> None:
    """Names and shapes against the model before loading: diffusers would leave missing weights uninitialised."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    fake = {k: torch.empty(v, device="meta") for k, v in shapes.items() if not _BLUR_KERNEL.match(k)}
    converted = {k: tuple(v.shape) for k, v in convert_wan_transformer_to_diffusers(fake).items()}
    expected = {k: tuple(v.shape) for k, v in empty_animate_transformer(config).state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected) - {k for k in converted if "norm_added_q" in k})
    mismatched = [k for k in expected if k in converted and converted[k] != expected[k]]
    if missing or unexpected or mismatched:
        raise ModelLoadError(
            f"{name} does not match the Wan2.2-Animate layout: {len(missing)} weights missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(mismatched)} of the wrong shape {mismatched[:3]}. "
            "The file may be truncated, quantised (fp8/GGUF Animate files are not read yet) or a different model."
        )


def load_animate_transformer(path: os.PathLike | str, torch_dtype: torch.dtype = torch.float32):
    """Loads ComfyUI's Wan2.2-Animate single file as diffusers' ``WanAnimateTransformer3DModel`` (eval mode), offline.

    ``path``: a .safetensors file in ComfyUI's / the original layout (keys bare or ``model.diffusion_model.``). The
    14B gets the shipped config (``configs/wan2.2-animate-14b``), other sizes one derived from the weights. fp8 and
    GGUF Animate files are refused (not read yet). Raises ``ModelLoadError`` with what to do."""
    from ..fileio import load_safetensors

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"Model file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path.name}: Wan2.2-Animate is read from .safetensors files only (bf16/fp16/fp32, ComfyUI's layout).")
    shapes, dtypes, _ = read_checkpoint_header(path)
    if any(str(d).upper().startswith(("F8", "FLOAT8")) for d in dtypes.values()) or any(k.endswith("scale_weight") for k in shapes):
        raise ModelLoadError(f"{path.name} stores fp8 weights: the trainer reads Wan2.2-Animate only in bf16/fp16/fp32 "
                             "(e.g. Wan2_2-Animate-14B_bf16.safetensors) for now.")
    prefix, bare = _strip_wan_prefix(shapes)
    config = detect_animate_config(bare)
    _check_animate_layout(path.name, config, bare)
    tensors, _ = load_safetensors(path)
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and not _BLUR_KERNEL.match(k[len(prefix):])}
    del tensors
    model = _from_single_file(state, config, torch_dtype)
    if any(p.is_meta for p in model.parameters()):
        raise ModelLoadError(f"{path.name}: some weights were not loaded (still on the meta device).")
    return model.eval()


def _from_single_file(state: dict, config: dict, torch_dtype):
    from diffusers import WanAnimateTransformer3DModel

    config_dir, tmp = _config_dir(config)
    cast_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = cast_logger.level
    cast_logger.setLevel(logging.ERROR)  # from_single_file's .to(dtype) warns about fp32-kept modules on every load
    try:
        return WanAnimateTransformer3DModel.from_single_file(state, config=config_dir, torch_dtype=torch_dtype, local_files_only=True)
    finally:
        cast_logger.setLevel(level)
        if tmp is not None:
            tmp.cleanup()


@dataclass
class AnimateInputs:
    """What ``AnimateWanModel`` saw besides ``x_t``, the time and the text, batched (leading batch dim B):

    - ``concat_latent`` [B, 20, F, h, w]: ComfyUI's ``c_concat`` (4 mask + 16 latent channels);
    - ``pose_latent`` [B, 16, F - 1, h, w]: ``pose_latents`` (normalised);
    - ``face_pixels`` [B, 3, T, 512, 512] in -1..1 (all -1 for the negative);
    - ``image_embedding`` [B, N, D]: ``clip_fea`` (CLIP-vision penultimate hidden states)."""

    concat_latent: torch.Tensor
    pose_latent: torch.Tensor
    face_pixels: torch.Tensor
    image_embedding: torch.Tensor

    def to(self, device=None, dtype=None) -> "AnimateInputs":
        return AnimateInputs(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def take(self, index) -> "AnimateInputs":
        """The inputs of some batch entries (``index``: a slice, list or tensor of indices)."""
        return AnimateInputs(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(parts: list["AnimateInputs"]) -> "AnimateInputs":
        return AnimateInputs(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(AnimateInputs)})

    def unconditional_face(self) -> "AnimateInputs":
        """The same inputs with the face video all -1, as WanAnimateToVideo gives the negative."""
        return AnimateInputs(self.concat_latent, self.pose_latent, torch.full_like(self.face_pixels, -1.0), self.image_embedding)


def check_animate_inputs(x_t: torch.Tensor, inputs: AnimateInputs, face_size: int = FACE_SIZE) -> None:
    b, _, frames, h, w = x_t.shape
    problems = []
    if tuple(inputs.concat_latent.shape[:1] + inputs.concat_latent.shape[2:]) != (b, frames, h, w):
        problems.append(f"concat_latent {tuple(inputs.concat_latent.shape)} does not match the latent {tuple(x_t.shape)}")
    if tuple(inputs.pose_latent.shape[:1] + inputs.pose_latent.shape[2:]) != (b, frames - 1, h, w):
        problems.append(f"pose_latent {tuple(inputs.pose_latent.shape)} is not [B, 16, F - 1, h, w] for the latent {tuple(x_t.shape)}")
    if tuple(inputs.face_pixels.shape[-2:]) != (face_size, face_size) or inputs.face_pixels.shape[0] != b:
        problems.append(f"face_pixels {tuple(inputs.face_pixels.shape)} is not [B, 3, T, {face_size}, {face_size}]")
    if problems:
        raise ValueError("Wan2.2-Animate inputs do not fit: " + "; ".join(problems))


@contextmanager
def _face_tokens_as_comfy(transformer, latent_frames: int):
    """ComfyUI zero-pads (or cuts) the face encoder's motion tokens to the latent frame count (after one zero frame in
    front); diffusers needs an exact count. A forward hook on the face encoder aligns them the same way."""

    def align(module, args, output):
        want = latent_frames - 1
        if output.shape[1] >= want:
            return output[:, :want]
        pad = output.new_zeros((output.shape[0], want - output.shape[1]) + tuple(output.shape[2:]))
        return torch.cat([output, pad], dim=1)

    handle = transformer.face_encoder.register_forward_hook(align)
    try:
        yield
    finally:
        handle.remove()


def animate_velocity(transformer, x_t: torch.Tensor, t: torch.Tensor, text_embedding: torch.Tensor, inputs: AnimateInputs) -> torch.Tensor:
    """The velocity ``WanAnimateTransformer3DModel`` predicts, as ComfyUI's ``AnimateWanModel`` does for the same inputs.

    ``x_t`` [B, 16, F, h, w] (model space, reference frame(s) in front), ``t`` [B] in 0..1 (timestep ``1000 t``, float),
    ``text_embedding`` [B, L, 4096], ``inputs`` batched :class:`AnimateInputs`. ``transformer`` may be wrapped (DDP):
    it is called as is, its face encoder found on the bare module."""
    bare = getattr(transformer, "module", transformer)
    check_animate_inputs(x_t, inputs, bare.config.motion_encoder_size)
    dtype = x_t.dtype
    with _face_tokens_as_comfy(bare, x_t.shape[2]):
        return transformer(
            hidden_states=torch.cat([x_t, inputs.concat_latent.to(dtype)], dim=1),
            timestep=1000.0 * t,
            encoder_hidden_states=text_embedding,
            encoder_hidden_states_image=inputs.image_embedding.to(dtype),
            pose_hidden_states=inputs.pose_latent.to(dtype),
            face_pixel_values=inputs.face_pixels.to(dtype),  # stored float16 perhaps: computed as x_t is
            return_dict=False,
        )[0]


def checkpoint_face_adapter(transformer) -> int:
    """With gradient checkpointing on, checkpoints each face-adapter block as well, with the function the blocks use.

    diffusers runs the face adapter (a cross-attention after every 5th block) outside the blocks' checkpoints, so each
    would keep its activations for the backward pass: about 1.4 GiB per face block for 14B at 81 frames of 832x480
    (``memory/animate_terms``), 11 GiB for its 8. Returns the number of blocks wrapped."""
    if not getattr(transformer, "gradient_checkpointing", False):
        return 0
    for block in transformer.face_adapter:
        if getattr(block, "_ipa_checkpointed", False):
            continue
        call = _FaceBlockCall(block, block.forward)

        def checkpointed(hidden_states, encoder_hidden_states=None, attention_mask=None, _call=call):
            checkpoint = transformer._gradient_checkpointing_func  # read per call: the blocks' function, as it is now
            if torch.is_grad_enabled() and transformer.gradient_checkpointing and checkpoint is not None:
                return checkpoint(_call, hidden_states, encoder_hidden_states, attention_mask)
            return _call(hidden_states, encoder_hidden_states, attention_mask)

        block.forward = checkpointed
        block._ipa_checkpointed = True
    return len(transformer.face_adapter)


class _FaceBlockCall:
    """A face-adapter block's own forward, as the checkpointing functions take a block: callable, with ``parameters``
    (the trainer's activation offload asks whether the block needs a gradient)."""

    def __init__(self, block, forward):
        self.block, self.forward = block, forward

    def parameters(self):
        return self.block.parameters()

    def __call__(self, *args):
        return self.forward(*args)
