"""Samples made by two experts (Wan2.2-VACE-Fun A14B: the IPA VACE Sampler with a high-noise and a low-noise model,
switching at ``switch_step``): the switch each sample records, the one switch a dataset's preferred samples share, read
from their meta.json alone (the node checks it before ComfyUI unloads its models; the trainer once more on the data
it loaded). The record: ``settings["experts"] = {"high": {...}, "low": {...}}``, ``switch_step``, ``switch_sigma``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..choices import Expert
from ..fileio import FileReadError, read_json
from .layout import META_FILE, DatasetError, sample_path
from .manifest import read_manifest


@dataclass(frozen=True)
class Switch:
    """Where the samples' sampler handed over from the high-noise to the low-noise expert."""

    step: int
    sigma: float

    def t_range(self, expert: str) -> tuple[float, float]:
        """The flow times (t = sigma) ``expert`` denoised: low [0, sigma], high (sigma, 1]."""
        return (0.0, self.sigma) if expert == Expert.LOW else (self.sigma, 1.0)


def _settings(meta: dict) -> dict:
    return meta.get("settings") if isinstance(meta.get("settings"), dict) else {}


def sample_switch(sample_id: str, meta: dict) -> Optional[Switch]:
    """The sample's switch when it was made by two experts (None: one model); a record that names experts but lacks
    one of them or its switch is refused."""
    settings = _settings(meta)
    experts = settings.get("experts")
    if experts is None:
        return None
    if not isinstance(experts, dict) or not all(isinstance(experts.get(e), dict) for e in (Expert.HIGH, Expert.LOW)):
        raise DatasetError(f"sample {sample_id}: its settings name experts but not both 'high' and 'low' ({experts!r}); "
                           "collect it again with the IPA VACE Sampler")
    step, sigma = settings.get("switch_step"), settings.get("switch_sigma")
    if isinstance(step, bool) or not isinstance(step, int) or isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
            or not 0.0 < float(sigma) < 1.0:
        raise DatasetError(f"sample {sample_id}: a two-expert sample needs switch_step (an integer) and switch_sigma (between "
                           f"0 and 1) in its settings, got {step!r} and {sigma!r}; collect it again with the IPA VACE Sampler")
    return Switch(int(step), float(sigma))


def data_switch(samples: list[tuple[str, object, dict]]) -> Optional[Switch]:
    """The one switch all samples share (None: single-model samples). Refuses a mix of single- and two-expert samples
    and samples that disagree on the switch, naming them."""
    switches: dict[Optional[Switch], list[str]] = {}
    for sample_id, _, meta in samples:
        if meta.get("source") == "outside_video":
            continue  # encoded from a video, not sampled: fits any expert
        switches.setdefault(sample_switch(sample_id, meta), []).append(sample_id)
    if len(switches) <= 1:
        return next(iter(switches), None)
    described = "; ".join(f"{'one model' if s is None else f'switch_step {s.step} (sigma {s.sigma:.6g})'}: "
                          f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}" for s, ids in switches.items())
    raise DatasetError("the preferred samples were not all sampled with the same two-expert switch, so no expert has one t "
                       f"range to train on: {described}. Mark only samples of one switch preferred (or reject the others).")


def read_switch(dataset_dir: Path) -> Optional[Switch]:
    """:func:`data_switch` of a dataset's preferred samples, from their meta.json only (no tensors loaded)."""
    samples = []
    for entry in read_manifest(dataset_dir):
        if entry.get("status") != "preferred":
            continue
        try:
            meta = read_json(sample_path(dataset_dir, entry["id"]) / META_FILE)
        except (FileReadError, OSError):
            meta = {}  # the trainer names an unreadable sample when it loads it
        samples.append((entry["id"], None, meta if isinstance(meta, dict) else {}))
    return data_switch(samples)
