"""The run contract between the trainer and whoever launches it, defined once: the trainer
(``python -m ipa_train.train``, ``training/``), the launcher (``jobs.launcher``: the ComfyUI node, the demo, the
method study) and the tests' fake trainer all import these names, so neither side can drift from the other.

Events. Rank 0 writes one JSON object per line on stdout, each with an ``event`` key; a failing rank (any rank)
writes its own ``error``. Everything else on stdout (a library's print) is not an event and is ignored; human
logs go to stderr.

- ``started``: total, start_step, world_size, device, the memory plan, warnings, ...
- ``step``: step, total, loss, ipa_gap, model_error, reference_error, lr, timing, peak memory, ...
- ``checkpoint``: step, path (a complete ``checkpoints/step-N`` folder)
- ``stopped``: step, total, checkpoint, resume (the command that continues the run), reason
- ``finished``: step, lora_path, checkpoint, metrics
- ``error``: rank, message, traceback; root_cause, where, hint when known (``failures.root_cause``)

Exit status: :data:`EXIT_OK` finished, :data:`EXIT_ERROR` failed (an ``error`` event says why, unless the process
was killed), :data:`EXIT_STOPPED` stopped after writing a checkpoint. A rank whose launcher is gone ends itself
with :data:`EXIT_ORPHANED` when it does not stop gracefully in time (``rank_guard``).

Stopping. The launcher asks for a stop by creating the stop file (``<output_dir>/STOP``, :data:`STOP_FILE_NAME`,
or the config's ``stop_file``): every rank checks it after each step, they agree to stop after the same one, write
a checkpoint, emit ``stopped`` and exit 3. No signal has to reach the ranks, so torchrun's 30 s kill deadline cannot
cut a long step short. SIGINT/SIGTERM (CTRL_BREAK on Windows) do the same and are the launcher's fallback.

Environment, set by the launcher for every process of the job: :data:`JOB_ENV` (marks the job's processes, so
torchrun's ranks are found and ended), :data:`LAUNCHER_PID_ENV` (a rank ends itself when that process is gone),
:data:`FAILURES_ENV` (where ``elastic_run`` records the exit code of every failed rank); :data:`GRACE_ENV`
optionally sets how long an orphaned rank may take to stop gracefully.

Standard library only, nothing imported: the trainer reads it even when its own imports fail, the launcher
without torch, the fake trainer without the package's dependencies.
"""

# ----------------------------------------------------------------------------------------------- events

STARTED = "started"
STEP = "step"
CHECKPOINT = "checkpoint"
STOPPED = "stopped"
FINISHED = "finished"
ERROR = "error"
EVENTS = (STARTED, STEP, CHECKPOINT, FINISHED, STOPPED, ERROR)
FINAL_EVENTS = (FINISHED, STOPPED, ERROR)  # one of them ends every run that was not killed

# ----------------------------------------------------------------------------------------------- exit status

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STOPPED = 3
EXIT_ORPHANED = 1  # rank_guard: still running long after its launcher went away, ended without a checkpoint

# ----------------------------------------------------------------------------------------------- stop file

STOP_FILE_NAME = "STOP"  # in the run's output_dir, unless the config names another stop_file

# ----------------------------------------------------------------------------------------------- environment

JOB_ENV = "IPA_TRAIN_JOB"  # the job's id, inherited by torchrun's ranks (process_tree finds them by it)
LAUNCHER_PID_ENV = "IPA_TRAIN_LAUNCHER_PID"  # the launching process (ComfyUI, the demo), watched by rank_guard
FAILURES_ENV = "IPA_TRAIN_FAILURES_FILE"  # where elastic_run writes the exit code of every failed rank
GRACE_ENV = "IPA_TRAIN_ORPHAN_GRACE_S"  # seconds an orphaned rank gets to stop gracefully (rank_guard)
