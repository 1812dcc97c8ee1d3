"""The rank side of training: what runs in each trainer process. Objectives (``loss``), LoRA set-up (``lora``,
``model_setup``), and the trainer in parts: ``distributed``, ``batching``, ``objective``, ``memory_setup`` (the
planned memory modes applied), ``checkpoints``, ``reference_check``, ``loop`` and its command line ``cli``
(``python -m ipa_train.train``); ``elastic_run`` is torchrun recording failed ranks (it runs in torchrun's agent,
with torch).

Uses ``jobs`` (the run config and the launcher contract), ``memory``, ``data`` and ``wan``."""
