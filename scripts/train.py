"""Train an agent: the same as ``rlmeta train`` (see ``python scripts/train.py --help``)."""

import sys

from rlmeta.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
