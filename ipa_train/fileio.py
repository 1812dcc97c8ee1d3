"""Crash-safe file writes and safe loads: everything is written to a temporary file in the same folder,
flushed, then renamed over the target, so a reader never sees a half-written file and nothing already
saved is lost when a write is interrupted. Only safetensors and JSON are ever read back (no pickle), and a
file that cannot be read gives an error that names it and says what it looks like (truncated, a pickle, ...).

Also here, because every room needs them: the one validator of user-given file and folder names, and the
clean-up of temporary files that a killed writer left behind."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

if TYPE_CHECKING:  # torch is imported where tensors are handled: the job's host side (ipa_train.jobs) runs without it
    import torch

TEMP_SUFFIX = ".tmp"  # temporary files are ".<target name>.<random>.tmp" beside their target
TEMP_TOKEN_LENGTH = 12  # hex digits of the random part


def temporary_name(name: str, token: str) -> str:
    """The name of a temporary file written beside ``name``: ``.<name>.<token>.tmp``."""
    return f".{name}.{token}{TEMP_SUFFIX}"


class FileReadError(ValueError):
    """A file that exists but cannot be read as what it should be; the message names it and says what to do."""


class InvalidNameError(ValueError):
    """A user-given name that cannot be a plain file or folder name."""


# ----------------------------------------------------------------------------------------------- names

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Windows gives these names (with any extension) to devices: "NUL.safetensors" is not a file there.
_WINDOWS_DEVICES = re.compile(r"^(?:CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(?:\..*)?$", re.IGNORECASE)
NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (no slashes, no '..', no spaces)"


def validate_name(name: Any, what: str = "name") -> str:
    """One plain file or folder name, the same rule for dataset names, LoRA names and run names: refuses
    folders, traversal, absolute paths, NUL and control characters, over-long names and Windows device names."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:60] + "...") + f" ({len(name)} characters)"
        raise InvalidNameError(f"invalid {what} {shown}: use {NAME_RULE}")
    if _WINDOWS_DEVICES.fullmatch(name):
        raise InvalidNameError(f"invalid {what} {name!r}: Windows reserves it for a device; choose another name")
    return name


# ----------------------------------------------------------------------------------------------- writing


def _temporary_beside(path: Path) -> str:
    """Creates an empty temporary file next to ``path`` and returns its name. Opened like a plain ``open()``
    would (mode 0o666 minus the umask), so the renamed file gets the mode a user expects, not mkstemp's 0600."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / temporary_name(path.name, uuid.uuid4().hex[:TEMP_TOKEN_LENGTH]))
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


# Waits between tries of a rename refused with PermissionError: 5 tries over about 2 s.
RENAME_RETRY_DELAYS_S = (0.1, 0.3, 0.6, 1.0)


def replace_retrying(source: os.PathLike | str, target: os.PathLike | str) -> None:
    """``os.replace`` that tries again on PermissionError. Why: on Windows, antivirus scanners and the search indexer
    open a freshly written file for a moment, and a rename onto or from it then fails although nothing is wrong; a
    file that stays locked (memory-mapped by a process that loaded it) still fails after the last try."""
    for delay in (*RENAME_RETRY_DELAYS_S, None):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if delay is None:
                raise
            time.sleep(delay)


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    mode = os.stat(tmp).st_mode & 0o777  # what the umask gave a plain open()
    try:
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:  # safetensors' save_file recreates the file with 0600
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        replace_retrying(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return _atomic_write(Path(path), write)


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: os.PathLike | str, obj: Any, indent: Optional[int] = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_save_safetensors(
    path: os.PathLike | str,
    tensors: Mapping[str, torch.Tensor],
    metadata: Optional[Mapping[str, str]] = None,
) -> Path:
    from safetensors.torch import save_file

    # safetensors refuses non-contiguous tensors and shared storage: give it plain contiguous copies on CPU.
    plain = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return _atomic_write(Path(path), lambda tmp: save_file(plain, tmp, metadata=meta))


def remove_stale_temp_files(folder: os.PathLike | str, older_than_s: float = 0.0) -> list[Path]:
    """Deletes the temporary files (``.<name>.<random>.tmp``) a killed writer left in ``folder`` (not below it),
    older than ``older_than_s`` seconds; returns what was removed. Symlinks and folders are never touched."""
    removed = []
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
            try:
                if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


# ----------------------------------------------------------------------------------------------- reading


def describe_unreadable(path: Path, error: Exception) -> str:
    """What an unreadable safetensors file looks like, from its first bytes and its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "is empty (an interrupted copy or download?)"
    if head.startswith(b"PK\x03\x04"):
        return "is a PyTorch pickle archive (torch.save, .pt/.ckpt/.bin), not safetensors; pickle files are never loaded because they can run code"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle, not safetensors; pickle files are never loaded because they can run code"
    if len(head) >= 8:
        header_bytes = int.from_bytes(head[:8], "little")
        if 8 + header_bytes > size:
            return f"is truncated or not a safetensors file (its header claims {header_bytes:,} bytes, the file has {size:,})"
    return f"is truncated or damaged ({error})"


