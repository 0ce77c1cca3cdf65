"""Ship a meta-trained LPG with rlmeta: copy its ``lpg.pt`` into the package and write its card.

    python scripts/ship_lpg.py runs/lpg-study/uniform-s0 --name lpg-grid-small

Writes ``rlmeta/objectives/trained/<name>.pt`` (the learned parameters, network and the config
that trained them) and ``<name>.json``, its card: where it came from (run, commit), the training
config, the full meta-test score if the study computed it (``results/lpg/meta_test-<run>-small-250.json``),
and a smaller check (``check``: the arguments and the score) that ``tests/agents/test_shipped.py``
reproduces within two standard errors in CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import torch

from rlmeta.agents.meta_test import meta_test

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "rlmeta" / "objectives" / "trained"
CHECK = {"levels": "small", "num_levels": 12, "lifetime": 250, "seed": 1000, "episodes": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--name", default="lpg-grid-small")
    args = parser.parse_args()
    run = Path(args.run_dir)
    source = run / "lpg.pt"
    if not source.is_file():
        raise SystemExit(f"{source} does not exist: meta-train first")
    torch.set_num_threads(1)
    target = TRAINED / f"{args.name}.pt"
    shutil.copyfile(source, target)
    data = torch.load(target, weights_only=False)
    check = meta_test(str(target), **CHECK)
    full_path = ROOT / "results" / "lpg" / f"meta_test-{run.name}-small-250.json"
    full = json.loads(full_path.read_text()) if full_path.is_file() else None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    card = {
        "name": args.name,
        "objective": "LPG (Oh et al. 2020), meta-trained by meta-gradients with rlmeta meta-train",
        "source_run": run.name,
        "commit": commit,
        "meta_steps": data["meta_step"],
        "network": data["network"],
        "config": data["config"],
        "check": {"args": CHECK, "normalized_score": check["normalized_score"],
                  "normalized_score_se": check["normalized_score_se"], "torch_threads": 1},
        "meta_test_small_128_levels": None if full is None else {
            k: full[k] for k in ("normalized_score", "normalized_score_se", "num_levels", "lifetime", "seed",
                                 "of_optimum", "a2c_of_optimum")},
    }
    (TRAINED / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("name", "source_run", "check", "meta_test_small_128_levels")}, indent=2))


if __name__ == "__main__":
    main()
