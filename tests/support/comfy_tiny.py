"""Tiny random-weight Wan2.1-VACE and Wan VAE files in ComfyUI's own layout, and a ComfyUI set-up in a temporary
folder, for tests that run the pack inside a real ComfyUI checkout (``COMFYUI_PATH``). Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ipa_train.wan.model import TINY_VACE_CONFIG

# A tiny model that ComfyUI's loader reads back as the same network: ComfyUI derives the head count as
# width // 128, the text width is fixed at 4096 and VACE blocks sit at range(0, layers, layers // count).
TINY_COMFY_VACE_CONFIG = {
    **TINY_VACE_CONFIG, "num_attention_heads": 1, "attention_head_dim": 128, "text_dim": 4096, "ffn_dim": 256, "num_layers": 4,
    "rope_max_seq_len": 1024,
}


def build_tiny_comfy_transformer(seed: int = 0, **overrides):
    """A tiny random-weight VACE transformer whose single-file form ComfyUI's UNETLoader reads exactly."""
    from ipa_train.wan.model import build_tiny_transformer

    return build_tiny_transformer(seed, **{**TINY_COMFY_VACE_CONFIG, **overrides})


TINY_DIT = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=2, vace_layers=1, vace_in_dim=96, in_dim=16, out_dim=16)
TEXT_DIM = 4096  # ComfyUI does not detect text_dim from the weights: it assumes Wan's 4096
TINY_VAE_DIM = 8

# diffusers config for the same weights (vace_layers as the list ComfyUI's count implies).
TINY_DIFFUSERS_CONFIG = {
    "_class_name": "WanVACETransformer3DModel",
    "patch_size": [1, 2, 2],
    "num_attention_heads": 1,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": TEXT_DIM,
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
    "vace_layers": [0],
    "vace_in_channels": 96,
}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("gamma") or "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5)


def write_tiny_vace(path: Path, seed: int = 0, **overrides) -> Path:
    """A VaceWanModel state dict with ``model.diffusion_model.`` keys, as ComfyUI's repackaged files have them.
    ``overrides`` change :data:`TINY_DIT` (e.g. ``num_layers=4``: a model of another size)."""
    import comfy.ldm.wan.model

    return _write_tiny_wan(path, comfy.ldm.wan.model.VaceWanModel, seed, {**TINY_DIT, **overrides})


def write_tiny_wan_t2v(path: Path, seed: int = 0) -> Path:
    """A plain Wan2.1 text-to-video model (no VACE blocks) of the tiny size: ComfyUI loads it as ``WAN21``."""
    import comfy.ldm.wan.model

    dit = {key: value for key, value in TINY_DIT.items() if key not in ("vace_layers", "vace_in_dim")}
    return _write_tiny_wan(path, comfy.ldm.wan.model.WanModel, seed, dit)


def _write_tiny_wan(path: Path, model_class, seed: int, dit: dict) -> Path:
    import comfy.ops
    from safetensors.torch import save_file

    with torch.inference_mode(False):
        model = model_class(text_dim=TEXT_DIM, operations=comfy.ops.disable_weight_init, **dit)
        _randomize(model, seed)
        state = {f"model.diffusion_model.{key}": value.detach().float().contiguous() for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_vae(path: Path, seed: int = 1) -> Path:
    import comfy.ldm.wan.vae
    from safetensors.torch import save_file

    with torch.inference_mode(False):
        vae = comfy.ldm.wan.vae.WanVAE(dim=TINY_VAE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                       temperal_downsample=[False, True, True], dropout=0.0)
        _randomize(vae, seed)
        state = {key: value.detach().float().contiguous() for key, value in vae.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_diffusers_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_DIFFUSERS_CONFIG))
    return folder


class TinyComfy:
    """ComfyUI's folders pointed at ``base``, tiny model files in place, helpers to load them like the graph does."""

    def __init__(self, base: Path):
        import folder_paths

        self.base = Path(base)
        self.output = self.base / "output"
        self.output.mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(self.output))
        folder_paths.set_temp_directory(str(self.base / "temp"))
        self.diffusion_models = self.base / "models" / "diffusion_models"
        self.vae_dir = self.base / "models" / "vae"
        self.loras = self.base / "models" / "loras"
        for kind, folder in (("diffusion_models", self.diffusion_models), ("vae", self.vae_dir), ("loras", self.loras)):
            folder.mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path(kind, str(folder), is_default=True)
        self.unet_name = "tiny_wan21_vace.safetensors"
        self.vae_name = "tiny_wan21_vae.safetensors"
        if not (self.diffusion_models / self.unet_name).exists():
            write_tiny_vace(self.diffusion_models / self.unet_name)
        if not (self.vae_dir / self.vae_name).exists():
            write_tiny_vae(self.vae_dir / self.vae_name)

    @property
    def unet_path(self) -> Path:
        return self.diffusion_models / self.unet_name

    def load_model(self):
        import nodes

        return nodes.UNETLoader().load_unet(self.unet_name, "default")[0]

    def load_vae(self):
        import nodes

        return nodes.VAELoader().load_vae(self.vae_name)[0]