def load_safetensors(path: os.PathLike | str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file. A file that is not one (truncated, a pickle, empty)
    raises :class:`FileReadError` naming the file; callers add what to do about it."""
    from safetensors import safe_open

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own error type (SafetensorError) for every bad file
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist") from None
        raise FileReadError(f"{path} {describe_unreadable(path, error)}") from error
    return tensors, metadata


def read_safetensors_metadata(path: os.PathLike | str) -> dict[str, str]:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except FileNotFoundError:
        raise
    except Exception as error:
        raise FileReadError(f"{path} {describe_unreadable(path, error)}") from error


def read_json(path: os.PathLike | str) -> Any:
    """A JSON file; a damaged one raises :class:`FileReadError` naming the file, the line and the column."""
    with open(path, "r", encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else f" ({exc})"
            raise FileReadError(f"{path} is not valid JSON{where}; it may be truncated or edited by hand") from exc


@dataclass(frozen=True)
class Installed:
    """Where :func:`install_keeping_previous` put things: ``path`` holds the new file; ``kept`` the previous one when
    it was kept under a new name; ``locked`` is True when the target could not be replaced (another process holds it
    open: on Windows a loaded, memory-mapped safetensors file), so the new file went to ``path``, a kept name, instead."""

    path: Path
    kept: Optional[Path] = None
    locked: bool = False


def _next_kept_name(target: Path, counter: int) -> Path:
    return target.with_name(f"{target.stem}_{counter:05d}{target.suffix}")


def _keep_previous(target: Path) -> Path:
    """Keeps the file at ``target`` under the next free ``<stem>_NNNNN<suffix>``: a hard link, or a copy."""
    import shutil

    counter = 1
    while True:
        candidate = _next_kept_name(target, counter)
        try:
            os.link(target, candidate)  # fails if taken: no race overwrites a kept file
            return candidate
        except FileExistsError:
            counter += 1
        except OSError:  # no hard links on this file system: copy (atomically) instead
            if candidate.exists():
                counter += 1
                continue
            _atomic_write(candidate, lambda path: shutil.copyfile(target, path))
            return candidate


def _install_under_kept_name(source: Path, target: Path) -> Path:
    """The new file under the next free kept name (the target is locked), claimed with O_EXCL so no race overwrites one."""
    import shutil

    counter = 1
    while True:
        candidate = _next_kept_name(target, counter)
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        except FileExistsError:
            counter += 1
            continue
        return _atomic_write(candidate, lambda path: shutil.copyfile(source, path))


def install_keeping_previous(source: os.PathLike | str, target: os.PathLike | str) -> Installed:
    """Copies ``source`` to ``target`` atomically, so ``target`` always names the newest file (what a workflow that
    loads it by name expects). A file already at ``target`` is kept first under the next free ``<stem>_NNNNN<suffix>``
    (00001 = the oldest), so nothing saved is lost.

    When ``target`` stays locked (Windows refuses to replace a file another process has memory-mapped, such as a LoRA
    ComfyUI still holds), the new file is saved under the next kept name instead and ``locked`` says so; the
    duplicate name made for the previous file is removed again when Windows allows it."""
    import shutil

    source, target = Path(source), Path(target)
    kept = _keep_previous(target) if target.exists() else None
    try:
        _atomic_write(target, lambda path: shutil.copyfile(source, path))
    except PermissionError:
        if kept is not None:
            try:
                os.unlink(kept)  # the previous file is still at target: no second name needed
                kept = None
            except OSError:
                pass
        return Installed(_install_under_kept_name(source, target), kept, locked=True)
    return Installed(target, kept)


def safetensors_dtypes() -> dict[str, "torch.dtype"]:
    """safetensors dtype names -> torch dtypes (the ones a model file may hold)."""
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    }


def iter_safetensors(path: os.PathLike | str, keys: Optional[list[str]] = None):
    """Yields ``(key, tensor)`` of a safetensors file one tensor at a time, read with plain file reads.

    Why not ``safe_open``: it memory-maps the whole file, and every page it touches counts against the process's
    resident memory until the mapping closes (measured: reading a 1.5 GiB file tensor by tensor raised the peak
    RSS by 2.3 GiB with ``safe_open``, by 0.8 GiB, the kept fp8 copies, with these reads). Loading a 14B model
    in fp8 must never hold the 32 GiB bf16 file in memory."""
    import struct

    import torch

    dtypes = safetensors_dtypes()
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header length)")
        (length,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if length <= 0 or 8 + length > size:
            raise ValueError(f"{path} is not a safetensors file (header length {length} does not fit the file size {size})")
        header = json.loads(handle.read(length))
        start = 8 + length
        for key in (keys if keys is not None else [k for k in header if k != "__metadata__"]):
            entry = header[key]
            dtype = dtypes.get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: tensor {key} has dtype {entry['dtype']}, which this reader does not know")
            begin, end = entry["data_offsets"]
            buffer = torch.empty(end - begin, dtype=torch.uint8)
            handle.seek(start + begin)
            if end > begin and handle.readinto(memoryview(buffer.numpy())) != end - begin:
                raise ValueError(f"{path} is truncated: tensor {key} ends past the end of the file")
            yield key, buffer.view(dtype).reshape(entry["shape"])
