"""Ship a learned objective with rlmeta: copy a run's ``lpg.pt`` or ``lpo.pt`` into the package and
write its card.

    python scripts/ship_objective.py runs/lpg-study/uniform-s0 --name lpg-grid-small
    python scripts/ship_objective.py runs/ta-lpg-study/ta-lpg-es-s0 --name ta-lpg-grid-small
    python scripts/ship_objective.py runs/lpo-study/lpo-s0 --name lpo-cartpole
    python scripts/ship_objective.py --recheck lpo-cartpole ta-lpo-cartpole   # recompute shipped cards' checks
    python scripts/ship_objective.py --recheck lpo-cartpole --full a.json b.json c.json   # and their meta-test

Writes ``rlmeta/objectives/trained/<name>.pt`` and ``<name>.json``, its card: its kind (``lpg`` or
``lpo``, which loader reads it), where it came from (run, commit), the config that trained it, the
full meta-test scores where a study computed them (``--full FILE``, any number), and a smaller
check (``check``: arguments and score) that ``tests/agents/test_shipped.py`` reproduces within
two standard errors in CI. An LPG's check is ``rlmeta meta-test`` on 12 held-out levels of the
generator it was meta-trained on (``small``, ``all``, ...); an LPO drift's is the mean greedy return of 4 fresh PPO agents (seeds 1000..1003) at the
meta-training horizon. The check runs in a process pinned to MKL's and torch's AVX2 kernels
(``rlmeta.repro``), so it gives the same number on every AVX2 machine, where an unpinned run
depends on the machine's instruction set. Refuses to replace a shipped objective without
``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import torch

from rlmeta.agents.learned import LPG_FORMAT, LPO_FORMAT
from rlmeta.repro import PINNED, run_pinned

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


def pinned_check(target: str, kind: str, args: dict) -> dict:
    """The card's ``check``: ``rlmeta.agents.meta_test.card_check`` in a pinned process."""
    result = run_pinned("rlmeta.agents.meta_test:card_check", target, kind, args)
    return {"args": args, "score": result["score"], "se": result["se"], "torch_threads": 1, "pinned": PINNED}


def _full(files: list[str]) -> dict:
    full = {Path(f).name: json.loads(Path(f).read_text()) for f in files}
    for results in full.values():
        results.pop("per_level", None)  # the card stays small: the study's results keep the details
        results.pop("schedule", None)
    return full


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def recheck(names: list[str], full_files: list[str]) -> None:
    """Recompute shipped objectives' checks (pinned), and their meta-test from ``full_files`` if given."""
    if full_files and len(names) != 1:
        raise SystemExit("--full with --recheck quotes one objective's meta-test: name exactly one")
    for name in names:
        path = TRAINED / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"{name!r} is not shipped (no {path})")
        card = json.loads(path.read_text())
        card["check"] = {**pinned_check(str(TRAINED / f"{name}.pt"), card["kind"], card["check"]["args"]),
                         "commit": _commit()}
        if full_files:
            card["meta_test"] = _full(full_files)
            card["meta_test_commit"] = _commit()
        path.write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps({"name": name, "check": card["check"]}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--name", help="the shipped objective's name (with run_dir)")
    parser.add_argument("--recheck", nargs="+", metavar="NAME", help="recompute these shipped objectives' checks")
    parser.add_argument("--full", nargs="*", default=[], help="meta-test result JSON files to quote on the card")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if args.recheck:
        if args.run_dir or args.name:
            parser.error("--recheck takes shipped names only, not a run directory or --name")
        recheck(args.recheck, args.full)
        return
    if not args.run_dir or not args.name:
        parser.error("give a run directory and --name (or --recheck NAME ...)")
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
    full = _full(args.full)
    shutil.copyfile(sources[0], target)
    commit = _commit()
    if data["format"] == LPO_FORMAT:
        card = {"name": args.name, "kind": "lpo", "objective": describe(data, es=True), "source_run": run.name,
                "commit": commit, "generations": data["info"]["generation"], "network": data["network"],
                "config": data["info"]["config"], "inner": data["info"]["inner"],
                "check": pinned_check(str(target), "lpo", {**LPO_CHECK, "include_ppo": False})}
    else:
        es = "popsize" in data["config"]
        # held-out levels of the distribution it was meta-trained on (small, all, ...)
        lpg_check = {**LPG_CHECK, "levels": data["config"].get("levels", LPG_CHECK["levels"])}
        card = {"name": args.name, "kind": "lpg", "objective": describe(data, es), "source_run": run.name,
                "commit": commit, ("generations" if es else "meta_steps"): data["meta_step"],
                "network": data["network"], "config": data["config"],
                "check": pinned_check(str(target), "lpg", lpg_check)}
    card["meta_test"] = full
    (TRAINED / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("name", "kind", "source_run", "check")}, indent=2))


if __name__ == "__main__":
    main()
