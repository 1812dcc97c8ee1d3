"""Runs diffusers' WanVACETransformer3DModel on saved inputs, in its own process: a ComfyUI test process has the
import-only torchvision stand-in on its path, with which diffusers cannot import (see NOTES).

    python tests/support/diffusers_replay.py MODEL_FILE INPUTS.safetensors OUTPUT.safetensors [CONFIG_DIR]

INPUTS holds x_t [N,16,F,h,w], sigmas [N], text [L,D], context [96,F,h,w], strength []; OUTPUT gets ``velocity`` (and
``velocity_control`` when INPUTS has ``context_control``).
Uses trainer-core's ``ipa_train.wan.model.load_transformer`` when present, else ``from_single_file(config=CONFIG_DIR)``.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(model_file: str, inputs_file: str, output_file: str, config_dir: str = "") -> None:
    from safetensors.torch import load_file, save_file

    try:
        from ipa_train.wan.model import load_transformer
    except ImportError:
        load_transformer = None
    if load_transformer is not None:
        transformer = load_transformer(model_file)
    else:
        from diffusers import WanVACETransformer3DModel

        transformer = WanVACETransformer3DModel.from_single_file(model_file, config=config_dir, torch_dtype=torch.float32)
    transformer = transformer.float().eval()
    inputs = load_file(inputs_file)
    scale = torch.full((len(transformer.config.vace_layers),), float(inputs["strength"]))
    results = {}
    for name in ("context", "context_control"):  # context_control: a deliberately wrong layout (negative control)
        if name not in inputs:
            continue
        outputs = []
        with torch.inference_mode():
            for x, sigma in zip(inputs["x_t"], inputs["sigmas"]):
                outputs.append(transformer(
                    hidden_states=x.unsqueeze(0),
                    timestep=(1000.0 * sigma).reshape(1),  # float, never rounded
                    encoder_hidden_states=inputs["text"].unsqueeze(0),
                    control_hidden_states=inputs[name].unsqueeze(0),
                    control_hidden_states_scale=scale,
                    return_dict=False,
                )[0][0])
        results["velocity" if name == "context" else "velocity_control"] = torch.stack(outputs).contiguous()
    save_file(results, output_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
