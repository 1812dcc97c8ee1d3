"""``python -m ipa_train.plan``: the memory planner's command line (``ipa_train.memory.plan``)."""

import sys

from .memory.plan import main

if __name__ == "__main__":
    sys.exit(main())
