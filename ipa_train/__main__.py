"""``python -m ipa_train <command> [options]``: the pack's command line.

Each command is a module of this package with ``main(argv)``; add one by adding a line to ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("train", "Flow-IPA LoRA trainer: --config run.json [--resume DIR] (same as python -m ipa_train.train)"),
    "plan": ("plan", "memory planner: predicted peak GPU memory of a run and the settings that fit a budget"),
    "demo": ("demo.run", "the whole loop on a tiny random VACE model: sample, prefer, train (torchrun), sample again, report"),
}


def usage() -> str:
    lines = ["usage: python -m ipa_train <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines.append("\n`python -m ipa_train <command> --help` shows a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f".{COMMANDS[name][0]}", __package__ or "ipa_train")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
