"""Training data and batching: which samples a run trains on (validated before any model is built), how a
micro-batch is put together, and which samples, noise and flow time a (step, micro-batch, rank) gets. Data
order, noise and ``t`` derive from (seed, step, micro-batch, rank) alone, so a resumed run draws exactly what
the uninterrupted run would."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..choices import Objective, TimestepSampling
from ..data.fingerprint import dataset_fingerprint
from ..data.layout import DatasetError
from ..data.manifest import read_manifest
from ..data.samples import load_preferred, load_sample
from ..data.tensors import SampleTensors, validate_sample_tensors
from ..data.two_experts import Switch, data_switch
from ..jobs.config import RunConfig
from ..wan.animate import AnimateInputs
from .distributed import Dist
from .experts import expert_view


@dataclass
class TrainingData:
    preferred: list[tuple[str, SampleTensors, dict]]
    rejected: list[tuple[str, SampleTensors, dict]]
    loser_candidates: list[list[int]]  # per preferred sample: indices into ``rejected`` usable as its loser
    fingerprint: str
    switch: Optional[Switch] = None  # two-expert samples: where the sampler switched experts (``experts``)
    expert: Optional[str] = None  # the expert whose view this is (its settings in the samples' meta)
    t_range: tuple[float, float] = (0.0, 1.0)  # the flow times this run trains on

    def for_expert(self, expert: str) -> "TrainingData":
        """The samples as ``expert`` saw them: its own sampling record as their settings, its t range."""
        if self.switch is None:
            return self
        return dataclasses.replace(self, preferred=expert_view(self.preferred, expert), rejected=expert_view(self.rejected, expert),
                                   expert=expert, t_range=self.switch.t_range(expert))


def shape_key(tensors: SampleTensors) -> tuple:
    """What samples of one micro-batch must share: latent shape, reference frames and the text length each had when it
    was sampled. The Wan text embedder has no attention mask, so padding a shorter text with zero rows to batch it
    would change that sample's velocity; samples are batched only within one key (a bucket) instead."""
    key = (tuple(tensors.latent.shape), int(tensors.ref_frames), int(tensors.text_embedding.shape[0]))
    animate = getattr(tensors, "animate", None)  # (duck-typed samples without it batch as before)
    if animate is not None:  # Animate: also the face frames and the CLIP-vision tokens
        key += (tuple(animate.face_pixels.shape), tuple(animate.image_embedding.shape))
    return key


def check_one_model_type(dataset_dir: Path, samples: list[tuple[str, SampleTensors, dict]]) -> str:
    """The dataset's model type; a dataset mixing types (e.g. folders copied in by hand) is refused."""
    types: dict[str, str] = {}
    for sample_id, tensors, meta in samples:
        if meta.get("model_type") not in (None, tensors.model_type):
            raise DatasetError(f"sample {sample_id}: meta.json says {meta['model_type']} but its tensors are a {tensors.model_type} sample; collect it again")
        types.setdefault(tensors.model_type, sample_id)
    if len(types) > 1:
        listed = ", ".join(f"{kind} (e.g. {sample_id})" for kind, sample_id in sorted(types.items()))
        raise DatasetError(f"dataset {dataset_dir.name} mixes model types: {listed}. A run trains one model: keep one type per dataset")
    return next(iter(types))


def load_training_data(config: RunConfig) -> TrainingData:
    """Loads and validates the preferred (and for DPO the rejected) samples before any model is built."""
    dataset_dir = Path(config.dataset)
    if not dataset_dir.is_dir():
        raise DatasetError(f"dataset folder {dataset_dir} does not exist; set 'dataset' to a folder made by the IPA collector")
    preferred = load_preferred(dataset_dir)
    entries = read_manifest(dataset_dir)
    rejected: list[tuple[str, SampleTensors, dict]] = []
    if config.objective == Objective.DPO:
        for entry in entries:
            if entry.get("status") == "rejected":
                tensors, meta = load_sample(dataset_dir, entry["id"])
                validate_sample_tensors(tensors, entry["id"])
                rejected.append((entry["id"], tensors, meta))
        if not rejected:
            raise DatasetError(
                f"objective 'dpo' needs rejected samples to pair with the preferred ones, but dataset {dataset_dir.name} has none; "
                "mark some samples as rejected, or use objective 'ipa' (good samples only)"
            )
    candidates: list[list[int]] = []
    if config.objective == Objective.DPO:
        for sample_id, tensors, meta in preferred:
            same_shape = [j for j, (_, other, _) in enumerate(rejected) if shape_key(other) == shape_key(tensors)]
            same_prompt = [j for j in same_shape if meta.get("prompt") is not None and rejected[j][2].get("prompt") == meta.get("prompt")]
            if not same_shape:
                raise DatasetError(
                    f"objective 'dpo': preferred sample {sample_id} (latent {tuple(tensors.latent.shape)}, "
                    f"{tensors.text_embedding.shape[0]} text tokens) has no rejected sample of the same size and text length to "
                    "pair with; reject a sample of that size or drop this one"
                )
            candidates.append(same_prompt or same_shape)
    check_one_model_type(dataset_dir, preferred + rejected)
    hashes = [(sid, meta.get("content_hash", "")) for sid, _, meta in preferred + rejected]
    return TrainingData(preferred, rejected, candidates, dataset_fingerprint(hashes), switch=data_switch(preferred + rejected))


