"""``python -m ipa_train.study pretrain``: makes the study world's pretrained weights (see ``pretrain.py``)."""

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m ipa_train.study pretrain [options]   (python -m ipa_train.study pretrain --help)")
        return 0 if argv else 2
    if argv[0] == "pretrain":
        from .pretrain import main as pretrain

        return pretrain(argv[1:])
    print(f"unknown command {argv[0]!r}; the command is: pretrain", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
