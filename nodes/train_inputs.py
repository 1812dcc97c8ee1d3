"""The IPA Train LoRA node's inputs and outputs, declared in the order ComfyUI shows them (saved workflows store
widget values by position, so the order is part of the node's interface).

Why a module of its own: the widgets that mirror run.json keys take their choices and tooltips from the trainer's
key schema (``ipa_train.jobs.config.KEYS``), so the node never offers a value the trainer refuses; their ranges
are the node's (narrower: what is sensible in a UI), inside the schema's (tests check it). The node's defaults are
its own too (e.g. gradient checkpointing on, checkpoints every 100 steps).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..ipa_train.choices import BasePrecision, Distributed, Expert, Objective, Precision
from ..ipa_train.jobs.config import KEYS

NONE = "none"

# The node's default for every input that can be left out of a call (optional inputs): what ``execute`` uses then.
OPTIONAL_DEFAULTS = {
    "resume": "", "distributed": Distributed.DDP.value, "init_lora": NONE, "init_lora_strength": 1.0, "targets": "self_attn_qkv",
    "vace_module": NONE, "allow_other_base": False, "base_precision": BasePrecision.BF16.value, "blocks_to_swap": 0, "activation_offload": False,
    "vram_budget_gb": "auto", "expert": Expert.LOW.value, "low_noise_model": NONE,
}


def tooltip(key: str) -> str:
    return KEYS[key].tooltip or KEYS[key].help


def options(key: str) -> list[str]:
    return list(KEYS[key].choices.values())


def _optional(key: str) -> dict:
    return {"default": OPTIONAL_DEFAULTS[key], "optional": True}


def dataset_inputs(datasets: list[str], diffusion_models: list[str]) -> list:
    """What to train on and what to call the result."""
    return [
        io.Combo.Input("dataset", options=datasets, default="hands",
                       tooltip="The IPA dataset to train on (output/ipa_datasets/<name>, written by IPA Mark Preferred); "
                               "its preferred samples train. Press R to refresh the list after curating."),
        io.Combo.Input("base_model", options=diffusion_models,
                       tooltip="The Wan2.1-VACE file the candidates were sampled with (models/diffusion_models)."),
        io.String.Input("lora_name", default="ipa_hands",
                        tooltip="Saved as models/loras/ipa/<name>.safetensors, always the newest training of this name "
                                "(the one it replaces is kept as <name>_00001, _00002, ...)."),
    ]


def objective_inputs() -> list:
    """The objective and its strengths, the LoRA's shape and the optimizer."""
    return [
        io.Combo.Input("objective", options=options("objective"), default=Objective.IPA.value, tooltip=tooltip("objective")),
        io.Float.Input("beta", default=600.0, min=0.0, max=100000.0, step=1.0, tooltip=tooltip("beta")),
        io.Float.Input("hand_weight", default=10.0, min=1.0, max=1000.0, step=0.5, tooltip=tooltip("hand_weight")),
        io.Int.Input("rank", default=128, min=1, max=1024, tooltip=tooltip("rank")),
        io.Float.Input("alpha", default=128.0, min=0.01, max=4096.0, step=1.0, tooltip=tooltip("alpha")),
        io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-6, round=False, tooltip=tooltip("learning_rate")),
        io.Int.Input("steps", default=1000, min=1, max=1000000, tooltip=tooltip("steps")),
        io.Int.Input("batch_size", default=1, min=1, max=64, tooltip=tooltip("batch_size")),
        io.Int.Input("grad_accum", default=1, min=1, max=1024, tooltip=tooltip("grad_accum")),
    ]


def run_inputs() -> list:
    """Where and how the job runs: devices, precision, checkpoints, resume, the distributed mode."""
    return [
        io.String.Input("gpus", default="auto",
                        tooltip="auto: every GPU ComfyUI sees (one on Windows), the CPU when there is none. Or a device id "
                                "('0' is the first GPU), device ids ('0,2' or '[1]'), a count ('x2': the first two GPUs), 'all', "
                                "or 'cpu'. Several GPUs train with torchrun."),
        io.Combo.Input("precision", options=options("precision"), default=Precision.AUTO.value, tooltip=tooltip("precision")),
        io.Boolean.Input("gradient_checkpointing", default=True, tooltip=tooltip("gradient_checkpointing")),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip=tooltip("seed")),
        io.Int.Input("checkpoint_every", default=100, min=0, max=1000000, tooltip=tooltip("checkpoint_every")),
        io.String.Input("resume", **_optional("resume"),
                        tooltip="Empty: new run. 'latest': newest checkpoint of this LoRA name. Or a checkpoint folder."),
        io.Combo.Input("distributed", options=options("distributed"), **_optional("distributed"), tooltip=tooltip("distributed")),
    ]


