"""The dataset: its on-disk format (``dataset``), turning sampled candidates into samples (``collect``), and the
previews stored with them (``previews``). Uses ``pose`` and ``wan``; ``training``, ``gallery`` and ``demo`` use it."""
