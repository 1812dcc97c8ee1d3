"""The memory modes and their planner: ``plan`` (predicts the peak for each mode and picks one; ``python -m
ipa_train.plan``), ``block_swap`` (frozen blocks streamed from host memory), ``activation_offload`` (saved
activations parked in host memory), ``memory_trace`` (measures what the plan predicts). Applying a plan to a
model on a rank is ``training.memory_setup``."""
