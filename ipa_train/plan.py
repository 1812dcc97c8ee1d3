"""``python -m ipa_train.plan``: the memory planner's command line (``ipa_train.training.plan``)."""

import sys

from .training.plan import main

if __name__ == "__main__":
    sys.exit(main())