def reference_inputs(loras: list[str], diffusion_models: list[str]) -> list:
    """The reference the samples were made with (init LoRA, VACE module) and the new LoRA's target layers."""
    return [
        io.Combo.Input("init_lora", options=[NONE] + loras, **_optional("init_lora"),
                       tooltip="The LoRA the candidates were sampled with (IPA LoRA Loader or LoraLoaderModelOnly): it "
                               "becomes part of the frozen reference, and the new LoRA trains on top. Several LoRAs: "
                               "run.json's init_lora list."),
        io.Float.Input("init_lora_strength", min=-100.0, max=100.0, step=0.01, **_optional("init_lora_strength"),
                       tooltip="The strength init_lora had when sampling. The trainer refuses a strength or LoRA that "
                               "differs from what the samples record."),
        io.String.Input("targets", **_optional("targets"),
                        tooltip="Layers the new LoRA trains, comma-separated: self_attn_qkv (paper), self_attn_out, "
                                "cross_attn, ffn, plus vace_blocks to put them on the VACE blocks too."),
        io.Combo.Input("vace_module", options=[NONE] + diffusion_models, **_optional("vace_module"),
                       tooltip="With a Wan2.1 text-to-video base_model: kijai's VACE module of the same size "
                               "(as IPA Load Wan + VACE Module loads it for sampling)."),
        io.Boolean.Input("allow_other_base", **_optional("allow_other_base"), tooltip=tooltip("allow_other_base")),
    ]


def memory_inputs() -> list:
    """The memory modes (README, Memory) and the budget the planner fits them to."""
    return [
        io.Combo.Input("base_precision", options=options("base_precision"), **_optional("base_precision"),
                       tooltip=tooltip("base_precision")),
        io.Int.Input("blocks_to_swap", min=0, max=48, **_optional("blocks_to_swap"), tooltip=tooltip("blocks_to_swap")),
        io.Boolean.Input("activation_offload", **_optional("activation_offload"), tooltip=tooltip("activation_offload")),
        io.String.Input("vram_budget_gb", **_optional("vram_budget_gb"),
                        tooltip="auto: the chosen GPU's free memory after ComfyUI unloads its models; the planner "
                                "then adds the cheapest memory savings that fit, or refuses before loading and says "
                                "what would fit. A number of GiB, or 'none' to use the settings as given."),
    ]


def expert_inputs(diffusion_models: list[str]) -> list:
    """Two-expert models (Wan2.2-VACE-Fun A14B): which expert trains, and the low-noise expert's file (base_model is
    then the high-noise one). Last, so workflows saved before them keep their widgets' positions."""
    return [
        io.Combo.Input("expert", options=options("expert"), **_optional("expert"), tooltip=tooltip("expert")),
        io.Combo.Input("low_noise_model", options=[NONE] + diffusion_models, **_optional("low_noise_model"),
                       tooltip="Wan2.2-VACE-Fun A14B: the low-noise model file the candidates were sampled with (the second "
                               "model of IPA VACE Sampler; base_model is then the high-noise one). Needed by expert low and "
                               "both; none for single-model samples."),
    ]


def outputs() -> list:
    return [
        io.String.Output(display_name="lora_name", tooltip="The saved LoRA as IPA LoRA Loader names it (ipa/<name>.safetensors; "
                                                           "two experts: ipa/<name>_low.safetensors, or _high when only that "
                                                           "expert trained)."),
        io.Image.Output(display_name="loss_curve", tooltip="Loss and ipa_gap over the run, each on its own axis."),
        io.String.Output(display_name="metrics", tooltip="Final metrics, where the LoRA and the run folder are, and any warnings."),
    ]


# The run.json keys the node's widgets set as they are, in run.json's order around the reference keys (which
# ``reference_settings`` writes only when set).
TRAINING_KEYS = ("lora_name", "objective", "beta", "hand_weight", "rank", "alpha", "learning_rate", "steps", "batch_size",
                 "grad_accum", "precision", "gradient_checkpointing", "seed", "checkpoint_every", "distributed")
MEMORY_KEYS = ("base_precision", "blocks_to_swap", "activation_offload", "vram_budget_gb")
EXPERT_KEYS = ("expert",)  # low_noise_model: written by ``reference_settings`` only when set
