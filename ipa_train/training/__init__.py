"""Training: the run config (``config``), the launcher the node uses (``launcher``), the objectives (``loss``),
LoRA set-up (``lora``, ``model_setup``), and the trainer in parts: ``distributed``, ``batching``, ``objective``,
``checkpoints``, ``loop`` and its command line ``cli`` (``python -m ipa_train.train``).

Uses ``data`` and ``wan``; nothing below it imports from here."""
