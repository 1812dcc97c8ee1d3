"""The main job (``python -m ipa_train demo``): the whole loop on a tiny model (``run``), its diffusers sampling
pipeline (``pipeline``) and its report (``report``). The top of the core: it may use every other room."""
