"""HTTP routes of the curation gallery, as plain aiohttp handlers over one dataset root.

ComfyUI registers them on its server (``nodes/gallery.py``); tests and ``api.create_app`` run the very same handlers
on a standalone aiohttp application. Nothing here imports ComfyUI. Requests are parsed by ``inputs``, names and
paths checked by ``security``.

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

Listing reads only the manifest (``data.manifest_cache``: parsed once per manifest version, with the status
journal's new lines applied as they come), never tensors or meta files. A mark appends one journal line: its cost
does not grow with the dataset.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional, Union

from aiohttp import web

from ..data.layout import META_FILE, SAMPLES_DIR, STATUSES, DatasetError, dataset_path, list_datasets
from ..data.manifest_cache import ManifestCache, as_number
from ..data.marks import append_statuses
from ..pose.hand_crops import hand_tracks_from_meta, render_hand_crop
from .hand_score_jobs import DetectorSource, DetectorUnavailable, HandScoreJobs, JobRunning
from .inputs import HAND_SCORE_USAGE, MARKS_USAGE, error_response, parse_hand_score_options, parse_listing_query, parse_marks, parsed_body
from .security import resolve_dataset_dir, resolve_sample_dir

PREVIEW_FILE = "preview.webp"
HANDS_FILE = "hands.webp"
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

NO_DETECTOR_MESSAGE = (
    "Hand scoring needs DWPose's weights (yolox_l.onnx and dw-ll_ucoco_384.onnx, published at "
    "https://huggingface.co/yzd-v/DWPose), and this server was started without a place to find them: "
    "start it with --dwpose-dir FOLDER (in ComfyUI they are looked up in models/dwpose)."
)

RootLike = Union[str, os.PathLike, Callable[[], Union[str, os.PathLike]]]


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


def _hand_crop(folder: Path, track_index: int, crops: _LRUBytes) -> Optional[bytes]:
    """The looping close-up of hand track ``track_index`` (cached per preview and meta.json version), or ``None`` when
    the sample has no preview, no hand boxes or fewer tracks; ``ValueError`` when its hand boxes are unusable."""
    preview, meta_file = folder / PREVIEW_FILE, folder / META_FILE
    if not preview.is_file() or preview.is_symlink() or not meta_file.is_file() or meta_file.is_symlink():
        return None
    stats = (os.stat(preview), os.stat(meta_file))
    key = (str(folder), track_index) + tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)
    cached = crops.get(key)
    if cached is not None:
        return cached
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    tracks = hand_tracks_from_meta(meta) if isinstance(meta, dict) else None
    if not tracks or track_index >= len(tracks):
        return None
    data = render_hand_crop(preview.read_bytes(), tracks[track_index])
    crops.put(key, data)
    return data


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
        return resolve_dataset_dir(self.root(), name)

    def _sample_dir(self, dataset_dir: Path, sample_id: str) -> Path:
        return resolve_sample_dir(dataset_dir, sample_id, self.manifests)

    def _entry(self, dataset_dir: Path, sample_id: str) -> Optional[dict[str, Any]]:
        return self.manifests.entry(dataset_dir, sample_id)

    # ------------------------------------------------------------------------------------------- handlers

    async def list_datasets(self, request: web.Request) -> web.Response:
        def work():
            result = []
            for name in list_datasets(self.root()):
                try:
                    total, counts = self.manifests.counts(dataset_path(self.root(), name))
                except DatasetError as exc:
                    result.append({"name": name, "error": str(exc)})
                    continue
                result.append({"name": name, "total": total, "counts": counts})
            return result

        return web.json_response({"datasets": await asyncio.to_thread(work), "statuses": list(STATUSES)})

    async def list_samples(self, request: web.Request) -> web.Response:
        try:
            query = parse_listing_query(request.rel_url.query)
        except ValueError as exc:
            return error_response(400, str(exc))
        dataset_dir = self._dataset_dir(request.match_info["name"])

        def work():
            counts, total, page = self.manifests.page(dataset_dir, query.statuses, query.sort, query.order == "desc", query.offset, query.limit)
            samples = []
            for entry in page:
                item = _list_item(entry)
                item["files"] = _sample_files(dataset_dir / SAMPLES_DIR / entry["id"])
                samples.append(item)
            return {
                "dataset": dataset_dir.name,
                "total": total,
                "offset": query.offset,
                "limit": query.limit,
                "status": query.status,
                "sort": query.sort,
                "order": query.order,
                "counts": counts,
                "samples": samples,
            }

        return web.json_response(await asyncio.to_thread(work))

    async def get_sample(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        sample_id = request.match_info["sample_id"]

        def work():
            folder = self._sample_dir(dataset_dir, sample_id)
            meta_file = folder / META_FILE
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
            return error_response(400, f"{file_name!r} is not a preview file name (letters, digits, '.', '_', '-'; .webp/.png/.jpg/.gif/.mp4/.webm)")
        folder = await asyncio.to_thread(self._sample_dir, dataset_dir, request.match_info["sample_id"])
        path = folder / file_name
        if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
            return error_response(404, f"sample {folder.name} has no file {file_name}")
        extension = file_name.rsplit(".", 1)[1].lower()
        # Sample folders are content-addressed and previews are written once: let the browser revalidate cheaply.
        return web.FileResponse(path, headers={"Content-Type": _CONTENT_TYPES[extension], "Cache-Control": "no-cache"})

    async def get_hand_crop(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        try:
            track_index = int(request.match_info["track"])
        except ValueError:
            return error_response(400, "hand track must be a small whole number")
        if not 0 <= track_index < 8:
            return error_response(404, f"no hand track {track_index}")

        def work():
            return _hand_crop(self._sample_dir(dataset_dir, request.match_info["sample_id"]), track_index, self._crops)

        try:
            data = await asyncio.to_thread(work)
        except ValueError as exc:
            return error_response(422, f"cannot cut hand close-ups for this sample: {exc}")
        if data is None:
            return error_response(404, f"no hand track {track_index} for this sample (no preview or no hand_boxes in meta.json)")
        return web.Response(body=data, content_type="image/webp", headers={"Cache-Control": "no-cache"})

    async def post_marks(self, request: web.Request) -> web.Response:
        dataset_dir = self._dataset_dir(request.match_info["name"])
        statuses, refused = await parsed_body(request, MARKS_USAGE, parse_marks)
        if refused is not None:
            return refused

        def work():
            # The ids are checked against the cached manifest (a fresh parse only when the manifest changed: samples
            # are added, never removed), then one journal record is appended: no step grows with the dataset.
            unknown = self.manifests.unknown_ids(dataset_dir, list(statuses))
            if unknown:
                raise KeyError(f"unknown sample ids in {dataset_dir.name}: {unknown}")
            updated = append_statuses(dataset_dir, statuses)
            return updated, self.manifests.counts(dataset_dir)[1]

        try:
            updated, counts = await asyncio.to_thread(work)
        except KeyError as exc:
            return error_response(404, str(exc.args[0]) if exc.args else "unknown sample ids")
        except DatasetError as exc:
            return error_response(400, str(exc))
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
        scored = sum(1 for entry in entries if as_number(entry.get("hand_score")) is not None)
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
        body, refused = await parsed_body(request, HAND_SCORE_USAGE, parse_hand_score_options, optional=True)
        if refused is not None:
            return refused
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
