"""The dataset: its on-disk format, one concern a module (``layout``: folders, names, format version; ``tensors``;
``fingerprint``; ``manifest`` and its in-memory ``manifest_cache``; ``marks`` and the status ``journal``; ``samples``:
adding and loading; ``garbage``), turning sampled candidates into samples (``collect``), and the previews stored
with them (``previews``). Uses ``pose`` and ``wan``; ``training``, ``gallery`` and ``demo`` use it."""
