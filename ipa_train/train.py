"""``python -m ipa_train.train``: the trainer's public entry point, kept where it always was.

The trainer lives in ``ipa_train.training`` (``cli`` for this command line, ``loop`` for ``Trainer`` and ``train``);
code imports it from there. This module only runs it, and reports a trainer that cannot even import its own
modules (a broken torch or torchvision) as an ``error`` event with its root cause, like any other failure."""

import sys


def main() -> int:
    try:
        from .training.cli import main as trainer_main
    except Exception as exc:  # noqa: BLE001 - every import failure becomes an error event and status 1
        from .jobs.failures import report_startup_failure

        return report_startup_failure(exc)
    return trainer_main()


if __name__ == "__main__":
    sys.exit(main())
