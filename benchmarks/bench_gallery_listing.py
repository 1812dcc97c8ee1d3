"""Gallery listing and marking speed: `python benchmarks/bench_gallery_listing.py [--samples N] [--mark-sizes ...]`.

Builds a dataset whose manifest has N entries (the fields add_sample writes plus seed, prompt and some hand
scores) and one preview per sample, no tensors (listing must never need them), then times through the real
aiohttp handlers (standalone app, real HTTP on localhost):

- baseline: what a handler without the cache does per request (parse the manifest, count, filter, sort, slice);
- first page (cold: parses and sorts once), then warm pages at random offsets, per filter and sort;
- one mark (one status-journal line) and the next page after it (the cache applies the new journal line).

Then marking at each of --mark-sizes (600, 2,400, 10,000): one mark as the dataset format 1 made it (read the
manifest, rewrite it whole, atomically, under the lock: the baseline), against one journal append
(``append_statuses``) and a mark through the real POST handler, all measured in the same run.

Prints milliseconds and the ratios to the baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from ipa_train.data.layout import MANIFEST, SAMPLES_DIR, STATUSES, manifest_lock, utc_now  # noqa: E402
from ipa_train.data.manifest import read_manifest  # noqa: E402
from ipa_train.data.manifest_cache import sort_entries  # noqa: E402
from ipa_train.data.marks import append_statuses, count_statuses  # noqa: E402
from ipa_train.data.samples import create_dataset  # noqa: E402
from ipa_train.fileio import atomic_write_text  # noqa: E402
from ipa_train.gallery.api import create_app  # noqa: E402


def build(root: Path, count: int, name: str = "bench") -> Path:
    path = create_dataset(root, name)
    rng = random.Random(0)
    lines = []
    for index in range(count):
        sample_id = f"{index:016x}"
        entry = {
            "id": sample_id,
            "status": rng.choices(STATUSES, weights=(90, 3, 7))[0],
            "created": f"2026-01-01T00:{index // 6000 % 60:02d}:{index // 100 % 60:02d}.{index % 1000:03d}+00:00",
            "updated": "2026-01-01T00:00:00.000+00:00",
            "content_hash": f"{index:064x}",
            "frames": 22,
            "seed": rng.randrange(2**32),
            "prompt": "a dancer waving both hands in a sunlit studio, full body, 4k, detailed fingers",
        }
        if index % 3:
            entry["hand_score"] = round(rng.random(), 4)
        lines.append(json.dumps(entry) + "\n")
        folder = path / SAMPLES_DIR / sample_id
        folder.mkdir()
        (folder / "preview.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBP")
    (path / MANIFEST).write_text("".join(lines))
    return path


def baseline_page(path: Path, status: str, sort: str, offset: int, limit: int) -> list:
    entries = read_manifest(path)
    count_statuses(entries)
    view = [e for e in entries if status == "all" or e["status"] == status]
    return sort_entries(view, sort, True)[offset : offset + limit]


async def run(path: Path, root: Path, repeats: int, limit: int) -> None:
    count = len(read_manifest(path))
    rng = random.Random(1)

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        baseline_page(path, "pending", "hand_score", rng.randrange(0, count // 2), limit)
        times.append(time.perf_counter() - start)
    baseline = statistics.median(times)
    print(f"samples: {count:,}, page size {limit}")
    print(f"baseline (parse + count + filter + sort per request, no HTTP): {baseline * 1e3:8.2f} ms median")

    client = TestClient(TestServer(create_app(root)))
    await client.start_server()
    try:
        async def page(status: str, sort: str, offset: int) -> float:
            start = time.perf_counter()
            response = await client.get(
                "/ipa/datasets/bench/samples", params={"status": status, "sort": sort, "offset": str(offset), "limit": str(limit)}
            )
            body = await response.json()
            assert response.status == 200 and len(body["samples"]) <= limit, body
            return time.perf_counter() - start

        cold = await page("pending", "hand_score", 0)
        print(f"first page, cold (parse + sort once):                        {cold * 1e3:8.2f} ms")
        warm_all = []
        for status, sort in (("all", "date"), ("pending", "hand_score"), ("preferred", "seed"), ("rejected", "date")):
            await page(status, sort, 0)  # build this view once
            warm = [await page(status, sort, rng.randrange(0, max(1, count // 10))) for _ in range(repeats)]
            warm_all += warm
            print(f"warm page, status={status:<9} sort={sort:<10}                  {statistics.median(warm) * 1e3:8.2f} ms median, "
                  f"p95 {sorted(warm)[int(0.95 * len(warm)) - 1] * 1e3:.2f} ms")
        datasets = []
        for _ in range(repeats):
            start = time.perf_counter()
            await (await client.get("/ipa/datasets")).json()
            datasets.append(time.perf_counter() - start)
        print(f"dataset list with counts (warm):                             {statistics.median(datasets) * 1e3:8.2f} ms median")

        ids = [e["id"] for e in read_manifest(path)]
        marks, after = [], []
        for _ in range(max(3, repeats // 5)):
            start = time.perf_counter()
            response = await client.post("/ipa/datasets/bench/marks", json={"ids": [rng.choice(ids)], "status": "preferred"})
            assert response.status == 200
            marks.append(time.perf_counter() - start)
            after.append(await page("pending", "hand_score", 0))
        print(f"one mark (one status-journal line, fsynced, under the lock): {statistics.median(marks) * 1e3:8.2f} ms median")
        print(f"next page after a mark (cache applies the new journal line): {statistics.median(after) * 1e3:8.2f} ms median")
        print(f"warm page vs baseline: {statistics.median(warm_all) / baseline:.3f}x the time "
              f"({baseline / statistics.median(warm_all):.1f}x faster)")
    finally:
        await client.close()


def rewrite_mark(path: Path, statuses: dict[str, str]) -> None:
    """The baseline: a mark as dataset format 1 stored it (the former ``set_statuses``): under the lock, parse the
    whole manifest, change the entries, rewrite the whole file atomically."""
    with manifest_lock(path):
        entries = read_manifest(path)
        by_id = {entry["id"]: entry for entry in entries}
        now = utc_now()
        for sample_id, status in statuses.items():
            by_id[sample_id].update(status=status, updated=now)
        atomic_write_text(path / MANIFEST, "".join(json.dumps(entry) + "\n" for entry in entries))


async def run_marking(sizes: list[int], repeats: int) -> None:
    print(f"\nmarking one sample, median of {repeats} (baseline: the whole manifest rewritten, as format 1 did)")
    print(f"{'samples':>8} {'manifest':>9} {'rewrite (baseline)':>19} {'journal append':>15} {'POST /marks':>12} {'append vs rewrite':>18}")
    for count in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            baseline_path, journal_path = build(root, count, "rewrite"), build(root, count, "journal")
            rng = random.Random(count)
            ids = [f"{index:016x}" for index in range(count)]
            rewrite, append, post = [], [], []
            marks = [{rng.choice(ids): rng.choice(STATUSES)} for _ in range(repeats)]
            # One kind after the other: an fsync also flushes what the file system holds dirty, so an append right
            # after a 3.6 MB rewrite would pay for part of the rewrite.
            for mark in marks:
                start = time.perf_counter()
                rewrite_mark(baseline_path, mark)
                rewrite.append(time.perf_counter() - start)
            for mark in marks:
                start = time.perf_counter()
                append_statuses(journal_path, mark)
                append.append(time.perf_counter() - start)
            client = TestClient(TestServer(create_app(root)))
            await client.start_server()
            try:
                await (await client.get("/ipa/datasets/journal/samples")).json()  # the gallery has the dataset open
                for _ in range(repeats):
                    start = time.perf_counter()
                    response = await client.post("/ipa/datasets/journal/marks", json={"ids": [rng.choice(ids)], "status": "preferred"})
                    assert response.status == 200, await response.text()
                    await response.json()
                    post.append(time.perf_counter() - start)
            finally:
                await client.close()
            assert {e["id"]: e["status"] for e in read_manifest(journal_path)}  # the marks read back
            r, a, p = (statistics.median(x) * 1e3 for x in (rewrite, append, post))
            size = (baseline_path / MANIFEST).stat().st_size / 1e6
            print(f"{count:>8,} {size:>7.1f}MB {r:>16.2f} ms {a:>12.2f} ms {p:>9.2f} ms {r / a:>13.1f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--mark-sizes", default="600,2400,10000", help="dataset sizes for the marking comparison (comma-separated; empty: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        path = build(root, args.samples)
        print(f"built a {args.samples:,}-sample dataset in {time.perf_counter() - start:.1f} s (manifest "
              f"{(path / MANIFEST).stat().st_size / 1e6:.1f} MB, no tensor files)")
        asyncio.run(run(path, root, args.repeats, args.limit))
    sizes = [int(value) for value in args.mark_sizes.split(",") if value.strip()]
    if sizes:
        asyncio.run(run_marking(sizes, args.repeats))


if __name__ == "__main__":
    main()
