"""The LoRA target names of run.json (``targets``) and the peft ``target_modules`` regex each set of names means.

One definition, read by the run config (validation), the trainer (injection), the memory planner (parameter
counts) and the checkpoint metadata. Module names are diffusers' Wan naming."""

from __future__ import annotations

from typing import Iterable

# Target groups: module-name patterns inside one transformer block (diffusers naming). peft full-matches a
# regex given as a string, so ``blocks\.\d+\.`` never hits ``vace_blocks.N.`` (their own group).
TARGET_GROUPS = {
    "self_attn_qkv": r"attn1\.to_[qkv]",
    "self_attn_out": r"attn1\.to_out\.0",
    "cross_attn": r"attn2\.(?:to_[qkv]|to_out\.0)",
    "ffn": r"ffn\.net\.(?:0\.proj|2)",
}
# "vace_blocks" is a modifier: the chosen groups also go onto the VACE blocks (alone it means self_attn_qkv).
BLOCK_MODIFIERS = ("vace_blocks",)
TARGET_NAMES = tuple(TARGET_GROUPS) + BLOCK_MODIFIERS
DEFAULT_TARGETS = ("self_attn_qkv",)


def target_regex(targets: Iterable[str]) -> str:
    """The peft ``target_modules`` regex for a list of target names. Default: ``blocks\\.\\d+\\.attn1\\.to_[qkv]``."""
    targets = list(targets)
    unknown = [name for name in targets if name not in TARGET_NAMES]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {list(TARGET_NAMES)}")
    groups = [name for name in TARGET_GROUPS if name in targets] or list(DEFAULT_TARGETS)
    modules = "|".join(TARGET_GROUPS[name] for name in groups)
    modules = modules if len(groups) == 1 else f"(?:{modules})"
    blocks = r"(?:blocks|vace_blocks)" if "vace_blocks" in targets else "blocks"
    return rf"{blocks}\.\d+\.{modules}"
