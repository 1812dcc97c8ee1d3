"""A ComfyUI base directory for end-to-end tests (needs COMFYUI_PATH): the pack in ``custom_nodes``, tiny random-weight
Wan2.1-VACE, Wan VAE and DWPose files in ``models/``, a driving video and a reference image in ``input/``, and one
test-only node standing in for CLIPLoader + CLIPTextEncode. Nothing is downloaded.

The one substitution, and why: ComfyUI builds the Wan text encoder from a fixed UMT5-XXL config (24 layers, width 4096,
256k vocabulary: 5.7 B parameters) whatever the file holds, so no tiny text-encoder file can exist. The stand-in turns
the prompt text into a conditioning of exactly CLIPTextEncode's Wan form ([1, 512, 4096], zero rows after the real
tokens, seeded by the text).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from conftest import REPO_ROOT

W, H, LENGTH = 48, 32, 5  # video size and frames: latent 6 x 4, 2 video latent frames + 1 reference frame
UNET_FILE = "tiny_wan21_vace.safetensors"
VAE_FILE = "tiny_wan21_vae.safetensors"
TEXT_NODE_TYPE = "E2ETinyWanTextEncode"

TEXT_NODE = '''"""Test-only stand-in for CLIPLoader + CLIPTextEncode (Wan/UMT5): see tests/support/e2e_base.py."""
import hashlib

import torch


class E2ETinyWanTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        tokens = min(len(text.split()) + 1, 512)  # words + end token, as a tokenizer would roughly give
        cond = torch.zeros(1, 512, 4096)  # Wan's UMT5 output: 512 rows, zero after the real tokens
        cond[:, :tokens] = torch.randn(1, tokens, 4096, generator=torch.Generator().manual_seed(seed)) * 0.2
        return ([[cond, {}]],)


NODE_CLASS_MAPPINGS = {"E2ETinyWanTextEncode": E2ETinyWanTextEncode}
'''


def driving_video(path: Path, frames: int, width: int, height: int) -> None:
    """A short H.264 video of a moving bright cross on grey: the tiny DWPose models find a person in it."""
    import av

    from support.tiny_dwpose_models import cross_frame

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = cross_frame(width, height, 20 + 6 * index, 16 + 3 * index)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_base(base: Path, returning_user: bool = False) -> Path:
    """Fills ``base`` (ComfyUI's --base-directory). ``returning_user``: a settings file that skips the frontend's
    first-run templates dialog."""
    from PIL import Image

    from support.comfy_tiny import load_pack_cpu, write_tiny_vace, write_tiny_vae
    from support.tiny_dwpose_models import build_weights

    (base / "custom_nodes" / "e2e_tiny_text").mkdir(parents=True)
    os.symlink(REPO_ROOT, base / "custom_nodes" / "ComfyUI-IPA")
    (base / "custom_nodes" / "e2e_tiny_text" / "__init__.py").write_text(TEXT_NODE)
    load_pack_cpu()  # ComfyUI's modules in this process (told to use the CPU), to write the files in its layouts
    write_tiny_vace(base / "models" / "diffusion_models" / UNET_FILE)
    write_tiny_vae(base / "models" / "vae" / VAE_FILE)
    build_weights(base / "models" / "dwpose")
    (base / "input").mkdir()
    Image.fromarray((np.random.default_rng(0).random((2 * H, 2 * W, 3)) * 255).astype(np.uint8)).save(base / "input" / "reference.png")
    driving_video(base / "input" / "driving.mp4", LENGTH, 2 * W, 2 * H)
    if returning_user:
        settings = base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    return base


@contextlib.contextmanager
def returning_user_server(tmp_path_factory, name: str):
    """A ComfyUI server on a fresh base folder (the tiny models, a returning user's settings), stopped afterwards."""
    from support.comfy_server import ComfyServer

    base = make_base(tmp_path_factory.mktemp(name), returning_user=True)
    server = ComfyServer(base, tmp_path_factory.getbasetemp() / f"{name}_comfyui.log")
    try:
        yield server
    finally:
        server.stop()
