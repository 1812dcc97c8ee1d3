"""Writes example_workflows/*.json from the live node schemas (run inside a ComfyUI checkout):

    COMFYUI_PATH=/path/to/ComfyUI PYTHONPATH=<torchvision stand-ins if no torchvision> python scripts/build_example_workflows.py

The files are committed; tests/host/test_example_workflows.py checks them against the schemas.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

UNET = "wan2.1_vace_1.3B_fp16.safetensors"
CLIP = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE = "wan_2.1_vae.safetensors"
REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
DWPOSE = "https://huggingface.co/yzd-v/DWPose/resolve/main"
# `properties.models` entries: the frontend's missing-model dialog offers these downloads when the file is missing
# (it only downloads .safetensors, so the two DWPose .onnx files are named with their links in the notes instead).
# Wan2.2-VACE-Fun A14B: two experts, Comfy-Org's fp8_scaled files (the fp16 ones, ..._14B_fp16, train alike).
UNET_HIGH = "wan2.2_fun_vace_high_noise_14B_fp8_scaled.safetensors"
UNET_LOW = "wan2.2_fun_vace_low_noise_14B_fp8_scaled.safetensors"
# Wan2.2-Animate-14B and the CLIP-vision encoder it takes the reference image through (the Wan2.2 files are in their
# own Comfy-Org repository; the CLIP-vision file is Wan2.1's).
ANIMATE_UNET = "wan2.2_animate_14B_bf16.safetensors"
CLIP_VISION = "clip_vision_h.safetensors"
REPACKAGED_22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
MODEL_FILES = {
    UNET: {"url": f"{REPACKAGED}/diffusion_models/{UNET}", "directory": "diffusion_models"},
    UNET_HIGH: {"url": f"{REPACKAGED_22}/diffusion_models/{UNET_HIGH}", "directory": "diffusion_models"},
    UNET_LOW: {"url": f"{REPACKAGED_22}/diffusion_models/{UNET_LOW}", "directory": "diffusion_models"},
    CLIP: {"url": f"{REPACKAGED}/text_encoders/{CLIP}", "directory": "text_encoders"},
    VAE: {"url": f"{REPACKAGED}/vae/{VAE}", "directory": "vae"},
    ANIMATE_UNET: {"url": f"{REPACKAGED_22}/diffusion_models/{ANIMATE_UNET}", "directory": "diffusion_models"},
    CLIP_VISION: {"url": f"{REPACKAGED}/clip_vision/{CLIP_VISION}", "directory": "clip_vision"},
}

# Template file names: the template browser of ComfyUI's frontend 1.35.9 shows a custom node pack's template by its
# file name (title and description) and its thumbnail as <name>.jpg next to it. No "-" in a name: the frontend writes it
# as a space in the description, which web/ipa_templates.js then does not find to replace.
TEMPLATES = {
    "ipa_curate": "IPA 1 Curate hand candidates",
    "ipa_align": "IPA 2 Train the hand LoRA",
    "ipa_animate": "IPA 3 Animate with the hand LoRA",
    "ipa_a14b_curate": "IPA 4 A14B Curate hand candidates",
    "ipa_a14b_align": "IPA 5 A14B Train the hand LoRAs",
    "ipa_a14b_animate": "IPA 6 A14B Animate with the hand LoRAs",
    "ipa_animate_character": "IPA 7 Animate a character on Wan2.2 Animate with the hand LoRA",
}

# What each template does and needs: the first lines of its Read me note, and `extra.description` in the file (the
# template browser of frontend 1.35.9 shows only the file name, so web/ipa_templates.js puts this on the card).
DESCRIPTIONS = {
    "ipa_curate": "Samples hand candidates with Wan2.1-VACE from a reference image and a driving video, and stores them "
                  "in a dataset to mark in the IPA gallery. Needs the Wan2.1-VACE, UMT5 and Wan VAE files and the two "
                  "DWPose .onnx files.",
    "ipa_align": "Trains the hand LoRA (Flow-IPA) on the samples marked preferred, in its own process, with a live loss "
                 "plot. Needs a curated dataset and the VACE model the samples came from; a GPU (or a lot of patience "
                 "on the CPU).",
    "ipa_animate": "Animates the reference image along the driving pose with native Wan2.1-VACE and the trained hand "
                   "LoRA, and reports whether the LoRA matches the base model. Needs the LoRA from template 2 and the "
                   "same model files as template 1.",
    "ipa_a14b_curate": "Samples hand candidates with Wan2.2-VACE-Fun A14B (two experts: the high-noise model lays out the "
                       "motion, the low-noise one draws the details) as ComfyUI's native two-KSamplerAdvanced graph does, and "
                       "stores them in a dataset to mark in the IPA gallery. Needs the two VACE-Fun expert files, UMT5, the "
                       "Wan VAE and the two DWPose .onnx files.",
    "ipa_a14b_align": "Trains one hand LoRA per expert of Wan2.2-VACE-Fun A14B (Flow-IPA; expert both: the low-noise one, "
                      "then the high-noise one, one model in memory at a time), each on its own noise range. Needs a dataset "
                      "curated with template 4 and the two expert files it was sampled with; a GPU.",
    "ipa_a14b_animate": "Animates the reference image along the driving pose with native Wan2.2-VACE-Fun A14B (two "
                        "KSamplerAdvanced) and the trained pair of hand LoRAs, each applied to its own expert. Needs the "
                        "LoRAs from template 5 and the same model files as template 4.",
    "ipa_animate_character": "Animates a character image along a driving video with native Wan2.2-Animate-14B "
                             "(WanAnimateToVideo: pose video from IPA DWPose, face video, CLIP-vision of the character) "
                             "and a hand LoRA trained on Animate samples. Needs the Wan2.2-Animate-14B, UMT5, Wan VAE and "
                             "CLIP-vision H files, the two DWPose .onnx files and a LoRA trained on Animate samples.",
}

# The saved view each template opens with (LiteGraph's extra.ds: screen = (graph + offset) * scale): the whole graph
# at a zoom the frontend draws readably (65 % or more; it draws blank boxes near 50 %) in a 1600x1000 window, clear of
# the frontend's left side bar (about 50 px) and its tab bar (about 40 px) drawn over the canvas.
VIEW_MARGIN = (60, 50)  # screen px: where the graph's top-left corner (x 0, y -30: the note's title bar) lands


def _view(scale: float) -> dict:
    return {"scale": scale, "offset": [round(VIEW_MARGIN[0] / scale), round(VIEW_MARGIN[1] / scale + 30)]}


VIEWS = {"ipa_curate": _view(0.65), "ipa_align": _view(0.85), "ipa_animate": _view(0.68),
         "ipa_a14b_curate": _view(0.65), "ipa_a14b_align": _view(0.85), "ipa_a14b_animate": _view(0.65),
         "ipa_animate_character": _view(0.65)}

MODEL_NOTES = f"""## Model files
Missing ones are offered for download when the workflow opens. From [Comfy-Org/Wan_2.1_ComfyUI_repackaged](https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged):
- `models/diffusion_models/{UNET}` (or `wan2.1_vace_14B_fp16.safetensors`: pick it in every loader)
- `models/text_encoders/{CLIP}`
- `models/vae/{VAE}`

