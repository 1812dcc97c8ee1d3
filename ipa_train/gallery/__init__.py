"""The curation gallery's HTTP API: its routes (``routes``), what requests may carry (``inputs``), what keeps them
inside the dataset root and on this machine (``security``), the standalone server (``api``:
``python -m ipa_train.gallery.api ROOT``), and the background hand-score jobs (``hand_score_jobs``,
``hand_scoring``). Uses ``data`` and ``pose``."""
