"""The status journal (dataset format 2): marks append to ``marks.jsonl`` instead of rewriting the manifest, every
reader sees them, rewrites fold them in, crashes and concurrent writers lose none, and format-1 datasets open."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time

import pytest

from ipa_train.data import journal
from ipa_train.data.layout import FORMAT_VERSION, MANIFEST, DatasetError, check_format_version
from ipa_train.data.manifest import compact, read_manifest, update_entries
from ipa_train.data.marks import count_statuses, set_status, set_statuses
from ipa_train.data.samples import add_sample, create_dataset, load_preferred
from ipa_train.jobs.config import RunConfig
from ipa_train.training.batching import load_training_data
from support.gallery_fixture import tiny_tensors


def make(tmp_path, count=4, name="d"):
    path = create_dataset(tmp_path, name)
    ids = [add_sample(path, tiny_tensors(seed), meta={"seed": seed}, summary={"seed": seed}).sample_id for seed in range(count)]
    return path, ids


def statuses(path):
    return {entry["id"]: entry["status"] for entry in read_manifest(path)}


def test_marks_append_to_the_journal_and_every_reader_sees_them(tmp_path):
    path, ids = make(tmp_path)
    manifest_before = (path / MANIFEST).read_bytes()
    set_status(path, ids[:2], "preferred")
    set_statuses(path, {ids[1]: "rejected", ids[2]: "preferred"})
    assert (path / MANIFEST).read_bytes() == manifest_before  # the manifest is not rewritten for a mark
    lines = (path / journal.JOURNAL).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["marks"] == {ids[1]: "rejected", ids[2]: "preferred"}
    expected = {ids[0]: "preferred", ids[1]: "rejected", ids[2]: "preferred", ids[3]: "pending"}
    assert statuses(path) == expected
    assert count_statuses(read_manifest(path)) == {"pending": 1, "preferred": 2, "rejected": 1}
    entry = next(e for e in read_manifest(path) if e["id"] == ids[1])
    assert entry["updated"] == json.loads(lines[1])["updated"]
    # The trainer's readers: load_preferred and the training data (with its fingerprint).
    assert sorted(sample_id for sample_id, _, _ in load_preferred(path)) == sorted([ids[0], ids[2]])
    data = load_training_data(RunConfig(dataset=str(path), base_model="tiny", output_dir=str(tmp_path / "out"), objective="dpo"))
    assert sorted(sid for sid, _, _ in data.preferred) == sorted([ids[0], ids[2]]) and [sid for sid, _, _ in data.rejected] == [ids[1]]
    # A manifest rewrite (the collector adding a sample) folds the journal in and removes it.
    add_sample(path, tiny_tensors(99))
    assert not (path / journal.JOURNAL).exists()
    on_disk = {json.loads(line)["id"]: json.loads(line)["status"] for line in (path / MANIFEST).read_text().splitlines()}
    assert {k: on_disk[k] for k in ids} == expected
    assert json.loads((path / "dataset.json").read_text())["format_version"] == FORMAT_VERSION == 2


def test_a_torn_last_line_is_ignored_and_cut_off_by_the_next_mark(tmp_path):
    path, ids = make(tmp_path)
    set_status(path, [ids[0]], "preferred")
    with open(path / journal.JOURNAL, "ab") as handle:  # a writer killed mid-line: never acknowledged
        handle.write(b'{"updated": "2026-01-01T00:00:00.000+00:00", "marks": {"' + ids[1].encode() + b'": "rej')
    assert statuses(path)[ids[1]] == "pending" and statuses(path)[ids[0]] == "preferred"
    set_status(path, [ids[2]], "rejected")
    lines = (path / journal.JOURNAL).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1]) and len(lines) == 3
    assert statuses(path) == {ids[0]: "preferred", ids[1]: "pending", ids[2]: "rejected", ids[3]: "pending"}


def test_a_crash_between_manifest_rewrite_and_journal_removal_replays_to_the_same(tmp_path, monkeypatch):
    path, ids = make(tmp_path)
    set_status(path, [ids[0]], "preferred")
    set_status(path, [ids[0]], "rejected")
    set_status(path, [ids[1]], "preferred")
    expected = statuses(path)

    def killed(_):
        raise KeyboardInterrupt("killed after the manifest was renamed into place")

    monkeypatch.setattr(journal, "remove_journal", killed)
    with pytest.raises(KeyboardInterrupt):
        compact(path)
    monkeypatch.undo()
    assert (path / journal.JOURNAL).exists() and statuses(path) == expected  # replayed over a manifest holding them
    set_status(path, [ids[0]], "preferred")  # later marks still win over the replayed ones
    expected[ids[0]] = "preferred"
    assert statuses(path) == expected
    state = compact(path)
    assert state.journal_identity is None and not (path / journal.JOURNAL).exists()
    assert {e["id"]: e["status"] for e in state.entries} == expected == statuses(path)


def test_damaged_journal_lines_newer_formats_and_symlinks_are_refused_with_a_reason(tmp_path):
    path, ids = make(tmp_path)
    (path / journal.JOURNAL).write_text('{"updated": "x", "marks": {"a": "preferred"}}\nnot json\n')
    with pytest.raises(DatasetError, match="marks.jsonl, byte 46: not a JSON mark record.*delete that line"):
        read_manifest(path)
    (path / journal.JOURNAL).write_text('{"marks": ["a"]}\n')
    with pytest.raises(DatasetError, match="needs 'updated'"):
        read_manifest(path)
    (path / journal.JOURNAL).unlink()
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("")
    os.symlink(outside, path / journal.JOURNAL)
    with pytest.raises(DatasetError, match="symbolic link"):
        set_status(path, [ids[0]], "preferred")
    assert outside.read_text() == ""
    (path / journal.JOURNAL).unlink()
    info = json.loads((path / "dataset.json").read_text())
    (path / "dataset.json").write_text(json.dumps({**info, "format_version": 3}))
    with pytest.raises(DatasetError, match="format 3, made by a newer ComfyUI-IPA.*update the pack"):
        read_manifest(path)


def make_format_1(root, name="old_v1"):
    """A dataset exactly as format 1 wrote it: dataset.json says 1, statuses only in the manifest, no journal, the
    sample files' format_version 1 (the sample layout itself is unchanged in format 2)."""
    path, ids = make(root, count=3, name=name)
    (path / "dataset.json").write_text(json.dumps({"format_version": 1, "created": "2026-01-01T00:00:00.000+00:00", "name": name}, indent=2) + "\n")
    entries = [json.loads(line) for line in (path / MANIFEST).read_text().splitlines()]
    entries[0]["status"] = "preferred"
    (path / MANIFEST).write_text("".join(json.dumps(e) + "\n" for e in entries))
    for sample_id in ids:
        meta_file = path / "samples" / sample_id / "meta.json"
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "format_version": 1}))
    assert not (path / journal.JOURNAL).exists()
    return path, ids


