"""Training: the run config (``config``), the launcher the node uses (``launcher``), the objectives (``loss``),
LoRA set-up (``lora``, ``model_setup``), and the trainer in parts: ``distributed``, ``batching``, ``objective``,
``checkpoints`` (+ ``checkpoint_files``), ``loop`` and its command line ``cli`` (``python -m ipa_train.train``); and the
job's processes: ``process_tree`` (groups and kill, per platform), ``rank_guard`` (a rank ends itself when its launcher
is gone), ``elastic_run`` (torchrun recording failed ranks) and ``failures`` (root causes, the rank that died).

Uses ``data`` and ``wan``; nothing below it imports from here."""
