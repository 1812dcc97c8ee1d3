import json
import multiprocessing as mp
import os

import pytest
import torch

from ipa_train.data.layout import DatasetError, dataset_path, list_datasets
from ipa_train.data.manifest import read_manifest
from ipa_train.data.marks import count_statuses, set_status
from ipa_train.data.samples import add_sample, create_dataset, load_preferred
from ipa_train.data.tensors import SampleTensors, validate_sample_tensors


def sample(seed=0, frames=3, h=4, w=6, ref_frames=1):
    g = torch.Generator().manual_seed(seed)
    return SampleTensors(
        latent=torch.randn(16, frames, h, w, generator=g),
        vace_context=torch.randn(96, frames, h, w, generator=g),
        text_embedding=torch.randn(8, 32, generator=g),
        hand_mask=(torch.rand(1, frames - ref_frames, h, w, generator=g) > 0.7).float(),
        ref_frames=ref_frames,
        vace_strength=0.8,
        text_length=5,
    )


def test_add_mark_and_load_round_trip(tmp_path):
    root = tmp_path / "datasets"
    path = create_dataset(root, "hands_v1")
    first = add_sample(path, sample(0), meta={"seed": 1, "prompt": "a dancer"}, previews={"preview.webp": b"RIFF"}, summary={"seed": 1})
    second = add_sample(path, sample(1), meta={"seed": 2})
    assert first.added and second.added and first.sample_id != second.sample_id
    assert list_datasets(root) == ["hands_v1"]
    assert (path / "samples" / first.sample_id / "preview.webp").read_bytes() == b"RIFF"
    with pytest.raises(DatasetError, match="no preferred samples \\(2 pending, 0 rejected\\)"):
        load_preferred(path)
    set_status(path, [first.sample_id], "preferred")
    set_status(path, [second.sample_id], "rejected")
    loaded = load_preferred(path)
    assert [sample_id for sample_id, _, _ in loaded] == [first.sample_id]
    tensors, meta = loaded[0][1], loaded[0][2]
    original = sample(0)
    assert torch.equal(tensors.latent, original.latent) and torch.equal(tensors.hand_mask, original.hand_mask)
    assert tensors.ref_frames == 1 and tensors.text_length == 5 and tensors.vace_strength == pytest.approx(0.8)
    assert meta["prompt"] == "a dancer" and meta["content_hash"].startswith(first.sample_id)
    assert count_statuses(read_manifest(path)) == {"pending": 0, "preferred": 1, "rejected": 1}


def test_identical_content_is_stored_once_and_never_overwritten(tmp_path):
    path = create_dataset(tmp_path, "d")
    first = add_sample(path, sample(0), meta={"seed": 1}, status="preferred")
    again = add_sample(path, sample(0), meta={"seed": 999}, status="pending")
    assert not again.added and again.sample_id == first.sample_id and again.status == "preferred"
    assert len(read_manifest(path)) == 1
    assert json.loads((path / "samples" / first.sample_id / "meta.json").read_text())["seed"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(latent=torch.zeros(4, 3, 4, 6)), "latent must be \\[16, F, h, w\\]"),
        (dict(vace_context=torch.zeros(96, 2, 4, 6)), "vace_context frames/size"),
        (dict(hand_mask=torch.zeros(1, 3, 4, 6)), "hand_mask must be \\(1, 2, 4, 6\\)"),
        (dict(text_embedding=torch.zeros(8)), "text_embedding must be"),
        (dict(ref_frames=3), "ref_frames=3"),
        (dict(latent=torch.full((16, 3, 4, 6), float("nan"))), "NaN"),
    ],
)
def test_bad_tensors_are_refused_with_the_sample_named(change, message):
    tensors = sample(0)
    for key, value in change.items():
        setattr(tensors, key, value)
    with pytest.raises(DatasetError, match=message):
        validate_sample_tensors(tensors, "abc")
    with pytest.raises(DatasetError, match="sample abc"):
        validate_sample_tensors(tensors, "abc")


@pytest.mark.parametrize("name", ["..", "../x", "/abs", "a/b", ".hidden", "", "a\\b", "x" * 200, "hands\n"])
def test_dataset_names_are_validated(tmp_path, name):
    with pytest.raises(DatasetError):
        dataset_path(tmp_path, name)


def test_symlinked_dataset_leading_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "evil")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        dataset_path(root, "evil")


def test_unknown_ids_change_nothing(tmp_path):
    path = create_dataset(tmp_path, "d")
    added = add_sample(path, sample(0))
    with pytest.raises(KeyError):
        set_status(path, [added.sample_id, "0" * 16], "preferred")
    assert read_manifest(path)[0]["status"] == "pending"


def _writer(path, seeds):
    for seed in seeds:
        add_sample(path, sample(seed))


def _marker(path, ids, status):
    for _ in range(5):
        set_status(path, ids, status)


def test_concurrent_writers_and_markers_lose_nothing(tmp_path):
    path = create_dataset(tmp_path, "d")
    base = add_sample(path, sample(100))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, range(i * 6, i * 6 + 6))) for i in range(2)]
    procs.append(ctx.Process(target=_marker, args=(path, [base.sample_id], "preferred")))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    entries = read_manifest(path)
    assert len(entries) == 13 and len({entry["id"] for entry in entries}) == 13
    assert next(e for e in entries if e["id"] == base.sample_id)["status"] == "preferred"
    assert not list((path / "samples").glob(".tmp-*"))


def test_a_killed_write_leaves_no_manifest_entry(tmp_path, monkeypatch):
    path = create_dataset(tmp_path, "d")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    import ipa_train.data.samples as samples_module

    monkeypatch.setattr(samples_module, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        add_sample(path, sample(0))
    assert read_manifest(path) == []
    assert list((path / "samples").iterdir()) == []