For IPA DWPose Estimator, from [yzd-v/DWPose]({DWPOSE.rsplit('/resolve', 1)[0]}) (comfyui_controlnet_aux's copies are found too):
- `models/dwpose/yolox_l.onnx`: {DWPOSE}/yolox_l.onnx
- `models/dwpose/dw-ll_ucoco_384.onnx`: {DWPOSE}/dw-ll_ucoco_384.onnx"""

POSITIVE = "a person waves both hands at the camera, natural hands with five fingers, studio light"
NEGATIVE = "deformed hands, extra fingers, fused fingers, blurry, low quality"
NOTE_WIDTH = 460


def loaders(g, x, y, prompt_box: bool = False, experts: bool = False, unet_name: str = UNET):
    """Model loaders and the two prompts. ``prompt_box``: the positive prompt is typed in a String (Multiline) node
    that the caller adds at ``(x + 370, y)`` and links (so one text feeds the encoder and whatever stores it); the
    caller then groups the prompts. ``experts``: two UNETLoaders (Wan2.2-VACE-Fun A14B's high- and low-noise experts);
    the first value returned is then the pair (high, low); otherwise one UNETLoader of ``unet_name``."""
    if experts:
        high = g.add("UNETLoader", (x, y), {"unet_name": UNET_HIGH, "weight_dtype": "default"}, title="High-noise expert",
                     size=(320, 82), models=[UNET_HIGH])
        low = g.add("UNETLoader", (x, y + 130), {"unet_name": UNET_LOW, "weight_dtype": "default"}, title="Low-noise expert",
                    size=(320, 82), models=[UNET_LOW])
        unet, unets, y = (high, low), [high, low], y + 130
    else:
        unet = g.add("UNETLoader", (x, y), {"unet_name": unet_name, "weight_dtype": "default"}, size=(320, 82), models=[unet_name])
        unets = [unet]
    clip = g.add("CLIPLoader", (x, y + 130), {"clip_name": CLIP, "type": "wan", "device": "default"}, size=(320, 106), models=[CLIP])
    vae = g.add("VAELoader", (x, y + 290), {"vae_name": VAE}, size=(320, 58), models=[VAE])
    g.group("Models", [*unets, clip, vae])
    y -= 130 if experts else 0
    pos_y, pos_h = (y + 150, 60) if prompt_box else (y, 150)
    pos = g.add("CLIPTextEncode", (x + 370, pos_y), {"text": POSITIVE}, title="Positive prompt", size=(400, pos_h))
    neg = g.add("CLIPTextEncode", (x + 370, pos_y + pos_h + 50), {"text": NEGATIVE}, title="Negative prompt", size=(400, 100 if prompt_box else 150))
    g.link(clip, "CLIP", pos, "clip")
    g.link(clip, "CLIP", neg, "clip")
    if not prompt_box:
        g.group("Prompts", [pos, neg])
    return unet, vae, pos, neg


def control_inputs(g, x, y):
    """Reference image, and the driving video turned into DWPose keypoints and a pose video (the VACE control)."""
    ref = g.add("LoadImage", (x, y), {"image": "reference.png"}, title="Reference image (the person)", size=(320, 330))
    video = g.add("LoadVideo", (x + 370, y), {"file": "driving.mp4"}, title="Driving video (a person moving)", size=(400, 330))
    frames = g.add("GetVideoComponents", (x + 370, y + 380), size=(400, 70))
    g.link(video, "VIDEO", frames, "video")
    pose = g.add("IPADWPoseEstimator", (x + 370, y + 500), {"detection_threshold": 0.3, "keypoint_threshold": 0.3, "draw_body": True,
                                                          "draw_hands": True, "draw_face": True, "resolution": 0}, size=(400, 200))
    g.link(frames, "images", pose, "frames")
    g.group("Reference image and driving pose", [ref, video, frames, pose])
    return ref, frames, pose


CURATE_STEPS = """1. Load a reference image (the person) and a driving video (someone moving; `length` frames are used).
2. Queue: IPA DWPose Estimator turns the video into pose keypoints and a pose video (the VACE control); IPA VACE
   Sampler samples `candidates` videos, shown as one grid of looping clips with the seed on each (candidate
   i = seed + i; the seed steps by `candidates` after each run, so runs never repeat a seed); IPA Mark Preferred
   stores them, pending, in the
   dataset `hands` with the hand mask from the keypoints (the loss weights the hands; the mask node shows it).
3. Queue again for more candidates (a few hundred is a good start), then open the **IPA** tab in the left sidebar
   and mark the good ones preferred. Next: *IPA 2 Train the hand LoRA*.

Sizes: width/height multiples of 16, length 4k+1 (81 frames at 16 fps in the paper). Keep the hand mask node's
width and height equal to the sampler's. Outside good videos: IPA Encode Good Video -> IPA Mark Preferred."""

A14B_MODEL_NOTES = f"""## Model files
Missing ones are offered for download when the workflow opens. The two Wan2.2-VACE-Fun A14B experts from
[Comfy-Org/Wan_2.2_ComfyUI_Repackaged](https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged) (or the
`..._14B_fp16` files: pick the same pair in every template), the rest from
[Comfy-Org/Wan_2.1_ComfyUI_repackaged](https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged):
- `models/diffusion_models/{UNET_HIGH}` (the high-noise expert)
- `models/diffusion_models/{UNET_LOW}` (the low-noise expert)
- `models/text_encoders/{CLIP}`
- `models/vae/{VAE}`

For IPA DWPose Estimator, from [yzd-v/DWPose]({DWPOSE.rsplit('/resolve', 1)[0]}):
- `models/dwpose/yolox_l.onnx`: {DWPOSE}/yolox_l.onnx
- `models/dwpose/dw-ll_ucoco_384.onnx`: {DWPOSE}/dw-ll_ucoco_384.onnx"""

A14B_SWITCH = """Two experts: the high-noise model (`model`) samples steps 0..`switch_step` with the noise added, the low-noise
model (`model_low_noise`) from `switch_step` to the end, exactly as two KSamplerAdvanced do in the native graph
(template 6); each candidate records both models and the switch."""


def curate(g):
    g.note((0, 0), NOTE_WIDTH, 820, DESCRIPTIONS["ipa_curate"] + "\n\n" + MODEL_NOTES + "\n\n## Curate\n" + CURATE_STEPS)
    _curate_graph(g, experts=False)


def curate_a14b(g):
    steps = CURATE_STEPS.replace("*IPA 2 Train the hand LoRA*", "*IPA 5 A14B Train the hand LoRAs*")
    g.note((0, 0), NOTE_WIDTH, 980, DESCRIPTIONS["ipa_a14b_curate"] + "\n\n" + A14B_MODEL_NOTES + "\n\n## Curate\n" + steps
           + "\n\n" + A14B_SWITCH)
    _curate_graph(g, experts=True)


def _curate_graph(g, experts: bool):
    left = NOTE_WIDTH + 60
    unet, vae, pos, neg = loaders(g, left, 60, prompt_box=True, experts=experts)
    ref, frames, pose = control_inputs(g, left, 690 if experts else 560)
    widgets = {"width": 832, "height": 480, "length": 81, "steps": 20, "cfg": 6.0, "shift": 8.0, "sampler_name": "uni_pc",
               "scheduler": "simple", "candidates": 4, "seed": 0, "seed:control_after_generate": "increment", "strength": 1.0}
    if experts:
        widgets.update(cfg=3.5, switch_step=10)
    sampler = g.add("IPAVaceSampler", (left + 850, 60), widgets, size=(420, 820 if experts else 760))
    high = unet[0] if experts else unet
    for source, output, name in ((high, "MODEL", "model"), (pos, "CONDITIONING", "positive"), (neg, "CONDITIONING", "negative"),
                                 (vae, "VAE", "vae"), (ref, "IMAGE", "reference_image"), (pose, "pose_video", "control_video")):
        g.link(source, output, sampler, name)
    if experts:
        g.link(unet[1], "MODEL", sampler, "model_low_noise")
    g.group("Sample candidates", [sampler])
    mark = g.add("IPAMarkPreferred", (left + 1330, 60), {"dataset": "hands", "mark": "pending", "select": "", "prompt_text": POSITIVE,
                                                         "fps": 16.0}, size=(420, 330))
    g.link(sampler, "candidates", mark, "candidates")
    g.link(pose, "pose_keypoints", mark, "pose_keypoint")
    hands = g.add("IPAHandMaskFromPose", (left + 1330, 460), {"width": 832, "height": 480, "threshold": 0.3, "margin": 0.25, "shape": "box",
                                                             "resize": "crop", "min_points": 3}, title="Hand mask (what the loss weights)",
                  size=(420, 600))
    g.link(pose, "pose_keypoints", hands, "pose_keypoint")
    g.link(frames, "images", hands, "frames")
    g.group("Store for curation", [mark, hands])
    # The prompt is typed once: it feeds the positive encoder and is stored with each sample (added last, so the
    # other nodes keep their ids).
    prompt = g.add("PrimitiveStringMultiline", (left + 370, 60), {"value": POSITIVE}, title="Prompt (sampled and stored)", size=(400, 100))
    g.link(prompt, "STRING", pos, "text")
    g.link(prompt, "STRING", mark, "prompt_text")
    g.group("Prompts", [prompt, pos, neg])


def align(g):
    g.note((0, 0), NOTE_WIDTH, 680, DESCRIPTIONS["ipa_align"] + f"""\n\n## Model files
- `models/diffusion_models/{UNET}`: the same VACE file the candidates were sampled with (offered for download when
  missing; or the 14B).

## Train
Trains a Flow-IPA LoRA on the preferred samples of the dataset (paper settings: beta 600, hand weight 10, rank 128 on
self-attention q/k/v, 1,000 steps), in a separate process; ComfyUI's models are unloaded first. `gpus` = auto uses every
GPU ComfyUI sees (several: torchrun), or the CPU when there is none.

The node shows the live loss and ipa_gap (reference error minus the LoRA's: above 0, the LoRA fits the good videos
better). **Cancel** stops after the current step and writes a checkpoint: queue again with `resume` = `latest` to continue.

The LoRA is saved as `models/loras/ipa/<lora_name>.safetensors`, always the newest training of that name (the one it
replaces is kept as `<lora_name>_00001`, ...), so *IPA 3 Animate with the hand LoRA* loads what was just trained.""")
    left = NOTE_WIDTH + 60
    train = g.add("IPATrainLoRA", (left, 60), {"dataset": "hands", "base_model": UNET, "lora_name": "ipa_hands", "objective": "ipa",
                                               "beta": 600.0, "hand_weight": 10.0, "rank": 128, "alpha": 128.0, "learning_rate": 1e-4,
                                               "steps": 1000, "batch_size": 1, "grad_accum": 1, "gpus": "auto", "precision": "auto",
                                               "gradient_checkpointing": True, "seed": 0, "seed:control_after_generate": "fixed",
                                               "checkpoint_every": 100, "resume": ""}, size=(480, 560), models=[UNET])
    plot = g.add("PreviewImage", (left + 530, 60), title="Loss curve", size=(500, 360))
    g.link(train, "loss_curve", plot, "images")
    metrics = g.add("PreviewAny", (left + 530, 480), title="Final metrics", size=(500, 300))
    g.link(train, "metrics", metrics, "source")
    g.group("Train the LoRA", [train, plot, metrics])


def animate(g):
    g.note((0, 0), NOTE_WIDTH, 700, DESCRIPTIONS["ipa_animate"] + "\n\n" + MODEL_NOTES + """
- `models/loras/ipa/ipa_hands.safetensors`: written by *IPA 2 Train the hand LoRA*.

## Animate
The native Wan2.1-VACE graph, driven by the DWPose pose video of the driving video, with the aligned LoRA applied
by IPA LoRA Loader. Its report says how many weights really applied, warns when the LoRA was made for another base
model, and shows the LoRA's training settings. It also reads LoRAs in diffusers, DiffSynth/peft and kohya/musubi
layouts.""")
    left = NOTE_WIDTH + 60
    unet, vae, pos, neg = loaders(g, left, 60)
    ref, frames, pose = control_inputs(g, left, 560)
    lora = g.add("IPALoRALoader", (left + 850, 60), {"lora_name": "ipa/ipa_hands.safetensors", "strength": 1.0}, size=(360, 110))
    g.link(unet, "MODEL", lora, "model")
    report = g.add("PreviewAny", (left + 850, 230), title="LoRA report", size=(360, 280))
    g.link(lora, "report", report, "source")
    g.group("The aligned LoRA", [lora, report])
    sampling = g.add("ModelSamplingSD3", (left + 1260, 60), {"shift": 8.0}, size=(340, 60))
    g.link(lora, "model", sampling, "model")
    vace = g.add("WanVaceToVideo", (left + 1260, 180), {"width": 832, "height": 480, "length": 81, "batch_size": 1, "strength": 1.0},
                 size=(340, 280))
    for source, output, name in ((pos, "CONDITIONING", "positive"), (neg, "CONDITIONING", "negative"), (vae, "VAE", "vae"),
                                 (pose, "pose_video", "control_video"), (ref, "IMAGE", "reference_image")):
        g.link(source, output, vace, name)
    sampler = g.add("KSampler", (left + 1260, 520), {"seed": 0, "seed:control_after_generate": "randomize", "steps": 20, "cfg": 6.0,
                                                     "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0}, size=(340, 270))
    g.link(sampling, "MODEL", sampler, "model")
    g.link(vace, "positive", sampler, "positive")
    g.link(vace, "negative", sampler, "negative")
    g.link(vace, "latent", sampler, "latent_image")
    trim = g.add("TrimVideoLatent", (left + 1260, 850), {"trim_amount": 0}, size=(340, 80))
    g.link(sampler, "LATENT", trim, "samples")
    g.link(vace, "trim_latent", trim, "trim_amount")
    decode = g.add("VAEDecode", (left + 1260, 990), size=(340, 50))
    g.link(trim, "LATENT", decode, "samples")
    g.link(vae, "VAE", decode, "vae")
    g.group("Sample (VACE)", [sampling, vace, sampler, trim, decode])
    # under the LoRA group, so the whole graph fits a 1600x1000 window at a readable zoom
    video = g.add("CreateVideo", (left + 850, 650), {"fps": 16.0}, size=(360, 80))
    g.link(decode, "IMAGE", video, "images")
    save = g.add("SaveVideo", (left + 850, 790), {"filename_prefix": "video/ipa_animate", "format": "auto", "codec": "auto"}, size=(360, 440))
    g.link(video, "VIDEO", save, "video")
    g.group("Save the video", [video, save])


def align_a14b(g):
    g.note((0, 0), NOTE_WIDTH, 760, DESCRIPTIONS["ipa_a14b_align"] + f"""\n\n## Model files
- `models/diffusion_models/{UNET_HIGH}` (`base_model`: the high-noise expert) and
  `models/diffusion_models/{UNET_LOW}` (`low_noise_model`): the pair the candidates were sampled with.

## Train
`expert` picks what trains: `low` (the default: the low-noise expert, where hands are drawn), `high`, or `both` (the
low-noise expert, then the high-noise one; one model in memory at a time, so no more GPU memory than one 14B model).
Each expert's LoRA trains only on its own noise range (the low-noise one on sigma <= the samples' switch sigma) against
that expert as the reference. Paper settings otherwise (beta 600, hand weight 10, rank 128, 1,000 steps per expert).

The LoRAs are saved as `models/loras/ipa/<lora_name>_low.safetensors` and `<lora_name>_high.safetensors`, each with
its expert in its metadata, so *IPA 6 A14B Animate with the hand LoRAs* applies each to its own expert.""")
    left = NOTE_WIDTH + 60
    train = g.add("IPATrainLoRA", (left, 60), {"dataset": "hands", "base_model": UNET_HIGH, "lora_name": "ipa_hands_a14b", "objective": "ipa",
                                               "beta": 600.0, "hand_weight": 10.0, "rank": 128, "alpha": 128.0, "learning_rate": 1e-4,
                                               "steps": 1000, "batch_size": 1, "grad_accum": 1, "gpus": "auto", "precision": "auto",
                                               "gradient_checkpointing": True, "seed": 0, "seed:control_after_generate": "fixed",
                                               "checkpoint_every": 100, "resume": "", "expert": "both", "low_noise_model": UNET_LOW},
                  size=(480, 640), models=[UNET_HIGH, UNET_LOW])
    plot = g.add("PreviewImage", (left + 530, 60), title="Loss curve", size=(500, 360))
    g.link(train, "loss_curve", plot, "images")
    metrics = g.add("PreviewAny", (left + 530, 480), title="Final metrics", size=(500, 300))
    g.link(train, "metrics", metrics, "source")
    g.group("Train the LoRAs", [train, plot, metrics])


def animate_a14b(g):
    g.note((0, 0), NOTE_WIDTH, 860, DESCRIPTIONS["ipa_a14b_animate"] + "\n\n" + A14B_MODEL_NOTES + """
- `models/loras/ipa/ipa_hands_a14b_low.safetensors` (and `_high`): written by *IPA 5 A14B Train the hand LoRAs*.

## Animate
The native Wan2.2-VACE-Fun graph: two experts, one WanVaceToVideo, two KSamplerAdvanced (the high-noise model for steps
0..10 with the noise added and the leftover noise returned, the low-noise model from step 10 to the end). IPA LoRA
Loader takes both experts: pick either file of the pair; each LoRA goes to the expert its metadata names, and its
report says what went where (an expert without a LoRA passes through unchanged).""")
    left = NOTE_WIDTH + 60
    (high, low), vae, pos, neg = loaders(g, left, 60, experts=True)
    ref, frames, pose = control_inputs(g, left, 690)
    lora = g.add("IPALoRALoader", (left + 810, 60), {"lora_name": "ipa/ipa_hands_a14b_low.safetensors", "strength": 1.0}, size=(330, 130))
    g.link(high, "MODEL", lora, "model")
    g.link(low, "MODEL", lora, "model_low_noise")
    report = g.add("PreviewAny", (left + 810, 250), title="LoRA report", size=(330, 280))
    g.link(lora, "report", report, "source")
    g.group("Hand LoRAs", [lora, report])
    decode = _two_expert_sampling(g, left + 1180, lora, pos, neg, vae, pose, ref)
    video = g.add("CreateVideo", (left + 810, 670), {"fps": 16.0}, size=(330, 80))
    g.link(decode, "IMAGE", video, "images")
    save = g.add("SaveVideo", (left + 810, 810), {"filename_prefix": "video/ipa_a14b_animate", "format": "auto", "codec": "auto"},
                 size=(330, 440))
    g.link(video, "VIDEO", save, "video")
    g.group("Save the video", [video, save])


ANIMATE_NOTES = f"""## Model files
Missing ones are offered for download when the workflow opens:
- `models/diffusion_models/{ANIMATE_UNET}` ([Comfy-Org/Wan_2.2_ComfyUI_Repackaged](https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged))
- `models/text_encoders/{CLIP}`, `models/vae/{VAE}` and `models/clip_vision/{CLIP_VISION}` ([Comfy-Org/Wan_2.1_ComfyUI_repackaged](https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged))
- `models/loras/ipa/ipa_animate_hands.safetensors`: a LoRA trained on Animate samples (below)

For IPA DWPose Estimator, from [yzd-v/DWPose]({DWPOSE.rsplit('/resolve', 1)[0]}):
- `models/dwpose/yolox_l.onnx`: {DWPOSE}/yolox_l.onnx
- `models/dwpose/dw-ll_ucoco_384.onnx`: {DWPOSE}/dw-ll_ucoco_384.onnx"""


def animate_character(g):
    g.note((0, 0), NOTE_WIDTH, 900, DESCRIPTIONS["ipa_animate_character"] + "\n\n" + ANIMATE_NOTES + f"""

## Animate
The native Wan2.2-Animate graph (animation mode): IPA DWPose Estimator turns the driving video into the pose video,
the driving frames are the face video (WanAnimateToVideo centre-crops them to 512x512; face crops of the driving video
work better), CLIP Vision Encode reads the character. IPA LoRA Loader applies the hand LoRA and reports how many
weights applied; LoraLoaderModelOnly loads it too. Replacement mode: connect background_video and character_mask.

## Collect and train on Animate
Replace WanAnimateToVideo + KSampler with **IPA Animate Sampler** (the same inputs plus steps, cfg, seed and
`candidates`: candidate i is what this graph makes with seed + i) and connect its candidates and the DWPose keypoints
to **IPA Mark Preferred** (dataset e.g. `animate_hands`: one dataset holds one model type). Curate in the IPA tab,
then train with *IPA 2 Train the hand LoRA*, `base_model` = `{ANIMATE_UNET}`.""")
    left = NOTE_WIDTH + 60
    unet, vae, pos, neg = loaders(g, left, 60, unet_name=ANIMATE_UNET)
    ref, frames, pose = control_inputs(g, left, 560)
    lora = g.add("IPALoRALoader", (left + 850, 60), {"lora_name": "ipa/ipa_animate_hands.safetensors", "strength": 1.0}, size=(360, 110))
    g.link(unet, "MODEL", lora, "model")
    report = g.add("PreviewAny", (left + 850, 230), title="LoRA report", size=(360, 200))
    g.link(lora, "report", report, "source")
    g.group("The aligned LoRA", [lora, report])
    vision = g.add("CLIPVisionLoader", (left + 850, 540), {"clip_name": CLIP_VISION}, size=(360, 58), models=[CLIP_VISION])
    encode = g.add("CLIPVisionEncode", (left + 850, 650), {"crop": "none"}, size=(360, 80))
    g.link(vision, "CLIP_VISION", encode, "clip_vision")
    g.link(ref, "IMAGE", encode, "image")
    g.group("Character", [vision, encode])
    sampling = g.add("ModelSamplingSD3", (left + 1260, 60), {"shift": 8.0}, size=(340, 60))
    g.link(lora, "model", sampling, "model")
    condition = g.add("WanAnimateToVideo", (left + 1260, 180), {"width": 832, "height": 480, "length": 77, "batch_size": 1,
                                                                "continue_motion_max_frames": 5, "video_frame_offset": 0}, size=(340, 330))
    for source, output, name in ((pos, "CONDITIONING", "positive"), (neg, "CONDITIONING", "negative"), (vae, "VAE", "vae"),
                                 (encode, "CLIP_VISION_OUTPUT", "clip_vision_output"), (ref, "IMAGE", "reference_image"),
                                 (frames, "images", "face_video"), (pose, "pose_video", "pose_video")):
        g.link(source, output, condition, name)
    sampler = g.add("KSampler", (left + 1260, 570), {"seed": 0, "seed:control_after_generate": "randomize", "steps": 20, "cfg": 1.0,
                                                     "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}, size=(340, 270))
    g.link(sampling, "MODEL", sampler, "model")
    g.link(condition, "positive", sampler, "positive")
    g.link(condition, "negative", sampler, "negative")
    g.link(condition, "latent", sampler, "latent_image")
    trim = g.add("TrimVideoLatent", (left + 1260, 900), {"trim_amount": 0}, size=(340, 80))
    g.link(sampler, "LATENT", trim, "samples")
    g.link(condition, "trim_latent", trim, "trim_amount")
    decode = g.add("VAEDecode", (left + 1260, 1040), size=(340, 50))
    g.link(trim, "LATENT", decode, "samples")
    g.link(vae, "VAE", decode, "vae")
    g.group("Sample (Animate)", [sampling, condition, sampler, trim, decode])
    video = g.add("CreateVideo", (left + 850, 840), {"fps": 16.0}, size=(360, 80))
    g.link(decode, "IMAGE", video, "images")
    save = g.add("SaveVideo", (left + 850, 980), {"filename_prefix": "video/ipa_animate_character", "format": "auto", "codec": "auto"},
                 size=(360, 400))
    g.link(video, "VIDEO", save, "video")
    g.group("Save the video", [video, save])


def _two_expert_sampling(g, x, lora, pos, neg, vae, pose, ref):
    """ModelSamplingSD3 per expert, one WanVaceToVideo, KSamplerAdvanced high (0..10) then low (10..end), trim, decode."""
    shifted = {}
    for index, (output, name) in enumerate((("model", "high"), ("model_low_noise", "low"))):
        shifted[name] = g.add("ModelSamplingSD3", (x + 330 * index, 60), {"shift": 8.0}, title=f"Shift ({name}-noise)", size=(300, 60))
        g.link(lora, output, shifted[name], "model")
    vace = g.add("WanVaceToVideo", (x, 180), {"width": 832, "height": 480, "length": 81, "batch_size": 1, "strength": 1.0}, size=(300, 280))
    for source, output, name in ((pos, "CONDITIONING", "positive"), (neg, "CONDITIONING", "negative"), (vae, "VAE", "vae"),
                                 (pose, "pose_video", "control_video"), (ref, "IMAGE", "reference_image")):
        g.link(source, output, vace, name)
    common = {"steps": 20, "cfg": 3.5, "sampler_name": "uni_pc", "scheduler": "simple"}
    first = g.add("KSamplerAdvanced", (x + 330, 180), {"add_noise": "enable", "noise_seed": 0, "noise_seed:control_after_generate": "randomize",
                                                      **common, "start_at_step": 0, "end_at_step": 10, "return_with_leftover_noise": "enable"},
                  title="KSampler (high-noise, steps 0-10)", size=(300, 340))
    second = g.add("KSamplerAdvanced", (x + 330, 580), {"add_noise": "disable", "noise_seed": 0, **common, "start_at_step": 10,
                                                       "end_at_step": 10000, "return_with_leftover_noise": "disable"},
                   title="KSampler (low-noise, steps 10-end)", size=(300, 340))
    g.link(shifted["high"], "MODEL", first, "model")
    g.link(shifted["low"], "MODEL", second, "model")
    for sampler in (first, second):
        g.link(vace, "positive", sampler, "positive")
        g.link(vace, "negative", sampler, "negative")
    g.link(vace, "latent", first, "latent_image")
    g.link(first, "LATENT", second, "latent_image")
    trim = g.add("TrimVideoLatent", (x, 520), {"trim_amount": 0}, size=(300, 80))
    g.link(second, "LATENT", trim, "samples")
    g.link(vace, "trim_latent", trim, "trim_amount")
    decode = g.add("VAEDecode", (x, 660), size=(300, 50))
    g.link(trim, "LATENT", decode, "samples")
    g.link(vae, "VAE", decode, "vae")
    g.group("Sample (two experts)", [*shifted.values(), vace, first, second, trim, decode])
    return decode


BUILDERS = {"ipa_curate": curate, "ipa_align": align, "ipa_animate": animate,
            "ipa_a14b_curate": curate_a14b, "ipa_a14b_align": align_a14b, "ipa_a14b_animate": animate_a14b,
            "ipa_animate_character": animate_character}
# Node ids per template, in ranges no two templates share: ComfyUI's frontend shows a running prompt's progress (the
# trainer's live plot included) on the node of that id in whichever tab is open, so a shared id put the training
# progress on "Load Diffusion Model" in the curate tab.
FIRST_NODE_ID = {"ipa_curate": 1, "ipa_align": 101, "ipa_animate": 201, "ipa_a14b_curate": 301, "ipa_a14b_align": 401,
                 "ipa_a14b_animate": 501, "ipa_animate_character": 701}


def template_path(key: str) -> Path:
    """example_workflows/<file>.json of a template key (ipa_curate, ipa_align, ipa_animate, ipa_a14b_*)."""
    return ROOT / "example_workflows" / f"{TEMPLATES[key]}.json"


def build_all(infos):
    from workflow_graph import Graph

    workflows = {}
    for name, build in BUILDERS.items():
        graph = Graph(infos, MODEL_FILES, first_id=FIRST_NODE_ID[name])
        build(graph)
        workflows[name] = graph.to_json(f"ComfyUI-IPA template: {TEMPLATES[name]}", description=DESCRIPTIONS[name], view=VIEWS[name])
    return workflows


def main():
    from workflow_graph import check_workflow, dumps, node_infos

    from support.comfy_tiny import load_pack_cpu

    infos = node_infos(load_pack_cpu())
    out = ROOT / "example_workflows"
    out.mkdir(exist_ok=True)
    for name, workflow in build_all(infos).items():
        problems = check_workflow(workflow, infos)
        if problems:
            raise SystemExit(f"{name}: " + "; ".join(problems))
        template_path(name).write_text(dumps(workflow))
        print(f"wrote {template_path(name).relative_to(ROOT)} ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links, "
              f"{len(workflow['groups'])} groups)")


if __name__ == "__main__":
    main()
