"""Meta-gradient variance study: the same as ``rlmeta variance`` (see ``agents/variance.py``)."""

import sys

from rlmeta.cli import main

if __name__ == "__main__":
    main(["variance", *sys.argv[1:]])
