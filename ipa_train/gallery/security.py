"""What keeps the gallery's requests inside the dataset root and on this machine.

Names from the URL are validated by ``ipa_train.data.layout`` (one plain folder name, no traversal, nothing that
resolves outside the root), and here no symlink is followed anywhere below the root; files are served only from
inside their sample folder. The standalone server also refuses requests from other web pages (``Host``/``Origin``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import urllib.parse
from pathlib import Path
from typing import Optional

from aiohttp import web

from ..data.layout import MANIFEST, SAMPLES_DIR, DatasetError, dataset_path, sample_path
from ..data.manifest_cache import ManifestCache
from .inputs import error_response


def plain_path(root: Path, *parts: str, last_is_file: bool = False) -> bool:
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


def _json_error(exception: type, message: str) -> web.HTTPException:
    return exception(text=json.dumps({"error": message}), content_type="application/json")


def resolve_dataset_dir(root: Path, name: str) -> Path:
    """Validated dataset folder; raises ``web.HTTPException`` (400 bad name, 404 unknown)."""
    try:
        path = dataset_path(root, name)
    except DatasetError as exc:
        # Never tell an HTTP client where the root lives on disk.
        message = str(exc).replace(str(root.resolve()), "<dataset root>").replace(str(root), "<dataset root>")
        raise _json_error(web.HTTPBadRequest, message) from None
    if not plain_path(Path(root), name, MANIFEST, last_is_file=True):  # no symlink anywhere, manifest included
        raise _json_error(web.HTTPNotFound, f"no dataset named {name!r}")
    return path


def resolve_sample_dir(dataset_dir: Path, sample_id: str, manifests: ManifestCache) -> Path:
    """The folder of a sample the manifest lists, reached without symlinks; raises ``web.HTTPNotFound`` otherwise."""
    try:
        folder = sample_path(dataset_dir, sample_id)
    except DatasetError as exc:
        raise _json_error(web.HTTPNotFound, str(exc)) from None
    entry = manifests.entry(dataset_dir, sample_id)
    # The resolved folder must be <dataset>/samples/<id> itself: a symlinked ``samples`` folder leading out of the
    # root passes ``sample_path`` (which compares against the resolved ``samples``), so check the whole chain here.
    inside = folder.resolve() == dataset_dir.resolve() / SAMPLES_DIR / sample_id
    plain = plain_path(dataset_dir, SAMPLES_DIR, sample_id)
    if entry is None or not plain or not inside:
        raise _json_error(web.HTTPNotFound, f"no sample {sample_id} in dataset {dataset_dir.name}")
    return folder


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
            return error_response(403, problem)
        return await handler(request)

    return check_host_and_origin