def test_a_format_1_dataset_opens_lists_marks_and_trains(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    from ipa_train.gallery.api import create_app

    root = tmp_path / "ipa_datasets"
    path, ids = make_format_1(root)
    assert check_format_version(path) == 1
    assert statuses(path) == {ids[0]: "preferred", ids[1]: "pending", ids[2]: "pending"}
    assert [sample_id for sample_id, _, _ in load_preferred(path)] == [ids[0]]

    async def go():
        client = TestClient(TestServer(create_app(root)))
        await client.start_server()
        try:
            listed = await (await client.get("/ipa/datasets")).json()
            assert listed["datasets"] == [{"name": "old_v1", "total": 3, "counts": {"pending": 2, "preferred": 1, "rejected": 0}}]
            response = await client.post("/ipa/datasets/old_v1/marks", json={"ids": [ids[1]], "status": "preferred"})
            assert response.status == 200, await response.text()
            assert (await response.json())["counts"] == {"pending": 1, "preferred": 2, "rejected": 0}
            page = await (await client.get("/ipa/datasets/old_v1/samples", params={"status": "preferred"})).json()
            assert sorted(s["id"] for s in page["samples"]) == sorted(ids[:2])
        finally:
            await client.close()

    import asyncio

    asyncio.run(go())
    # The first mark made it a format-2 dataset (a format-1 reader would miss the journal), the rest untouched.
    info = json.loads((path / "dataset.json").read_text())
    assert info["format_version"] == 2 and info["name"] == "old_v1" and info["created"].startswith("2026-01-01")
    assert (path / journal.JOURNAL).exists()
    assert sorted(sample_id for sample_id, _, _ in load_preferred(path)) == sorted(ids[:2])


def test_the_gallery_cache_applies_new_journal_lines_without_reparsing_and_compacts_on_open(tmp_path):
    import ipa_train.data.manifest as manifest_module
    from ipa_train.data.manifest_cache import ManifestCache

    path, ids = make(tmp_path, count=5)
    set_status(path, [ids[0]], "rejected")  # a journal left from an earlier session
    cache = ManifestCache()
    first = cache.get(path)
    assert not (path / journal.JOURNAL).exists(), "opening the dataset folds the journal into the manifest"
    assert first.counts == {"pending": 4, "preferred": 0, "rejected": 1}
    counts, total, page = cache.page(path, None, "date", False, 0, 10)
    assert total == 5 and {s["id"]: s["status"] for s in page}[ids[0]] == "rejected"
    cache.page(path, frozenset({"pending"}), "date", False, 0, 10)
    parsed = []
    real_parse = manifest_module._parse_manifest
    manifest_module._parse_manifest = lambda p: parsed.append(p) or real_parse(p)
    try:
        set_statuses(path, {ids[1]: "preferred", ids[2]: "preferred"})  # another writer (the library, a node)
        set_status(path, [ids[1]], "rejected")
        parsed.clear()
        counts, total, page = cache.page(path, frozenset({"pending"}), "date", False, 0, 10)
        assert parsed == []  # applied from the journal's new lines; the manifest was not parsed again
        assert counts == {"pending": 2, "preferred": 1, "rejected": 2} and total == 2
        assert sorted(s["id"] for s in page) == sorted(ids[3:])
        assert cache.entry(path, ids[1])["status"] == "rejected"
        _, total, page = cache.page(path, None, "date", False, 0, 10)
        assert total == 5 and {s["id"]: s["status"] for s in page}[ids[2]] == "preferred"
    finally:
        manifest_module._parse_manifest = real_parse
    # A rewrite by another process (hand scores) replaces the manifest: the cache parses it again.
    update_entries(path, {ids[4]: {"hand_score": 0.5}})
    assert cache.get(path).by_id[ids[4]]["hand_score"] == 0.5 and cache.get(path).counts["rejected"] == 2


def _mark_sequence(path, ids, rounds):
    for round_ in range(rounds):
        for index, sample_id in enumerate(ids):
            set_status(path, [sample_id], ("preferred", "rejected", "pending")[(round_ + index) % 3])


def _add_and_compact(path, seeds):
    for seed in seeds:
        add_sample(path, tiny_tensors(seed))
        compact(path)


def test_concurrent_markers_collectors_and_compactions_lose_no_mark(tmp_path):
    """Another process marks (the ComfyUI server), a thread marks, and this thread adds samples and compacts (a
    collector): every writer takes the same file lock, and each marker's last round wins for its samples."""
    path, ids = make(tmp_path, count=6)
    rounds = 7
    process = mp.get_context("spawn").Process(target=_mark_sequence, args=(path, ids[:3], rounds))
    process.start()
    thread = threading.Thread(target=_mark_sequence, args=(path, ids[3:], rounds))
    thread.start()
    added = 0
    # Bounded by time, not by rounds: a spawned process under a loaded CI machine can take many seconds to start,
    # and the pause lets the markers take the (unfair) file lock between two collects.
    deadline = time.monotonic() + 180
    while process.is_alive() or thread.is_alive() or added < 3:  # collect (and compact) for as long as they mark
        _add_and_compact(path, [100 + added])
        added += 1
        assert time.monotonic() < deadline, f"the markers did not finish in 180 s ({added} collects)"
        time.sleep(0.005)
    thread.join(60)
    process.join(60)
    assert process.exitcode == 0 and not thread.is_alive()
    final = statuses(path)
    assert len(final) == 6 + added
    for index, sample_id in enumerate(ids):
        assert final[sample_id] == ("preferred", "rejected", "pending")[(rounds - 1 + index % 3) % 3], (index, final)


def test_lock_free_readers_see_only_states_that_existed_while_marks_and_compactions_run(tmp_path):
    path, ids = make(tmp_path, count=4)
    snapshots = [tuple(sorted(statuses(path).items()))]
    done = threading.Event()
    seen, problems = [], []

    def writer():
        try:
            for step in range(120):
                sample_id = ids[step % 4]
                status = ("preferred", "rejected", "pending")[(step // 4) % 3]
                set_status(path, [sample_id], status)
                current = dict(snapshots[-1])
                current[sample_id] = status
                snapshots.append(tuple(sorted(current.items())))
                if step % 5 == 4:
                    compact(path)
        finally:
            done.set()

    def reader():
        while not done.is_set():
            state = tuple(sorted(statuses(path).items()))
            seen.append(state)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    allowed = set(snapshots)
    problems = [state for state in seen if state not in allowed]
    assert len(seen) > 20 and problems == []
    assert tuple(sorted(statuses(path).items())) == snapshots[-1]
