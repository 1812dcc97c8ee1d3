"""Micro-batches keep every sample as it was sampled: samples are batched only with others of the same latent shape,
reference frames and text length (buckets), so no text is padded with rows its sampler never saw."""

from __future__ import annotations

import pytest
import torch

from ipa_train.data.samples import add_sample, create_dataset
from ipa_train.training.batching import Sampler, collate, load_training_data, seed_for, shape_key
from ipa_train.training.distributed import Dist
from ipa_train.training.loop import train
from ipa_train.wan.model import build_tiny_transformer
from support.trainer_helpers import make_sample, tiny_config


def _sample_with_text(seed: int, tokens: int):
    sample = make_sample(seed)
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(tokens, 32)
    text[:5] = torch.randn(5, 32, generator=g)  # 5 real tokens, zero rows after them, as Wan's encoder writes
    sample.text_embedding = text
    return sample


def _data(tmp_path, lengths, batch_size):
    folder = create_dataset(tmp_path, "texts")
    for seed, tokens in enumerate(lengths):
        add_sample(folder, _sample_with_text(seed, tokens), status="preferred")
    config = tiny_config(folder, tmp_path / "out", batch_size=batch_size, steps=1)
    return config, load_training_data(config)


def test_batches_never_mix_text_lengths(tmp_path):
    config, data = _data(tmp_path, [7, 9, 7, 9, 9], batch_size=2)
    sampler = Sampler(config, data, Dist())
    assert sampler.batches_per_epoch == 3  # two of length 7 (one batch), three of length 9 (two batches)
    seen = []
    for step in range(6):  # two epochs
        batch = sampler.indices(step, 0)
        assert len({shape_key(data.preferred[i][1]) for i in batch}) == 1
        seen.append(tuple(sorted(batch)))
    assert sorted(i for batch in seen[:3] for i in batch) == [0, 1, 2, 3, 4]  # an epoch covers every sample once
    assert sorted(i for batch in seen[3:] for i in batch) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="one latent shape, reference frame count and text length"):
        collate([data.preferred[0][1], data.preferred[1][1]], 2, torch.device("cpu"), torch.float32)


def test_batch_size_one_draws_a_plain_shuffled_pass(tmp_path):
    config, data = _data(tmp_path, [7, 9, 7], batch_size=1)
    sampler = Sampler(config, data, Dist())
    generator = torch.Generator().manual_seed(seed_for(config.seed, "epoch", 0))
    assert [sampler.indices(step, 0)[0] for step in range(3)] == torch.randperm(3, generator=generator).tolist()


def test_batch_of_two_gives_each_sample_its_batch_of_one_velocity(tmp_path):
    """Two samples with texts of 7 and 9 rows at batch_size 2: each is predicted exactly as alone."""
    config, data = _data(tmp_path, [7, 9], batch_size=2)
    model = build_tiny_transformer(seed=0)
    sampler = Sampler(config, data, Dist())
    layers = len(model.config.vace_layers)

    def velocity(samples):
        batch = collate(samples, layers, torch.device("cpu"), torch.float32)
        g = torch.Generator().manual_seed(0)
        x_t = 0.5 * batch.x0 + 0.5 * torch.randn(batch.x0[:1].shape, generator=g).expand_as(batch.x0)
        with torch.no_grad():
            return model(hidden_states=x_t, timestep=torch.full((len(samples),), 500.0), encoder_hidden_states=batch.text,
                         control_hidden_states=batch.context, control_hidden_states_scale=batch.scale, return_dict=False)[0]

    alone = {i: velocity([data.preferred[i][1]])[0] for i in range(2)}
    for step in range(2):
        batch = sampler.indices(step, 0)
        assert len(batch) == 1  # never batched together
        assert torch.equal(velocity([data.preferred[i][1] for i in batch])[0], alone[batch[0]])
    # What padding to the longer text would have done: the shorter sample's velocity changes.
    short = data.preferred[0][1] if data.preferred[0][1].text_embedding.shape[0] == 7 else data.preferred[1][1]
    padded = type(short)(**{**short.__dict__, "text_embedding": torch.cat([short.text_embedding, torch.zeros(2, 32)])})
    index = [i for i in range(2) if data.preferred[i][1] is short][0]
    assert (velocity([padded])[0] - alone[index]).abs().max() > 1e-4
    # Same-length samples do batch together, with the same velocities as alone.
    config2, data2 = _data(tmp_path / "same", [7, 7], batch_size=2)
    pair = [data2.preferred[i][1] for i in Sampler(config2, data2, Dist()).indices(0, 0)]
    together = velocity(pair)
    for row, sample in enumerate(pair):
        assert torch.allclose(together[row], velocity([sample])[0], atol=1e-6)


def test_mixed_buckets_train(tmp_path):
    config, _ = _data(tmp_path, [7, 9, 9], batch_size=2)
    result = train(config.with_overrides({"steps": 3}))
    assert result.status == "finished" and len(result.history) == 3
