"""The real trainer under torchrun, watched while it prepares its model: ``python fsdp2_probe.py run.json OUT_DIR``
(two ranks; the repository on ``PYTHONPATH``). Each rank writes ``OUT_DIR/rank<R>.json``:

- ``to_calls``: every ``nn.Module.to`` call on a module that then held unsharded (plain tensor) base weights,
  with those bytes: FSDP2 must never move the whole model;
- ``moved_groups``: the unsharded bytes each ``fully_shard`` call hands to FSDP2's move to the device (on a GPU
  one group is there at once, unsharded, before FSDP2 keeps this rank's shard);
- ``full_bytes`` / ``local_bytes``: the frozen base weights, whole and as this rank holds them after sharding.

Then it trains (``Trainer.run``) like ``python -m ipa_train.train``. Production code carries no test hook: this
wraps the real functions from outside.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main(config_path: str, out_dir: str) -> None:
    import torch
    from torch import nn
    from torch.distributed.fsdp._fully_shard import _fsdp_init

    from ipa_train.jobs.config import RunConfig
    from ipa_train.training.distributed import Events, is_dtensor, setup_distributed
    from ipa_train.training.loop import Trainer

    to_calls, moved_groups = [], []
    original_to, original_move = nn.Module.to, _fsdp_init._move_states_to_device

    def recording_to(self, *args, **kwargs):
        plain = [p for p in self.parameters() if not p.requires_grad and not is_dtensor(p)]
        if plain:
            to_calls.append({"module": type(self).__name__, "unsharded_bytes": _bytes(plain)})
        return original_to(self, *args, **kwargs)

    def recording_move(params, buffers, device):
        moved_groups.append(_bytes([p for p in params if not p.requires_grad]))
        return original_move(params, buffers, device)

    nn.Module.to = recording_to
    _fsdp_init._move_states_to_device = recording_move  # fully_shard's initialisation calls it by this name
    dist_info = setup_distributed()
    trainer = Trainer(RunConfig.load(config_path), dist_info, Events(dist_info))
    frozen = [p for p in trainer.bare.parameters() if not p.requires_grad]
    full = sum(p.numel() * p.element_size() for p in frozen)  # a DTensor's numel is the whole tensor's
    local = _bytes([p.to_local() if is_dtensor(p) else p for p in frozen])
    Path(out_dir, f"rank{dist_info.rank}.json").write_text(json.dumps(
        {"to_calls": to_calls, "moved_groups": moved_groups, "full_bytes": full, "local_bytes": local,
         "sharded": sum(is_dtensor(p) for p in frozen), "frozen": len(frozen)}))
    trainer.run()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
