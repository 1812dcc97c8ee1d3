"""The curation gallery's HTTP API (``api``, also standalone: ``python -m ipa_train.gallery.api ROOT``) and its
background hand-score jobs (``hand_score_jobs``, ``hand_scoring``). Uses ``data`` and ``pose``."""
