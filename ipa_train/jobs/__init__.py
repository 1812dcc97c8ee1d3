"""The host side of a training job: what runs in ComfyUI's process (or the demo's) to start, watch, stop and report
on a trainer that runs in its own process.

``contract`` (the trainer-launcher contract: events, exit codes, stop file, environment; standard library only),
``config`` (run.json, shared with the rank side), ``launcher`` (the command, the environment, the event stream),
``process_tree`` (process groups and kill, per platform), ``rank_guard`` (a rank ends itself when its launcher is
gone), ``failures`` (root causes, the rank that died), ``checkpoint_files`` (which checkpoints are complete) and
``curves`` (the loss plot). It imports no torch (tests/test_layering.py): ComfyUI's process launches, watches and
cancels a job without loading the trainer's libraries."""
