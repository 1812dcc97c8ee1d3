"""HTTP routes of the curation gallery, as plain aiohttp handlers over one dataset root.

ComfyUI registers them on its server (``nodes/gallery.py``); tests and ``create_app`` run the very same handlers
on a standalone aiohttp application. Nothing here imports ComfyUI.

Routes (``prefix`` is ``/ipa``)::

    GET  /ipa/datasets                                   datasets with counts per status
    GET  /ipa/datasets/{name}/samples                    one page of samples: offset, limit, status, sort, order
    GET  /ipa/datasets/{name}/samples/{id}               manifest entry, meta.json (small fields), preview files
    GET  /ipa/datasets/{name}/samples/{id}/files/{file}  a preview image or video of the sample
    GET  /ipa/datasets/{name}/samples/{id}/hands/{n}.webp  looping close-up of hand track n (from meta hand_boxes)
    POST /ipa/datasets/{name}/marks                      {"ids": [...], "status": s} or {"marks": [{"id", "status"}]}
    GET  /ipa/datasets/{name}/hand_scores                whether hands can be scored here; the last job's progress
    POST /ipa/datasets/{name}/hand_scores                start scoring in the background: {"rescore", "gpu"} (or {"cancel": true})
    DELETE /ipa/datasets/{name}/hand_scores              cancel the running job

Listing reads only the manifest (parsed once per manifest version and cached, with the status journal's new lines
applied as they come), never tensors or meta files. A mark appends one journal line: its cost does not grow with
the dataset.
Names from the URL are validated by ``ipa_train.data.dataset`` (one plain folder name, no traversal, nothing that
resolves outside the root); files are served only from inside their sample folder.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import stat
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from aiohttp import web

from ..data import dataset as ds
from ..data import journal
from ..pose.hand_crops import hand_tracks_from_meta, render_hand_crop
from .hand_score_jobs import DetectorSource, DetectorUnavailable, HandScoreJobs, JobRunning

PREVIEW_FILE = "preview.webp"
HANDS_FILE = "hands.webp"
SORTS = ("date", "updated", "seed", "hand_score")
MAX_LIMIT = 500
DEFAULT_LIMIT = 60
MAX_MARKS = 10_000
MAX_META_FIELD_CHARS = 8_000  # larger meta values (keypoint lists, boxes) stay on disk, named in "omitted"
_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(webp|png|jpe?g|gif|mp4|webm)$")
_CONTENT_TYPES = {
    "webp": "image/webp",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
}
_LIST_FIELDS_DROPPED = ("content_hash",)
_PROMPT_CHARS = 300

GALLERY_API_KEY = web.AppKey("gallery_api", object)
NO_DETECTOR_MESSAGE = (
    "Hand scoring needs DWPose's weights (yolox_l.onnx and dw-ll_ucoco_384.onnx, published at "
    "https://huggingface.co/yzd-v/DWPose), and this server was started without a place to find them: "
    "start it with --dwpose-dir FOLDER (in ComfyUI they are looked up in models/dwpose)."
)

RootLike = Union[str, os.PathLike, Callable[[], Union[str, os.PathLike]]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _plain_path(root: Path, *parts: str, last_is_file: bool = False) -> bool:
    """Whether ``root/part/...`` exists with no symlink in any component below ``root`` (checked with ``lstat``,
    one component at a time: ``is_file()`` and ``resolve()`` follow links, a symlinked manifest would pass them)."""
    path = root
    for index, part in enumerate(parts):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISLNK(mode):
            return False
        last = index == len(parts) - 1
        if not (stat.S_ISREG(mode) if last and last_is_file else stat.S_ISDIR(mode)):
            return False
    return True


JSON_BODY_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError)


async def _json_body(request: web.Request, usage: str) -> tuple[Any, Optional[web.Response]]:
    """The request's JSON body, or a 400/415 answer: bodies must be ``application/json`` (a cross-site form or
    ``text/plain`` POST then needs a CORS preflight, which is never granted), and bad JSON of any depth is a 400,
    never a 500 (deeply nested arrays make the parser raise RecursionError)."""
    if request.content_type != "application/json":
        return None, _error(415, f"send the body as Content-Type: application/json; {usage}")
    try:
        return await request.json(), None
    except JSON_BODY_ERRORS as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        return None, _error(400, f"the body must be JSON ({reason}); {usage}")


@dataclass
class _CachedManifest:
    key: tuple  # the manifest file's (inode, size, mtime): every rewrite replaces the file
    journal: Optional[tuple[int, int]]  # the status journal applied, and up to which byte
    journal_end: int
    entries: list[dict[str, Any]]
    counts: dict[str, int]
    views: dict[tuple, list[dict[str, Any]]]
    by_id: dict[str, dict[str, Any]]


class ManifestCache:
    """Parsed manifests with their status journal applied, per dataset. A manifest rewrite (new inode) means a full
    parse; marks only append to the journal, so a mark costs reading the new journal lines, not the manifest.
    Entries are updated in place under the lock: callers take copies (``page``, ``entry``), never the live dicts.
    A full parse that finds a journal folds it into the manifest ("compacted on open") when the lock is free."""

    def __init__(self, max_datasets: int = 16):
        self._lock = threading.Lock()
        self._items: OrderedDict[str, _CachedManifest] = OrderedDict()
        self._max = max_datasets

    def get(self, dataset_dir: Path) -> _CachedManifest:
        path = dataset_dir / ds.MANIFEST
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise ds.DatasetError(f"{dataset_dir.name} is not an IPA dataset (no {ds.MANIFEST})") from None
        if not stat.S_ISREG(info.st_mode):  # a symlink (or anything else) is never followed out of the dataset
            raise ds.DatasetError(f"{dataset_dir.name}/{ds.MANIFEST} is not a plain file (a symlink?); refusing it")
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        with self._lock:
            cached = self._items.get(str(dataset_dir))
            if cached is not None and cached.key == key and self._apply_journal_tail(dataset_dir, cached):
                self._items.move_to_end(str(dataset_dir))
                return cached
        state = None
        if journal.journal_path(dataset_dir).exists():
            try:
                state = ds.compact(dataset_dir, timeout=0)  # None while a collector holds the lock: compact next time
            except OSError:
                state = None  # a folder this server cannot write: the journal stays, reads apply it
        if state is None:
            state = ds.read_manifest_state(dataset_dir)
        entries = state.entries
        cached = _CachedManifest(
            state.manifest_key, state.journal_identity, state.journal_end, entries, ds.count_statuses(entries), {},
            {entry.get("id"): entry for entry in entries},
        )  # fmt: skip
        with self._lock:
            self._items[str(dataset_dir)] = cached
            self._items.move_to_end(str(dataset_dir))
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return cached

    def _apply_journal_tail(self, dataset_dir: Path, cached: _CachedManifest) -> bool:
        """Applies journal lines appended since the last look (caller holds the lock); False when the journal is not
        the one applied before (folded into a manifest this cache has not seen): then parse again."""
        try:
            tail = journal.read_journal(dataset_dir, cached.journal, cached.journal_end)
        except journal.JournalError as exc:
            raise ds.DatasetError(str(exc)) from None
        if tail.replaced:
            return False
        if tail.identity is None or not tail.records:
            return True
        cached.journal, cached.journal_end = tail.identity, tail.end
        changed = ds.apply_marks(cached.by_id, tail.records)
        for previous, status in changed:
            cached.counts[previous] = cached.counts.get(previous, 0) - 1
            cached.counts[status] = cached.counts.get(status, 0) + 1
        if changed:
            # Unfiltered views keep their order (statuses are not a sort key, the live entries show the new
            # status); filtered views and the "updated" order change.
            cached.views = {k: v for k, v in cached.views.items() if k[0] is None and k[1] != "updated"}
        return True

    def page(self, dataset_dir: Path, statuses: Optional[frozenset[str]], sort: str, descending: bool, offset: int, limit: int) -> tuple[dict[str, int], int, list[dict[str, Any]]]:
        """Counts, the size of the filtered view and copies of one page of it (views are cached per manifest
        version and journal position, so paging is a slice)."""
        cached = self.get(dataset_dir)
        view_key = (statuses, sort, descending)
        with self._lock:
            found = cached.views.get(view_key)
            if found is None:
                found = [entry for entry in cached.entries if statuses is None or entry.get("status", "pending") in statuses]
                found = _sorted(found, sort, descending)
                cached.views[view_key] = found
            return dict(cached.counts), len(found), [dict(entry) for entry in found[offset : offset + limit]]

    def entry(self, dataset_dir: Path, sample_id: str) -> Optional[dict[str, Any]]:
        cached = self.get(dataset_dir)
        with self._lock:
            found = cached.by_id.get(sample_id)
            return dict(found) if found is not None else None

    def counts(self, dataset_dir: Path) -> tuple[int, dict[str, int]]:
        cached = self.get(dataset_dir)
        with self._lock:
            return len(cached.entries), dict(cached.counts)

    def unknown_ids(self, dataset_dir: Path, sample_ids: list[str]) -> list[str]:
        cached = self.get(dataset_dir)
        with self._lock:
            return [sample_id for sample_id in sample_ids if sample_id not in cached.by_id]


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _sorted(entries: list[dict[str, Any]], sort: str, descending: bool) -> list[dict[str, Any]]:
    """Stable sort; entries without the sort field (no seed, not scored) always come last."""
    if sort in ("date", "updated"):
        field = "created" if sort == "date" else "updated"
        return sorted(entries, key=lambda entry: str(entry.get(field, "")), reverse=descending)
    field = "seed" if sort == "seed" else "hand_score"
    present = [entry for entry in entries if _number(entry.get(field)) is not None]
    missing = [entry for entry in entries if _number(entry.get(field)) is None]
    present.sort(key=lambda entry: _number(entry.get(field)), reverse=descending)
    return present + missing


def _list_item(entry: dict[str, Any]) -> dict[str, Any]:
    item = {key: value for key, value in entry.items() if key not in _LIST_FIELDS_DROPPED}
    prompt = item.get("prompt")
    if isinstance(prompt, str) and len(prompt) > _PROMPT_CHARS:
        item["prompt"] = prompt[: _PROMPT_CHARS - 1] + "…"
    return item


def _sample_files(folder: Path) -> list[str]:
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return []
    return [name for name in names if _FILE_RE.fullmatch(name)]


def _small_meta(meta: Any) -> tuple[dict[str, Any], list[str]]:
    if not isinstance(meta, dict):
        return {}, []
    small, omitted = {}, []
    for key, value in meta.items():
        if len(json.dumps(value, default=str)) > MAX_META_FIELD_CHARS:
            omitted.append(key)
        else:
            small[key] = value
    return small, omitted


class _LRUBytes:
    def __init__(self, max_items: int = 64):
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._max = max_items

    def get(self, key: tuple) -> Optional[bytes]:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._max:
                self._items.popitem(last=False)


class GalleryAPI:
    """The gallery's handlers over ``root`` (a folder, or a callable giving it, so ComfyUI's output folder is
    looked up when a request comes rather than when the pack is imported). ``hand_scoring`` provides the pose
    detector for the hand score; without it the hand score routes say what is missing and nothing is scored."""

    def __init__(self, root: RootLike, prefix: str = "/ipa", hand_scoring: Optional[DetectorSource] = None):
        self._root = root
        self.prefix = prefix.rstrip("/")
        self.manifests = ManifestCache()
        self._crops = _LRUBytes()
        self.hand_scoring = hand_scoring
        self.hand_jobs = HandScoreJobs()

    # ------------------------------------------------------------------------------------------- plumbing

    def root(self) -> Path:
        value = self._root() if callable(self._root) else self._root
        return Path(value)

    def route_table(self) -> list[tuple[str, str, Callable]]:
        p = self.prefix
        return [
            ("GET", f"{p}/datasets", self.list_datasets),
            ("GET", f"{p}/datasets/{{name}}/samples", self.list_samples),
            ("GET", f"{p}/datasets/{{name}}/samples/{{sample_id}}", self.get_sample),
            ("GET", f"{p}/datasets/{{name}}/samples/{{sample_id}}/files/{{file_name}}", self.get_file),
            ("GET", f"{p}/datasets/{{name}}/samples/{{sample_id}}/hands/{{track}}.webp", self.get_hand_crop),
            ("POST", f"{p}/datasets/{{name}}/marks", self.post_marks),
            ("GET", f"{p}/datasets/{{name}}/hand_scores", self.get_hand_scores),
            ("POST", f"{p}/datasets/{{name}}/hand_scores", self.post_hand_scores),
            ("DELETE", f"{p}/datasets/{{name}}/hand_scores", self.delete_hand_scores),
        ]

    def add_routes(self, routes: web.RouteTableDef) -> None:
        """Registers every route on an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.instance.routes``)."""
        for method, path, handler in self.route_table():
            routes.route(method, path)(handler)

    def _dataset_dir(self, name: str) -> Path:
        """Validated dataset folder; raises ``web.HTTPException`` (400 bad name, 404 unknown)."""
        root = self.root()
        try:
            path = ds.dataset_path(root, name)
        except ds.DatasetError as exc:
            # Never tell an HTTP client where the root lives on disk.
            message = str(exc).replace(str(root.resolve()), "<dataset root>").replace(str(root), "<dataset root>")
            raise web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json") from None
        if not _plain_path(Path(root), name, ds.MANIFEST, last_is_file=True):  # no symlink anywhere, manifest included
            raise web.HTTPNotFound(text=json.dumps({"error": f"no dataset named {name!r}"}), content_type="application/json")
        return path

    def _sample_dir(self, dataset_dir: Path, sample_id: str) -> Path:
        try:
            folder = ds.sample_path(dataset_dir, sample_id)
        except ds.DatasetError as exc:
            raise web.HTTPNotFound(text=json.dumps({"error": str(exc)}), content_type="application/json") from None
        entry = self._entry(dataset_dir, sample_id)
        # The resolved folder must be <dataset>/samples/<id> itself: a symlinked ``samples`` folder leading out of the
        # root passes ``sample_path`` (which compares against the resolved ``samples``), so check the whole chain here.
        inside = folder.resolve() == dataset_dir.resolve() / ds.SAMPLES_DIR / sample_id
        plain = _plain_path(dataset_dir, ds.SAMPLES_DIR, sample_id)
        if entry is None or not plain or not inside:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no sample {sample_id} in dataset {dataset_dir.name}"}), content_type="application/json")
        return folder

    def _entry(self, dataset_dir: Path, sample_id: str) -> Optional[dict[str, Any]]:
        return self.manifests.entry(dataset_dir, sample_id)

    # ------------------------------------------------------------------------------------------- handlers

    async def list_datasets(self, request: web.Request) -> web.Response:
        def work():
            result = []
            for name in ds.list_datasets(self.root()):
                try:
                    total, counts = self.manifests.counts(ds.dataset_path(self.root(), name))
                except ds.DatasetError as exc:
                    result.append({"name": name, "error": str(exc)})
                    continue
                result.append({"name": name, "total": total, "counts": counts})
            return result

        return web.json_response({"datasets": await asyncio.to_thread(work), "statuses": list(ds.STATUSES)})

    async def list_samples(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        try:
            offset = int(query.get("offset", "0"))
            limit = int(query.get("limit", str(DEFAULT_LIMIT)))
        except ValueError:
            return _error(400, "offset and limit must be whole numbers")
        if offset < 0 or not 1 <= limit <= MAX_LIMIT:
            return _error(400, f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
        status = query.get("status", "all")
        if status == "all":
            statuses = None
        else:
            statuses = frozenset(status.split(","))
            unknown = sorted(statuses - set(ds.STATUSES))
            if unknown:
                return _error(400, f"unknown status {unknown}; use 'all' or any of {list(ds.STATUSES)}, comma-separated")
        sort = query.get("sort", "date")
        if sort not in SORTS:
            return _error(400, f"unknown sort {sort!r}; use one of {list(SORTS)}")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            return _error(400, "order must be 'asc' or 'desc'")
        dataset_dir = self._dataset_dir(request.match_info["name"])

        def work():
            counts, total, page = self.manifests.page(dataset_dir, statuses, sort, order == "desc", offset, limit)
            samples = []
            for entry in page:
                item = _list_item(entry)
                item["files"] = _sample_files(dataset_dir / ds.SAMPLES_DIR / entry["id"])
                samples.append(item)
            return {
                "dataset": dataset_dir.name,
                "total": total,
                "offset": offset,
                "limit": limit,
                "status": status,
                "sort": sort,
                "order": order,
                "counts": counts,
                "samples": samples,
            }

        return web.json_response(await asyncio.to_thread(work))

    async def get_sample(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        sample_id = request.match_info["sample_id"]

        def work():
            folder = self._sample_dir(dataset_dir, sample_id)
            meta_file = folder / ds.META_FILE
            meta: Any = {}
            if meta_file.is_file() and not meta_file.is_symlink():
                try:
                    meta = json.loads(meta_file.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    meta = {"error": f"meta.json unreadable: {exc}"}
            small, omitted = _small_meta(meta)
            try:
                tracks = hand_tracks_from_meta(meta) if isinstance(meta, dict) else None
                hand_boxes_error = None
            except ValueError as exc:
                tracks, hand_boxes_error = None, str(exc)
            files = _sample_files(folder)
            return {
                "dataset": dataset_dir.name,
                "entry": _list_item(self._entry(dataset_dir, sample_id) or {}),
                "meta": small,
                "omitted": omitted,
                "files": files,
                "hand_tracks": len(tracks) if tracks and PREVIEW_FILE in files else 0,
                "hand_boxes_error": hand_boxes_error,
            }

        return web.json_response(await asyncio.to_thread(work))

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        file_name = request.match_info["file_name"]
        if not _FILE_RE.fullmatch(file_name):
            return _error(400, f"{file_name!r} is not a preview file name (letters, digits, '.', '_', '-'; .webp/.png/.jpg/.gif/.mp4/.webm)")
        folder = await asyncio.to_thread(self._sample_dir, dataset_dir, request.match_info["sample_id"])
        path = folder / file_name
        if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
            return _error(404, f"sample {folder.name} has no file {file_name}")
        extension = file_name.rsplit(".", 1)[1].lower()
        # Sample folders are content-addressed and previews are written once: let the browser revalidate cheaply.
        return web.FileResponse(path, headers={"Content-Type": _CONTENT_TYPES[extension], "Cache-Control": "no-cache"})

    async def get_hand_crop(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        try:
            track_index = int(request.match_info["track"])
        except ValueError:
            return _error(400, "hand track must be a small whole number")
        if not 0 <= track_index < 8:
            return _error(404, f"no hand track {track_index}")

        def work():
            folder = self._sample_dir(dataset_dir, request.match_info["sample_id"])
            preview, meta_file = folder / PREVIEW_FILE, folder / ds.META_FILE
            if not preview.is_file() or preview.is_symlink() or not meta_file.is_file() or meta_file.is_symlink():
                return None
            stats = (os.stat(preview), os.stat(meta_file))
            key = (str(folder), track_index) + tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)
            cached = self._crops.get(key)
            if cached is not None:
                return cached
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            tracks = hand_tracks_from_meta(meta) if isinstance(meta, dict) else None
            if not tracks or track_index >= len(tracks):
                return None
            data = render_hand_crop(preview.read_bytes(), tracks[track_index])
            self._crops.put(key, data)
            return data

        try:
            data = await asyncio.to_thread(work)
        except ValueError as exc:
            return _error(422, f"cannot cut hand close-ups for this sample: {exc}")
        if data is None:
            return _error(404, f"no hand track {track_index} for this sample (no preview or no hand_boxes in meta.json)")
        return web.Response(body=data, content_type="image/webp", headers={"Cache-Control": "no-cache"})

    async def post_marks(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        body, refused = await _json_body(request, MARKS_USAGE)
        if refused is not None:
            return refused
        try:
            statuses = _parse_marks(body)
        except ValueError as exc:
            return _error(400, str(exc))

        def work():
            # The ids are checked against the cached manifest (a fresh parse only when the manifest changed: samples
            # are added, never removed), then one journal record is appended: no step grows with the dataset.
            unknown = self.manifests.unknown_ids(dataset_dir, list(statuses))
            if unknown:
                raise KeyError(f"unknown sample ids in {dataset_dir.name}: {unknown}")
            updated = ds.append_statuses(dataset_dir, statuses)
            return updated, self.manifests.counts(dataset_dir)[1]

        try:
            updated, counts = await asyncio.to_thread(work)
        except KeyError as exc:
            return _error(404, str(exc.args[0]) if exc.args else "unknown sample ids")
        except ds.DatasetError as exc:
            return _error(400, str(exc))
        return web.json_response(
            {"updated": [{"id": sample_id, "status": status, "updated": updated} for sample_id, status in statuses.items()], "counts": counts}
        )

    # --------------------------------------------------------------------------------------- hand scores

    def _detector_problem(self) -> Optional[dict[str, Any]]:
        """``None`` when the detector can be built, else what is missing and where to put it."""
        if self.hand_scoring is None:
            return {"message": NO_DETECTOR_MESSAGE, "missing_files": [], "install_dir": None}
        try:
            self.hand_scoring.check()
        except DetectorUnavailable as exc:
            return exc.to_dict()
        return None

    def _hand_score_status(self, dataset_dir: Path) -> dict[str, Any]:
        problem = self._detector_problem()
        entries = self.manifests.get(dataset_dir).entries  # read-only; marks never add or remove entries
        scored = sum(1 for entry in entries if _number(entry.get("hand_score")) is not None)
        job = self.hand_jobs.get(dataset_dir)
        return {
            "dataset": dataset_dir.name,
            "available": problem is None,
            "unavailable": problem,
            "scored": scored,
            "total": len(entries),
            "job": job.to_dict() if job is not None else None,
        }

    async def get_hand_scores(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        return web.json_response(await asyncio.to_thread(self._hand_score_status, dataset_dir))

    async def post_hand_scores(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        body: Any = None
        if request.can_read_body:
            body, refused = await _json_body(request, HAND_SCORE_USAGE)
            if refused is not None:
                return refused
        try:
            body = _parse_hand_score_options(body)
        except ValueError as exc:
            return _error(400, str(exc))
        if body.get("cancel"):
            return await self.delete_hand_scores(request)
        problem = await asyncio.to_thread(self._detector_problem)
        if problem is not None:
            # 503: this server cannot score until the files are put in place; the message says which and where.
            return web.json_response({"error": problem["message"], **problem}, status=503)
        try:
            job = self.hand_jobs.start(dataset_dir, self.hand_scoring.load, rescore=body["rescore"], use_gpu=body["gpu"])
        except JobRunning as exc:
            return web.json_response({"error": str(exc), "job": exc.job.to_dict()}, status=409)
        return web.json_response({"job": job.to_dict()}, status=202)

    async def delete_hand_scores(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        job = self.hand_jobs.cancel(dataset_dir)
        if job is None:
            last = self.hand_jobs.get(dataset_dir)
            return web.json_response({"cancelled": False, "message": f"no hand scoring is running for {dataset_dir.name}", "job": last.to_dict() if last else None})
        return web.json_response({"cancelled": True, "job": job.to_dict()})


HAND_SCORE_OPTIONS = ("rescore", "gpu", "cancel")
HAND_SCORE_USAGE = (
    'send no body to score the unscored samples, {"rescore": true} to score all again, '
    '{"gpu": true} to run DWPose on the GPU, {"cancel": true} to stop a running job'
)


def _parse_hand_score_options(body: Any) -> dict[str, bool]:
    """No body (``None``), ``{}`` or ``{"rescore": bool, "gpu": bool, "cancel": bool}``."""
    usage = HAND_SCORE_USAGE
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object; {usage}")
    unknown = sorted(set(body) - set(HAND_SCORE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}; {usage}")
    options = {key: body.get(key, False) for key in HAND_SCORE_OPTIONS}
    if not all(isinstance(value, bool) for value in options.values()):
        raise ValueError(f"rescore, gpu and cancel must be true or false; {usage}")
    return options


MARKS_USAGE = 'send {"ids": [...], "status": "preferred"} or {"marks": [{"id": ..., "status": ...}]}'


def _parse_marks(body: Any) -> dict[str, str]:
    """``{"ids": [...], "status": s}`` or ``{"marks": [{"id": i, "status": s}, ...]}`` -> {id: status}."""
    usage = MARKS_USAGE
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object; {usage}")
    pairs: list[tuple[Any, Any]]
    if "marks" in body:
        marks = body["marks"]
        if not isinstance(marks, list) or not all(isinstance(m, dict) for m in marks):
            raise ValueError(f"'marks' must be a list of objects; {usage}")
        pairs = [(mark.get("id"), mark.get("status")) for mark in marks]
    elif "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list):
            raise ValueError(f"'ids' must be a list of sample ids; {usage}")
        pairs = [(sample_id, body.get("status")) for sample_id in ids]
    else:
        raise ValueError(f"nothing to mark; {usage}")
    if not pairs:
        raise ValueError("no samples given to mark")
    if len(pairs) > MAX_MARKS:
        raise ValueError(f"at most {MAX_MARKS} samples per request, got {len(pairs)}")
    statuses: dict[str, str] = {}
    for sample_id, status in pairs:
        if status not in ds.STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {list(ds.STATUSES)}")
        try:
            ds.validate_sample_id(sample_id)
        except ds.DatasetError as exc:
            raise ValueError(str(exc)) from None
        if statuses.get(sample_id, status) != status:
            raise ValueError(f"sample {sample_id} is given two different statuses")
        statuses[sample_id] = status
    return statuses


def _is_loopback(hostname: Optional[str]) -> bool:
    if not hostname:
        return False
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def host_origin_problem(host: Optional[str], origin: Optional[str], bind_host: str = "127.0.0.1") -> Optional[str]:
    """Why a request to the standalone server is refused, or ``None``. Like ComfyUI's origin middleware: a browser
    ``Origin`` must name the server itself (so no other web page can change a manifest). Stricter where ComfyUI is
    lenient: the check applies to every ``Host``, ``Origin: null`` (sandboxed pages) is refused, and on a loopback
    server the ``Host`` must be a loopback name (a DNS-rebinding page names its own host there)."""
    if host is None:
        return "the request has no Host header"
    parsed_host = urllib.parse.urlsplit("//" + host.lower())
    wildcard = bind_host in ("0.0.0.0", "::", "")
    if not wildcard and not _is_loopback(parsed_host.hostname) and parsed_host.hostname != bind_host.lower():
        return f"Host {host!r} is not this server ({bind_host})"
    if origin is None:
        return None
    parsed_origin = urllib.parse.urlsplit(origin.lower())
    if not parsed_origin.hostname:
        return f"Origin {origin!r} is not a web address"
    host_part, origin_part = parsed_host.netloc, parsed_origin.netloc
    if parsed_origin.port is None:  # ComfyUI's rule: a port on one side only is ignored
        host_part = parsed_host.hostname
    if parsed_host.port is None:
        origin_part = parsed_origin.hostname
    if host_part != origin_part:
        return f"Origin {origin!r} does not match Host {host!r} (a request from another web page)"
    return None


def origin_middleware(bind_host: str):
    @web.middleware
    async def check_host_and_origin(request: web.Request, handler):
        problem = host_origin_problem(request.headers.get("Host"), request.headers.get("Origin"), bind_host)
        if problem is not None:
            return _error(403, problem)
        return await handler(request)

    return check_host_and_origin


def create_app(
    root: RootLike, web_dir: Optional[os.PathLike] = None, prefix: str = "/ipa", hand_scoring: Optional[DetectorSource] = None,
    bind_host: str = "127.0.0.1",
) -> web.Application:
    """A standalone aiohttp application with the gallery routes (tests, or curating without ComfyUI running).
    With ``web_dir`` it also serves the pack's ``web/`` folder under ``/web/`` (the gallery page is
    ``/web/gallery/index.html``); ``hand_scoring`` enables the hand score routes. Requests whose ``Origin`` or
    ``Host`` is not this server (``bind_host``) get 403 (``host_origin_problem``), as ComfyUI's own server does."""
    app = web.Application(client_max_size=4 * 1024**2, middlewares=[origin_middleware(bind_host)])
    api = GalleryAPI(root, prefix, hand_scoring)
    routes = web.RouteTableDef()
    api.add_routes(routes)
    app.add_routes(routes)
    if web_dir is not None:
        app.add_routes([web.static("/web", str(web_dir))])
    app[GALLERY_API_KEY] = api
    return app


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m ipa_train.gallery.api ROOT``: serve the gallery without ComfyUI."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve the IPA curation gallery over a dataset root, without ComfyUI.")
    parser.add_argument("root", help="the dataset root folder (ComfyUI's output/ipa_datasets)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8189)
    parser.add_argument("--dwpose-dir", help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx, to score hands (e.g. ComfyUI/models/dwpose)")
    args = parser.parse_args(argv)
    web_dir = Path(__file__).resolve().parents[2] / "web"
    hand_scoring = None
    if args.dwpose_dir:
        from .hand_score_jobs import dwpose_source

        hand_scoring = dwpose_source(lambda: [args.dwpose_dir], lambda: args.dwpose_dir)
    print(f"IPA gallery: http://{args.host}:{args.port}/web/gallery/index.html")
    web.run_app(create_app(args.root, web_dir, hand_scoring=hand_scoring, bind_host=args.host), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
