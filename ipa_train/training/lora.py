"""LoRA set-up for the trainer with peft (through diffusers' ``PeftAdapterMixin`` on the transformer), and the
reference model as the same module with its trained adapter switched off.

Adapters on the model:
    ``ipa``        the adapter being trained (zero-initialised ``lora_B``, so the policy starts equal to the reference)
    ``reference``  only when training starts from existing LoRAs (``init_lora``): the first one, frozen, at its
                   strength; ``reference_1``, ``reference_2``, ... the others. The policy is base + references + ipa,
                   the reference base + references (ComfyUI's ``W + strength * alpha / rank * B @ A`` for each).

Why not a deep copy for the reference: with ``lora_B = 0`` the same module with the adapter off is bit-identical
to a copy taken at initialisation (tested) and saves one full copy of the base weights (4 GiB for 1.3B,
32 GiB for 14B in bf16).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Optional

import torch

from ..wan.lora_targets import DEFAULT_TARGETS, target_regex

TRAINED_ADAPTER = "ipa"
REFERENCE_ADAPTER = "reference"

def add_trained_lora(model, rank: int, alpha: Optional[float] = None, dropout: float = 0.0, targets: Iterable[str] = DEFAULT_TARGETS):
    """Injects the trainable adapter ``ipa`` into ``model`` (in place) and freezes everything else."""
    from peft import LoraConfig

    regex = target_regex(targets)
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(rank if alpha is None else alpha),
        lora_dropout=float(dropout),
        target_modules=regex,
        init_lora_weights=True,  # kaiming A, zero B: the policy starts exactly at the reference
    )
    model.requires_grad_(False)
    try:
        with warnings.catch_warnings():  # a second adapter next to "reference" is intended
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            model.add_adapter(config, adapter_name=TRAINED_ADAPTER)
    except ValueError as exc:
        raise ValueError(f"LoRA targets {list(targets)} (regex {regex}) match no layer of this model: {exc}") from exc
    references = reference_adapters(model)
    if references:
        model.set_adapter(references + [TRAINED_ADAPTER])
    freeze_all_but_trained(model)
    return config


def reference_adapters(model) -> list[str]:
    """The frozen ``init_lora`` adapters on ``model``, in the order they were added."""
    return [name for name in getattr(model, "peft_config", {}) if name == REFERENCE_ADAPTER or name.startswith(REFERENCE_ADAPTER + "_")]


def add_reference_lora(model, state_dict: Mapping[str, torch.Tensor], alphas: Optional[Mapping[str, float]] = None,
                       strength: float = 1.0, index: int = 0) -> list[str]:
    """Loads an existing LoRA (diffusers module names, ``<module>.lora_A.weight``/``lora_B.weight``) as a frozen
    reference adapter (``reference``, then ``reference_1``, ...) at ``strength``; returns the module names it covers.
    Call before ``add_trained_lora``. peft's scale ``lora_alpha / r`` carries the strength: ``strength * alpha / r``
    is exactly the factor ComfyUI's LoRA loaders apply at that strength."""
    from peft import LoraConfig, set_peft_model_state_dict

    from ..wan.lora_io import peft_config_kwargs

    try:
        kwargs = peft_config_kwargs(state_dict, alphas or {})
    except ValueError as exc:
        raise ValueError("the initial LoRA holds no lora_A/lora_B weights that fit this model") from exc
    if strength != 1.0:
        kwargs["lora_alpha"] = kwargs["lora_alpha"] * strength
        kwargs["alpha_pattern"] = {module: alpha * strength for module, alpha in kwargs["alpha_pattern"].items()}
    modules = list(kwargs["target_modules"])
    config = LoraConfig(**kwargs)
    name = REFERENCE_ADAPTER if index == 0 else f"{REFERENCE_ADAPTER}_{index}"
    model.requires_grad_(False)
    with warnings.catch_warnings():  # several frozen adapters side by side are intended
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        model.add_adapter(config, adapter_name=name)
    result = set_peft_model_state_dict(model, dict(state_dict), adapter_name=name)
    unexpected = [key for key in getattr(result, "unexpected_keys", []) or [] if "lora_" in key]
    if unexpected:
        raise ValueError(f"the initial LoRA has weights this model lacks, e.g. {unexpected[:3]}")
    model.requires_grad_(False)
    return modules


def freeze_all_but_trained(model) -> None:
    """Only the ``ipa`` adapter trains. peft's ``set_adapter``/``enable_adapters`` make every active adapter
    trainable, so this runs after each adapter switch."""
    marker = f".{TRAINED_ADAPTER}."
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(marker in name and "lora_" in name)


@contextmanager
def reference_mode(model) -> Iterator[None]:
    """Inside the block ``model`` computes the reference: the base model, or base + the frozen initial LoRA.

    ``model`` is the bare transformer (not the DDP wrapper). Use under ``torch.no_grad()``. The trainable flags
    are restored exactly in ``finally`` (peft flips ``requires_grad`` when adapters are switched)."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    references = reference_adapters(model)
    try:
        if references:
            model.set_adapter(references)
        else:
            model.disable_adapters()
        yield
    finally:
        if references:
            model.set_adapter(references + [TRAINED_ADAPTER])
        else:
            model.enable_adapters()
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def trained_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


def trained_state_dict(model) -> dict[str, torch.Tensor]:
    """The trained adapter with diffusers module names (``blocks.0.attn1.to_q.lora_A.weight``), as peft's
    ``get_peft_model_state_dict`` gives it. Tensors are detached CPU copies."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=TRAINED_ADAPTER)
    return {key: value.detach().to("cpu").clone() for key, value in state.items()}