def check_data_fits_model(data: TrainingData, model) -> None:
    cfg = model.config
    p_t, p_h, p_w = cfg.patch_size
    for sample_id, tensors, _ in data.preferred + data.rejected:
        channels, frames, height, width = tensors.latent.shape
        problems = []
        if tensors.animate is None and channels != cfg.in_channels:
            problems.append(f"latent has {channels} channels, the model takes {cfg.in_channels}")
        if tensors.animate is not None:
            problems += _animate_misfits(tensors, cfg)
        elif not hasattr(cfg, "vace_in_channels"):
            problems.append("it is a Wan2.1-VACE sample but the base model is not a VACE model")
        elif tensors.vace_context.shape[0] != cfg.vace_in_channels:
            problems.append(f"vace_context has {tensors.vace_context.shape[0]} channels, the model takes {cfg.vace_in_channels}")
        if tensors.text_embedding.shape[1] != cfg.text_dim:
            problems.append(f"text_embedding width {tensors.text_embedding.shape[1]} differs from the model's text_dim {cfg.text_dim}")
        if frames % p_t or height % p_h or width % p_w:
            problems.append(f"latent size {(frames, height, width)} is not divisible by the patch size {tuple(cfg.patch_size)}")
        if problems:
            raise DatasetError(f"sample {sample_id} does not fit the base model: " + "; ".join(problems) + ". Was it collected with another model?")


def _animate_misfits(tensors: SampleTensors, cfg) -> list[str]:
    """What keeps an Animate sample from the base model's config (diffusers' WanAnimateTransformer3DModel)."""
    if getattr(cfg, "motion_encoder_size", None) is None:
        return ["it is a Wan2.2-Animate sample but the base model is not an Animate model"]
    problems = []
    channels = tensors.latent.shape[0] + tensors.animate.concat_latent.shape[0]
    if channels != cfg.in_channels:
        problems.append(f"latent + concat_latent have {channels} channels, the model takes {cfg.in_channels}")
    if tensors.animate.image_embedding.shape[1] != cfg.image_dim:
        problems.append(f"image_embedding width {tensors.animate.image_embedding.shape[1]} differs from the model's image_dim {cfg.image_dim}")
    return problems


