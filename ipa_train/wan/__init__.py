"""Wan2.1-VACE and Wan2.2-Animate model files: loading and the shipped configs (``model``, ``animate``), latent
conventions (``latents``), LoRA key layouts and file I/O (``lora_keys``, ``lora_io``), LoRA metadata (``lora_meta``),
base-model fingerprints (``fingerprint``). Depends on nothing in the pack but ``fileio``."""
