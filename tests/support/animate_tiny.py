"""Tiny random-weight Wan2.2-Animate models in ComfyUI's layout (``comfy.ldm.wan.model_animate.AnimateWanModel``), for
tests that load them in real ComfyUI (``UNETLoader`` detects WAN22_Animate) and in the trainer (diffusers'
``WanAnimateTransformer3DModel`` through ``ipa_train.wan.animate.load_animate_transformer``). Nothing is downloaded.

The motion encoder (face video 512x512 -> 512-d features) and the face encoder (1024-wide, 4 heads) have fixed sizes in
ComfyUI, so even the tiny model carries about 35 M parameters there; the transformer itself is tiny (one 128-wide head,
ComfyUI derives heads as width // 128). Five blocks give one face-adapter block (ComfyUI: one every 5 blocks)."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 4096  # ComfyUI does not detect the text width: it assumes Wan's 4096
CLIP_DIM = 1280  # CLIP-vision (ViT-H) penultimate width: ComfyUI's img_emb is MLPProj(1280, dim)
TINY_ANIMATE_DIT = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=5, in_dim=36, out_dim=16)
FACE_SIZE = 512  # the motion encoder's fixed input size


def _randomize(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("gamma") or "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            elif name.startswith("motion_encoder.") and param.dim() > 1:
                # unit variance: its EqualConv2d / EqualLinear layers divide by sqrt(fan_in) themselves, and a second
                # division made the encoder's output constant, so no test saw the face video
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                fan_in = param[0].numel() if param.dim() > 1 else param.numel()
                param.copy_(torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5)


def tiny_animate_state_dict(seed: int = 0) -> dict:
    """A tiny ``AnimateWanModel`` state dict with ``model.diffusion_model.`` keys (ComfyUI's repackaged layout)."""
    import comfy.ldm.wan.model_animate
    import comfy.ops

    with torch.inference_mode(False):
        model = comfy.ldm.wan.model_animate.AnimateWanModel(text_dim=TEXT_DIM, operations=comfy.ops.disable_weight_init,
                                                            **TINY_ANIMATE_DIT)
        _randomize(model, seed)
        return {f"model.diffusion_model.{k}": v.detach().float().contiguous() for k, v in model.state_dict().items()}


def write_tiny_animate(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    state = tiny_animate_state_dict(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_animate_lora(path: Path, seed: int = 0, rank: int = 4, alpha: float = 2.0) -> Path:
    """A LoRA on the tiny model's main-block self-attention q, k and v, in ComfyUI's native layout, non-zero."""
    from support.comfy_tiny import write_tiny_lora

    return write_tiny_lora(path, seed, rank, alpha, blocks=TINY_ANIMATE_DIT["num_layers"], dim=TINY_ANIMATE_DIT["dim"],
                           projections=("q", "k", "v"))


class TinyAnimateComfy:
    """ComfyUI's folders pointed at ``base`` with a tiny Animate model, the tiny Wan VAE and a LoRA folder in place."""

    unet_name = "tiny_wan22_animate.safetensors"
    vae_name = "tiny_wan21_vae.safetensors"

    def __init__(self, base: Path):
        import folder_paths

        from support.comfy_tiny import write_tiny_vae

        self.base = Path(base)
        folder_paths.set_output_directory(str(self.base / "output"))
        folder_paths.set_temp_directory(str(self.base / "temp"))
        self.folders = {kind: self.base / "models" / kind for kind in ("diffusion_models", "vae", "loras")}
        for kind, folder in self.folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path(kind, str(folder), is_default=True)
        write_tiny_animate(self.unet_path)
        write_tiny_vae(self.folders["vae"] / self.vae_name)

    @property
    def unet_path(self) -> Path:
        return self.folders["diffusion_models"] / self.unet_name

    def load_model(self):
        import nodes

        return nodes.UNETLoader().load_unet(self.unet_name, "default")[0]

    def load_vae(self):
        import nodes

        return nodes.VAELoader().load_vae(self.vae_name)[0]


def clip_vision_output(tokens: int = 257, seed: int = 6):
    """What CLIPVisionEncode gives WanAnimateToVideo (only ``penultimate_hidden_states`` is read for Wan), with random
    values: no CLIP-vision model is loaded."""
    import comfy.clip_vision

    output = comfy.clip_vision.Output()
    output["penultimate_hidden_states"] = torch.randn(1, tokens, CLIP_DIM, generator=torch.Generator().manual_seed(seed)) * 0.5
    return output


def face_video(frames: int, size: int = 64, seed: int = 7) -> torch.Tensor:
    """A face crop video, IMAGE layout ``[T, size, size, 3]`` (WanAnimateToVideo resizes it to 512x512)."""
    return torch.rand(frames, size, size, 3, generator=torch.Generator().manual_seed(seed))


def comfy_animate_capture(model, conditioning, x_t_list, sigmas, shift: float = 8.0) -> list:
    """ComfyUI's own velocity of ``model`` (a ModelPatcher, with its patches) through the sampler's conditioning path,
    and the inputs the diffusion model got (``c_concat``, ``clip_fea``, ``pose_latents``, ``face_pixel_values``,
    ``c_crossattn``), at each noisy latent (model space) and sigma. ``conditioning``: one side of WanAnimateToVideo's
    output (the positive, or the negative to get the unconditional prediction)."""
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    model = ModelSamplingSD3().patch(model, shift)[0].clone()
    seen = []

    def wrapper(apply_model, args):
        seen.append({k: v.detach().float().cpu().clone() for k, v in args["c"].items() if isinstance(v, torch.Tensor)})
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(wrapper)
    outputs = []

    def evaluate(model_wrap, x, sigmas_in, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        for x_t, sigma in zip(x_t_list, sigmas):
            x_in = x_t.unsqueeze(0).to(x)
            denoised = model_wrap(x_in, sigma * s_in, **extra_args)
            outputs.append({"velocity": ((x_in - denoised) / sigma)[0].detach().float().cpu(), **seen[-1]})
        return x

    latent = torch.zeros((1,) + tuple(x_t_list[0].shape))
    comfy.samplers.sample(model, torch.zeros_like(latent), conditioning, conditioning, 1.0, model.load_device,
                          comfy.samplers.KSAMPLER(evaluate), torch.tensor([1.0, 0.0]), model_options=model.model_options,
                          latent_image=latent, seed=0)
    return outputs