def seed_for(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") & (2**63 - 1)


@dataclass
class Batch:
    x0: torch.Tensor
    context: Optional[torch.Tensor]  # VACE: control_hidden_states; None for Animate
    text: torch.Tensor
    hand_mask: torch.Tensor
    scale: Optional[torch.Tensor]  # VACE: control_hidden_states_scale; None for Animate
    ref_frames: int
    animate: Optional[AnimateInputs] = None  # Animate: what AnimateWanModel saw besides x_t, t and the text


def collate(samples: list[SampleTensors], n_vace_layers: int, device: torch.device, dtype: torch.dtype) -> Batch:
    """One micro-batch: VACE samples give ``context`` and ``scale``, Animate samples ``animate`` (``n_vace_layers`` unused)."""
    keys = {shape_key(s) for s in samples}
    if len(keys) > 1:  # the Sampler never builds such a batch; padding would change the shorter texts' velocity
        raise ValueError(f"a micro-batch needs one latent shape, reference frame count and text length, got {sorted(keys)}")
    text = torch.stack([s.text_embedding.float() for s in samples])  # each text exactly as it was when sampled
    if samples[0].animate is not None:
        return Batch(
            x0=torch.stack([s.latent.float() for s in samples]).to(device),
            context=None,
            text=text.to(device, dtype),
            hand_mask=torch.stack([s.hand_mask.float() for s in samples]).to(device),
            scale=None,
            ref_frames=int(samples[0].ref_frames),
            animate=animate_inputs(samples, device, dtype),
        )
    strengths = torch.tensor([float(s.vace_strength) for s in samples])
    if bool((strengths == strengths[0]).all()):
        scale = strengths[0] * torch.ones(n_vace_layers)
    else:  # one strength per sample: [layers, B, 1, 1] broadcasts against the [B, tokens, dim] control hints
        scale = strengths.view(1, -1, 1, 1).expand(n_vace_layers, -1, 1, 1).contiguous()
    return Batch(
        x0=torch.stack([s.latent.float() for s in samples]).to(device),
        context=torch.stack([s.vace_context.float() for s in samples]).to(device, dtype),
        text=text.to(device, dtype),
        hand_mask=torch.stack([s.hand_mask.float() for s in samples]).to(device),
        scale=scale.to(device, dtype),
        ref_frames=int(samples[0].ref_frames),
    )


def animate_inputs(samples: list[SampleTensors], device: torch.device, dtype: torch.dtype) -> AnimateInputs:
    """The Animate samples' inputs stacked on a batch dim, in the compute dtype (ComfyUI too casts every input to the
    model's dtype). The float16 face pixels go straight to it: no float32 copy of the largest tensor."""
    return AnimateInputs(
        concat_latent=torch.stack([s.animate.concat_latent for s in samples]).to(device, dtype),
        pose_latent=torch.stack([s.animate.pose_latent for s in samples]).to(device, dtype),
        face_pixels=torch.stack([s.animate.face_pixels for s in samples]).to(device, dtype),
        image_embedding=torch.stack([s.animate.image_embedding for s in samples]).to(device, dtype),
    )


def sample_t(config: RunConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """Flow time in [0, 1] (1 = noise): uniform (Wan's default), logit-normal, or uniform pushed by ``shift``."""
    if config.timestep_sampling == TimestepSampling.LOGIT_NORMAL:
        t = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(n, generator=generator))
    else:
        t = torch.rand(n, generator=generator)
        if config.timestep_sampling == TimestepSampling.SHIFTED:
            t = config.shift * t / (1 + (config.shift - 1) * t)
    return t.clamp(0.0, 1.0)


class Sampler:
    """Which samples, noise and ``t`` a (step, micro-batch, rank) gets; a pure function of those and the seed.

    Each epoch shuffles the preferred samples, then forms micro-batches of ``batch_size`` within each bucket
    (:func:`shape_key`) in that shuffled order; a bucket's last batch of the epoch may be smaller. The global batch
    number ``(step * grad_accum + micro) * world + rank`` walks through the epochs' batches. With one bucket and
    ``batch_size`` 1 this is a plain shuffled pass over the samples."""

    def __init__(self, config: RunConfig, data: TrainingData, dist_info: Dist):
        self.config = config
        self.data = data
        self.dist = dist_info
        self._epoch: tuple[int, list[list[int]]] = (-1, [])
        keys = [shape_key(tensors) for _, tensors, _ in data.preferred]
        sizes: dict[tuple, int] = {}
        for key in keys:
            sizes[key] = sizes.get(key, 0) + 1
        self.batches_per_epoch = sum(-(-size // config.batch_size) for size in sizes.values())
        self._keys = keys

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._epoch[0] != epoch:
            generator = torch.Generator().manual_seed(seed_for(self.config.seed, "epoch", epoch))
            order = torch.randperm(len(self.data.preferred), generator=generator).tolist()
            open_batches: dict[tuple, list[int]] = {}
            batches: list[list[int]] = []
            for index in order:  # a batch takes its place in the epoch where its first sample falls
                key = self._keys[index]
                if key not in open_batches:
                    open_batches[key] = []
                    batches.append(open_batches[key])
                open_batches[key].append(index)
                if len(open_batches[key]) == self.config.batch_size:
                    del open_batches[key]
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def indices(self, step: int, micro: int) -> list[int]:
        c = self.config
        k = (step * c.grad_accum + micro) * self.dist.world + self.dist.rank
        return list(self._batches(k // self.batches_per_epoch)[k % self.batches_per_epoch])

    def generator(self, step: int, micro: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed_for(self.config.seed, step, micro, self.dist.rank))
