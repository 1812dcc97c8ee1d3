"""Writes example_workflows/*.json from the live node schemas (run inside a ComfyUI checkout):

    COMFYUI_PATH=/path/to/ComfyUI PYTHONPATH=<torchvision stand-ins if no torchvision> python scripts/build_example_workflows.py

The files are committed; tests/test_example_workflows.py checks them against the schemas.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

UNET = "wan2.1_vace_1.3B_fp16.safetensors"
CLIP = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE = "wan_2.1_vae.safetensors"
MODEL_NOTES = f"""## Model files
From Comfy-Org/Wan_2.1_ComfyUI_repackaged on Hugging Face (split_files/...):
- models/diffusion_models/{UNET} (or wan2.1_vace_14B_fp16.safetensors: then pick it in every loader)
- models/text_encoders/{CLIP}
- models/vae/{VAE}
From yzd-v/DWPose on Hugging Face (for IPA DWPose Estimator; comfyui_controlnet_aux's copies are found too):
- models/dwpose/yolox_l.onnx and models/dwpose/dw-ll_ucoco_384.onnx
Sizes: width/height multiples of 16, length 4k+1 (81 frames at 16 fps in the paper): give a driving video of
`length` frames (a longer one is estimated in full and cut by the sampler)."""

POSITIVE = "a person waves both hands at the camera, natural hands with five fingers, studio light"
NEGATIVE = "deformed hands, extra fingers, fused fingers, blurry, low quality"


def loaders(g, x=0, y=0):
    unet = g.add("UNETLoader", (x, y), {"unet_name": UNET, "weight_dtype": "default"}, size=(320, 82))
    clip = g.add("CLIPLoader", (x, y + 120), {"clip_name": CLIP, "type": "wan", "device": "default"}, size=(320, 106))
    vae = g.add("VAELoader", (x, y + 260), {"vae_name": VAE}, size=(320, 58))
    pos = g.add("CLIPTextEncode", (x + 360, y), {"text": POSITIVE}, title="Positive prompt", size=(400, 140))
    neg = g.add("CLIPTextEncode", (x + 360, y + 180), {"text": NEGATIVE}, title="Negative prompt", size=(400, 140))
    g.link(clip, "CLIP", pos, "clip")
    g.link(clip, "CLIP", neg, "clip")
    return unet, vae, pos, neg


def control_inputs(g, x=0, y=420):
    """Reference image, and the driving video turned into DWPose keypoints and a pose video (the VACE control)."""
    ref = g.add("LoadImage", (x, y), {"image": "reference.png"}, title="Reference image", size=(320, 320))
    video = g.add("LoadVideo", (x, y + 360), {"file": "driving.mp4"}, title="Driving video (a person moving)", size=(320, 320))
    frames = g.add("GetVideoComponents", (x + 360, y + 360), size=(260, 66))
    g.link(video, "VIDEO", frames, "video")
    pose = g.add("IPADWPoseEstimator", (x + 360, y + 460), {"detection_threshold": 0.3, "keypoint_threshold": 0.3, "draw_body": True,
                                                          "draw_hands": True, "draw_face": True, "resolution": 0}, size=(320, 246))
    g.link(frames, "images", pose, "frames")
    return ref, frames, pose


def curate(g):
    unet, vae, pos, neg = loaders(g)
    ref, frames, pose = control_inputs(g)
    sampler = g.add("IPAVaceSampler", (820, 0), {"width": 832, "height": 480, "length": 81, "steps": 20, "cfg": 6.0, "shift": 8.0,
                                                 "sampler_name": "uni_pc", "scheduler": "simple", "candidates": 4, "seed": 0,
                                                 "seed:control_after_generate": "increment", "strength": 1.0}, size=(340, 470))
    for source, output, name in ((unet, "MODEL", "model"), (pos, "CONDITIONING", "positive"), (neg, "CONDITIONING", "negative"),
                                 (vae, "VAE", "vae"), (ref, "IMAGE", "reference_image"), (pose, "pose_video", "control_video")):
        g.link(source, output, sampler, name)
    preview = g.add("PreviewImage", (1200, 0), title="Candidates", size=(420, 420))
    g.link(sampler, "images", preview, "images")
    mark = g.add("IPAMarkPreferred", (1200, 460), {"dataset": "hands", "mark": "pending", "select": "", "prompt_text": POSITIVE, "fps": 16.0},
                 size=(420, 300))
    g.link(sampler, "candidates", mark, "candidates")
    g.link(pose, "pose_keypoints", mark, "pose_keypoint")
    hands = g.add("IPAHandMaskFromPose", (820, 520), {"width": 832, "height": 480, "threshold": 0.3, "margin": 0.25, "shape": "box",
                                                    "resize": "crop", "min_points": 3}, title="Hand mask (what the loss weights)",
                  size=(340, 270))
    g.link(pose, "pose_keypoints", hands, "pose_keypoint")
    g.link(frames, "images", hands, "frames")
    hand_preview = g.add("PreviewImage", (820, 830), title="Hand mask preview", size=(340, 300))
    g.link(hands, "preview", hand_preview, "images")
    g.add("MarkdownNote", (0, 1180), {"text": MODEL_NOTES + """

## Curate
IPA DWPose Estimator turns the driving video into pose keypoints and a pose video; the pose video is the VACE
control. IPA VACE Sampler samples N candidates with the native VACE graph (candidate i = seed + i); IPA Mark
Preferred stores them, pending, in the dataset `hands` (output/ipa_datasets/hands) with the hand mask made from the
keypoints (HALO hand weighting; the preview shows it) and the driving pose for the gallery's hand score. Open the
IPA gallery to mark the good ones preferred, or set `mark` to `preferred` to accept everything. Keep width and
height of the hand mask node equal to the sampler's. Outside good videos: IPA Encode Good Video -> this node."""},
          size=(760, 320))