# Two experts of a tiny Wan2.2-VACE-Fun A14B: the same architecture, different random weights; the names carry
# "high_noise" / "low_noise" as Comfy-Org's repackaged files do.
TINY_EXPERT_NAMES = {"high": "tiny_wan2.2_fun_vace_high_noise.safetensors", "low": "tiny_wan2.2_fun_vace_low_noise.safetensors"}
TINY_EXPERT_SEEDS = {"high": 20, "low": 21}


def write_tiny_vace_experts(folder: Path) -> tuple[Path, Path]:
    """The two expert files (``write_tiny_vace`` with two seeds) in ``folder``: ``(high_path, low_path)``. Files
    already there are kept (the same seeds write the same bytes)."""
    paths = []
    for expert in ("high", "low"):
        path = Path(folder) / TINY_EXPERT_NAMES[expert]
        if not path.exists():
            write_tiny_vace(path, seed=TINY_EXPERT_SEEDS[expert])
        paths.append(path)
    return paths[0], paths[1]


class TinyComfyExperts(TinyComfy):
    """:class:`TinyComfy` plus the two tiny experts in ``models/diffusion_models``, loaded by the real UNETLoader."""

    def __init__(self, base: Path):
        super().__init__(base)
        self.high_path, self.low_path = write_tiny_vace_experts(self.diffusion_models)
        self.high_name, self.low_name = self.high_path.name, self.low_path.name

    def load_expert(self, expert: str):
        """``expert``: "high" or "low"; a fresh ModelPatcher from ``UNETLoader`` (weight dtype "default")."""
        import nodes

        return nodes.UNETLoader().load_unet(TINY_EXPERT_NAMES[expert], "default")[0]

    def load_high(self):
        return self.load_expert("high")

    def load_low(self):
        return self.load_expert("low")


def text_conditioning(tokens: int = 512, real: int = 7, seed: int = 3) -> list:
    """A positive conditioning like CLIPTextEncode's for Wan: [1, tokens, 4096] with zero rows after ``real``."""
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.zeros(1, tokens, TEXT_DIM)
    tensor[:, :real] = torch.randn(1, real, TEXT_DIM, generator=generator) * 0.2
    return [[tensor, {}]]


def pose_video(frames: int, height: int, width: int, seed: int = 4) -> torch.Tensor:
    """A control video: moving white blocks on black, IMAGE layout ``[T, H, W, 3]``."""
    video = torch.zeros(frames, height, width, 3)
    for t in range(frames):
        x = (4 + 3 * t) % max(width - 8, 1)
        video[t, height // 4 : height // 4 + 8, x : x + 8] = 1.0
    return video


def reference_image(height: int, width: int, seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, height, width, 3, generator=generator)


def load_pack_cpu():
    """``conftest.load_pack()`` with ComfyUI told to run on the CPU when there is no GPU (what ``--cpu`` does)."""
    import sys

    from conftest import comfyui_path, load_pack

    path = comfyui_path()
    if path is not None and str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if not torch.cuda.is_available():
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    return load_pack()


def write_tiny_lora(path: Path, seed: int = 0, rank: int = 4, alpha: float = 2.0, blocks: int = 2, dim: int = TINY_DIT["dim"],
                    projections: tuple = ("q", "v")) -> Path:
    """A LoRA on a tiny model's main-block self-attention ``projections`` (default the tiny VACE model's q and v), in
    ComfyUI's native layout, with non-zero up weights."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block in range(blocks):
        for proj in projections:
            base = f"diffusion_model.blocks.{block}.self_attn.{proj}"
            state[f"{base}.lora_A.weight"] = torch.randn(rank, dim, generator=generator) * 0.2
            state[f"{base}.lora_B.weight"] = torch.randn(dim, rank, generator=generator) * 0.2
            state[f"{base}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def comfy_velocities(model, candidate, x_t_list, sigmas, shift: float = 8.0) -> list:
    """ComfyUI's own velocity prediction of ``model`` (a ModelPatcher, with whatever patches it carries), through the
    sampler's conditioning path, at the given noisy latents (model space) and sigmas."""
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    model = ModelSamplingSD3().patch(model, shift)[0]
    extra = {"vace_frames": [candidate.vace_frames], "vace_mask": [candidate.vace_mask], "vace_strength": [candidate.vace_strength]}
    positive = [[candidate.text_embedding, extra]]
    outputs = []

    def evaluate(model_wrap, x, sigmas_in, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for x_t, sigma in zip(x_t_list, sigmas):
            denoised = model_wrap(x_t.unsqueeze(0).to(x), sigma * s_in, **extra_args)
            outputs.append(((x_t.unsqueeze(0).to(x) - denoised) / sigma)[0].detach().float().cpu())
        return x

    sampler = comfy.samplers.KSAMPLER(evaluate)
    latent = torch.zeros_like(candidate.latent)
    comfy.samplers.sample(model, torch.zeros_like(latent), positive, positive, 1.0, model.load_device, sampler,
                          torch.tensor([1.0, 0.0]), model_options=model.model_options, latent_image=latent, seed=0)
    return outputs
