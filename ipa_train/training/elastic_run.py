"""``python -m ipa_train.training.elastic_run [torchrun options] -m ipa_train.train ...``: torchrun
(``torch.distributed.run``, unchanged) as the launcher starts it for several processes, plus two things torchrun
does not offer:

- the exit code of every failed rank is written as JSON to ``$IPA_TRAIN_FAILURES_FILE``, so a rank that died
  without a word (SIGKILL from the out-of-memory killer, a segfault) can be named instead of the rank that then
  lost its connection to it;
- a stop (ranks exiting 3, and the slower ones that torchrun then ends with SIGTERM) exits 3 like a single process
  does, instead of torchrun's 1.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from ..jobs.contract import EXIT_ERROR, EXIT_OK, EXIT_STOPPED, FAILURES_ENV
from ..jobs.failures import RankFailure, signal_name, stopped_exit_status


def _write_failures(path: str, failures: list[RankFailure]) -> None:
    from ..fileio import atomic_write_json

    atomic_write_json(path, {"failures": [
        {"rank": f.rank, "exitcode": f.exitcode, "pid": f.pid, "signal": signal_name(-f.exitcode) if f.exitcode < 0 else None}
        for f in failures
    ]})


def main(argv: Optional[list[str]] = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    path = os.environ.get(FAILURES_ENV)
    try:
        torchrun.main(argv)
    except ChildFailedError as exc:
        failures = [RankFailure(int(rank), int(failure.exitcode), int(failure.pid)) for rank, failure in exc.failures.items()]
        if path:
            _write_failures(path, failures)
        print(exc.format_msg(), file=sys.stderr, flush=True)  # torchrun's own summary of the failed ranks
        return EXIT_STOPPED if stopped_exit_status(failures) else EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