def align(g):
    train = g.add("IPATrainLoRA", (0, 0), {"dataset": "hands", "base_model": UNET, "lora_name": "ipa_hands", "objective": "ipa",
                                           "beta": 600.0, "hand_weight": 10.0, "rank": 128, "alpha": 128.0, "learning_rate": 1e-4,
                                           "steps": 1000, "batch_size": 1, "grad_accum": 1, "gpus": "1", "precision": "auto",
                                           "gradient_checkpointing": True, "seed": 0,
                                           "checkpoint_every": 100, "resume": ""}, size=(360, 620))
    plot = g.add("PreviewImage", (400, 0), title="Loss curve", size=(520, 360))
    g.link(train, "loss_curve", plot, "images")
    metrics = g.add("PreviewAny", (400, 400), title="Final metrics", size=(520, 200))
    g.link(train, "metrics", metrics, "source")
    g.add("MarkdownNote", (0, 680), {"text": f"""## Model files
- models/diffusion_models/{UNET}: the same VACE file the candidates were sampled with.

## Align
Trains a Flow-IPA LoRA (paper settings: beta 600, hand weight 10, rank 128 on self-attention q/k/v, 1,000 steps) on the
preferred samples of `hands`, in a separate process (torchrun when `gpus` asks for several). ComfyUI's models are unloaded
first. The progress bar shows the live loss plot. Cancel stops after the current step and writes a checkpoint: queue again
with `resume` = `latest` to continue. The LoRA is saved as models/loras/ipa/<lora_name>.safetensors."""}, size=(920, 260))


def animate(g):
    unet, vae, pos, neg = loaders(g)
    ref, frames, pose = control_inputs(g)
    lora = g.add("IPALoRALoader", (820, 0), {"lora_name": "ipa/ipa_hands.safetensors", "strength": 1.0}, size=(340, 106))
    g.link(unet, "MODEL", lora, "model")
    sampling = g.add("ModelSamplingSD3", (820, 150), {"shift": 8.0}, size=(340, 58))
    g.link(lora, "model", sampling, "model")
    vace = g.add("WanVaceToVideo", (820, 250), {"width": 832, "height": 480, "length": 81, "batch_size": 1, "strength": 1.0}, size=(340, 254))
    for source, output, name in ((pos, "CONDITIONING", "positive"), (neg, "CONDITIONING", "negative"), (vae, "VAE", "vae"),
                                 (pose, "pose_video", "control_video"), (ref, "IMAGE", "reference_image")):
        g.link(source, output, vace, name)
    sampler = g.add("KSampler", (1200, 0), {"seed": 0, "seed:control_after_generate": "randomize", "steps": 20, "cfg": 6.0,
                                            "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0}, size=(320, 262))
    g.link(sampling, "MODEL", sampler, "model")
    g.link(vace, "positive", sampler, "positive")
    g.link(vace, "negative", sampler, "negative")
    g.link(vace, "latent", sampler, "latent_image")
    trim = g.add("TrimVideoLatent", (1200, 300), {"trim_amount": 0}, size=(320, 82))
    g.link(sampler, "LATENT", trim, "samples")
    g.link(vace, "trim_latent", trim, "trim_amount")
    decode = g.add("VAEDecode", (1200, 420), size=(320, 46))
    g.link(trim, "LATENT", decode, "samples")
    g.link(vae, "VAE", decode, "vae")
    video = g.add("CreateVideo", (1560, 0), {"fps": 16.0}, size=(300, 78))
    g.link(decode, "IMAGE", video, "images")
    save = g.add("SaveVideo", (1560, 120), {"filename_prefix": "video/ipa_animate", "format": "auto", "codec": "auto"}, size=(420, 420))
    g.link(video, "VIDEO", save, "video")
    report = g.add("PreviewAny", (820, 560), title="LoRA report", size=(340, 200))
    g.link(lora, "report", report, "source")
    g.add("MarkdownNote", (0, 1180), {"text": MODEL_NOTES + """
- models/loras/ipa/ipa_hands.safetensors: written by the align workflow (IPA Train LoRA).

## Animate
The native Wan2.1-VACE graph, driven by the DWPose pose video of the driving video, with the aligned LoRA applied
by IPA LoRA Loader (which also reads LoRAs in diffusers, DiffSynth/peft and kohya/musubi layouts, reports how many
keys matched and shows the LoRA's training settings)."""}, size=(760, 280))


BUILDERS = {"ipa_curate": curate, "ipa_align": align, "ipa_animate": animate}


def build_all(infos):
    from workflow_graph import Graph

    workflows = {}
    for name, build in BUILDERS.items():
        graph = Graph(infos)
        build(graph)
        workflows[name] = graph.to_json(f"ComfyUI-IPA example: {name}")
    return workflows


def main():
    from comfy_tiny import load_pack_cpu
    from workflow_graph import check_workflow, dumps, node_infos

    infos = node_infos(load_pack_cpu())
    out = ROOT / "example_workflows"
    out.mkdir(exist_ok=True)
    for name, workflow in build_all(infos).items():
        problems = check_workflow(workflow, infos)
        if problems:
            raise SystemExit(f"{name}: " + "; ".join(problems))
        (out / f"{name}.json").write_text(dumps(workflow))
        print(f"wrote example_workflows/{name}.json ({len(workflow['nodes'])} nodes, {len(workflow['links'])} links)")


if __name__ == "__main__":
    main()
