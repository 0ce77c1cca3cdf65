"""Ship a learned objective with rlmeta: copy a run's ``lpg.pt`` or ``lpo.pt`` into the package and
write its card.

    python scripts/ship_objective.py runs/lpg-study/uniform-s0 --name lpg-grid-small
    python scripts/ship_objective.py runs/ta-lpg-study/ta-lpg-es-s0 --name ta-lpg-grid-small
    python scripts/ship_objective.py runs/lpo-study/lpo-s0 --name lpo-cartpole

Writes ``rlmeta/objectives/trained/<name>.pt`` and ``<name>.json``, its card: its kind (``lpg`` or
``lpo``, which loader reads it), where it came from (run, commit), the config that trained it, the
full meta-test scores where a study computed them (``--full FILE``, any number), and a smaller
check (``check``: arguments and score) that ``tests/agents/test_shipped.py`` reproduces within
two standard errors in CI. An LPG's check is ``rlmeta meta-test`` on 12 held-out levels of the
generator it was meta-trained on (``small``, ``all``, ...); an LPO drift's is the mean greedy return of 4 fresh PPO agents (seeds 1000..1003) at the
meta-training horizon. Refuses to replace a shipped objective without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import torch

from rlmeta.agents.learned import LPG_FORMAT, LPO_FORMAT
from rlmeta.agents.meta_test import meta_test, meta_test_lpo

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "rlmeta" / "objectives" / "trained"
LPG_CHECK = {"levels": "small", "num_levels": 12, "lifetime": 250, "seed": 1000, "episodes": 16}
LPO_CHECK = {"num_seeds": 4, "seed": 1000}


def describe(data: dict, es: bool) -> str:
    """The card's one-line ``objective``: what it is and how it was meta-trained."""
    how = "evolution strategies (rlmeta es-train)" if es else "meta-gradients (rlmeta meta-train)"
    if data["format"] == LPO_FORMAT:
        ta = data["network"].get("lifetime_conditioning")
        what = "TA-LPO (Jackson et al. 2024): LPO's drift reading n/N" if ta else "LPO (Lu et al. 2022): a learned drift"
        return f"{what}, meta-trained by {how}"
    ta = data["network"].get("lifetime_conditioning")
    what = "TA-LPG (Jackson et al. 2024): LPG reading n/N and log N" if ta else "LPG (Oh et al. 2020)"
    span = data["network"].get("lifetime_range")
    if ta and span:
        what += f" (log N mapped to [0, 1] over lifetimes {span[0]:g}-{span[1]:g})"
    return f"{what}, meta-trained by {how}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--name", required=True)
    parser.add_argument("--full", nargs="*", default=[], help="meta-test result JSON files to quote on the card")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    run = Path(args.run_dir)
    sources = [run / name for name in ("lpg.pt", "lpo.pt") if (run / name).is_file()]
    if len(sources) != 1:
        raise SystemExit(f"{run} must hold exactly one of lpg.pt and lpo.pt (found {[s.name for s in sources]})")
    target = TRAINED / f"{args.name}.pt"
    if target.exists() and not args.overwrite:
        raise SystemExit(f"{target} exists; pass --overwrite to replace the shipped objective")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    if summary.get("status") != "completed":
        raise SystemExit(f"{run} has not completed (summary status {summary.get('status')!r}): finish or resume it first")
    torch.set_num_threads(1)
    data = torch.load(sources[0], map_location="cpu", weights_only=False)
    if data.get("format") not in (LPG_FORMAT, LPO_FORMAT):
        raise SystemExit(f"{sources[0]} is not a learned objective (format {data.get('format')!r})")
    shutil.copyfile(sources[0], target)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    full = {Path(f).name: json.loads(Path(f).read_text()) for f in args.full}
    for results in full.values():
        results.pop("per_level", None)  # the card stays small: the study's results keep the details
        results.pop("schedule", None)
    if data["format"] == LPO_FORMAT:
        config = data["info"]["config"]
        check = meta_test_lpo(str(target), include_ppo=False, **LPO_CHECK)
        card = {"name": args.name, "kind": "lpo", "objective": describe(data, es=True), "source_run": run.name,
                "commit": commit, "generations": data["info"]["generation"], "network": data["network"],
                "config": config, "inner": data["info"]["inner"],
                "check": {"args": {**LPO_CHECK, "include_ppo": False}, "return_mean": check["return"]["mean"],
                          "return_se": check["return"]["se"], "torch_threads": 1}}
    else:
        es = "popsize" in data["config"]
        # held-out levels of the distribution it was meta-trained on (small, all, ...)
        lpg_check = {**LPG_CHECK, "levels": data["config"].get("levels", LPG_CHECK["levels"])}
        check = meta_test(str(target), **lpg_check)
        card = {"name": args.name, "kind": "lpg", "objective": describe(data, es), "source_run": run.name,
                "commit": commit, ("generations" if es else "meta_steps"): data["meta_step"],
                "network": data["network"], "config": data["config"],
                "check": {"args": lpg_check, "normalized_score": check["normalized_score"],
                          "normalized_score_se": check["normalized_score_se"], "torch_threads": 1}}
    card["meta_test"] = full
    (TRAINED / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("name", "kind", "source_run", "check")}, indent=2))


if __name__ == "__main__":
    main()
