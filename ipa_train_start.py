"""``python <pack folder>/ipa_train_start.py MODULE [ARGS...]``: runs ``python -m MODULE [ARGS...]`` with this
folder (the one holding ``ipa_train``) and the folders in ``$IPA_TRAIN_PATH`` first on ``sys.path``. The train node
and ``ipa_train.jobs.launcher`` start the trainer this way, and torchrun's ranks too (``MODULE`` is then
``ipa_train.training.elastic_run``, whose training script is this file again).

Why a script started by its absolute path: the Windows portable build's embedded Python has a ``python3XX._pth``
that fixes ``sys.path`` (and puts Python in isolated mode). ``PYTHONPATH`` is ignored there and neither the
working directory nor a script's folder is added, so ``python -m ipa_train.train`` dies with "No module named
'ipa_train'" before anything loads. This file finds the package from its own location instead, on every Python.

Isolated mode also ignores ``PYTHONIOENCODING`` and ``PYTHONUNBUFFERED``, which the launcher sets because it reads
the trainer's events as UTF-8 lines as they come: this script applies them itself when Python did not.

Lives outside ``ipa_train`` on purpose: it must run before the package can be imported, and a script's own folder
(added to ``sys.path`` on an ordinary Python) must be the pack's folder, not one whose modules would shadow others.
``python -m ipa_train.train`` keeps working for runs started by hand with the package on the path.
"""

from __future__ import annotations

import os
import runpy
import sys

PATH_ENV = "IPA_TRAIN_PATH"  # os.pathsep-separated folders to put first on sys.path (the launcher sets it)


def import_folders(environ=os.environ) -> list[str]:
    """This file's folder, then the folders in ``$IPA_TRAIN_PATH`` (in order, without repeats)."""
    folders = [os.path.dirname(os.path.abspath(__file__))]
    for folder in environ.get(PATH_ENV, "").split(os.pathsep):
        if folder and os.path.abspath(folder) not in folders:
            folders.append(os.path.abspath(folder))
    return folders


def _apply_stream_settings(environ=os.environ) -> None:
    """What ``PYTHONIOENCODING`` and ``PYTHONUNBUFFERED`` would have done, when Python ignored its environment."""
    if not sys.flags.ignore_environment:
        return
    encoding, _, errors = environ.get("PYTHONIOENCODING", "").partition(":")
    unbuffered = bool(environ.get("PYTHONUNBUFFERED"))
    for stream in (sys.stdout, sys.stderr):
        options = {"encoding": encoding or None, "errors": errors or None}
        if unbuffered:
            options["line_buffering"] = True
        try:
            stream.reconfigure(**{key: value for key, value in options.items() if value is not None})
        except (AttributeError, LookupError, ValueError):
            pass  # not a text stream, or an unknown encoding: leave the stream as it is


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python ipa_train_start.py MODULE [ARGS...], e.g. ipa_train_start.py ipa_train.train --config "
              "run.json (it runs 'python -m MODULE' with the pack's folder on sys.path)", file=sys.stderr)
        return 2
    _apply_stream_settings()
    folders = import_folders()
    sys.path[:] = folders + [entry for entry in sys.path if os.path.abspath(entry or os.curdir) not in folders]
    sys.argv = [sys.argv[0], *args[1:]]  # run_module replaces argv[0] with the module's file, as -m does
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
