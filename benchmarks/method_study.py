"""The method study: does an IPA LoRA made with this pack fix hands on a model that learned something?

On the study world's pretrained VACE model (``ipa_train/study``, made by ``python -m ipa_train.study pretrain``):
samples candidates on held-out poses with the pack's sampling path, keeps the few best by the automatic hand
score, trains a LoRA with the pack's trainer for each objective (same steps, seed and samples):

    ipa            Flow-IPA, beta 600, hand weight 10 (the paper's settings)
    ipa_beta_<b>   Flow-IPA at other betas (100, 3000)
    sft            flow-matching fine-tuning on the same good samples (hand weight 10)
    dpo            Flow-DPO, good vs bad samples of the same pose
    ipa_no_halo    Flow-IPA with hand weight 1

and evaluates each on other held-out poses and seeds: good-hand rate, hand error (to the ideal glyph), drift
(outside the hands, against the base model's video of the same seed) and diversity (mean pairwise difference of
one pose's videos, and its ratio to the base model's).

    python benchmarks/method_study.py --quick          # about 5 minutes on 2 cores
    python benchmarks/method_study.py                  # the README's table
    python benchmarks/method_study.py --json           # one JSON object on stdout, the table on stderr
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced run (fewer poses, candidates and steps)")
    parser.add_argument("--seed", type=int, default=0, help="held-out poses and sampling seeds (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per method (default 60 quick, 200 full)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    parser.add_argument("--output", default=None, help="folder for the dataset, the runs and hands.png (default: a temporary one)")
    parser.add_argument("--only", nargs="*", default=None, help="train only these methods (e.g. ipa sft)")
    args = parser.parse_args(argv)

    import torch

    from ipa_train.study import experiment

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="ipa-study-") as scratch:
        out = Path(args.output) if args.output else Path(scratch)
        results, samples = experiment.run_study(out, quick=args.quick, seed=args.seed, steps=args.steps, only=args.only)
        picture = (Path(args.output) if args.output else Path.cwd()) / "method_study_hands.png"
        experiment.hands_sheet(samples).save(picture)
        results["_study"]["hands_png"] = str(picture)
    text = experiment.table(results)
    print(text, file=sys.stderr if args.json else sys.stdout)
    print(f"hands before and after: {picture}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
