"""The trainer's reference velocity for several model files, in one process of its own (a ComfyUI test process has
the import-only torchvision stand-in on its path, with which diffusers cannot import; see NOTES).

    python tests/support/trainer_replay.py INPUTS.safetensors OUTPUT.safetensors MODEL_FILE [MODEL_FILE ...]

INPUTS holds x_t [N,16,F,h,w], sigmas [N], text [L,D], context [96,F,h,w], strength []; OUTPUT gets ``velocity_<i>``
per model file, loaded as the trainer loads it (``ipa_train.wan.model.load_transformer``: fp8 files as stored)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(inputs_file: str, output_file: str, *model_files: str) -> None:
    from safetensors.torch import load_file, save_file

    from ipa_train.wan.model import load_transformer

    inputs = load_file(inputs_file)
    results = {}
    for index, model_file in enumerate(model_files):
        transformer = load_transformer(model_file)
        scale = torch.full((len(transformer.config.vace_layers),), float(inputs["strength"]))
        with torch.inference_mode():
            results[f"velocity_{index}"] = torch.stack([transformer(
                hidden_states=x.unsqueeze(0), timestep=(1000.0 * sigma).reshape(1), encoder_hidden_states=inputs["text"].unsqueeze(0),
                control_hidden_states=inputs["context"].unsqueeze(0), control_hidden_states_scale=scale, return_dict=False,
            )[0][0] for x, sigma in zip(inputs["x_t"], inputs["sigmas"])]).contiguous()
    save_file(results, output_file)


if __name__ == "__main__":
    main(*sys.argv[1:])
