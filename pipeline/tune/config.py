"""TuneConfig: everything one `pipeline tune` run decides, frozen, built from the command line and
saved as `tune_config.json` in `--out` (a resumed run reads it back instead of the command line).

The tuner's own options are long `--names`; every other token is a trainer flag that goes unchanged
to every trial (`-i -j -ih -b -t -d -u -v -m -k -q -c --compile ...`). A few trainer flags belong to
the tuner because it varies or manages them per trial: `-l` (the LR), `-o` (the trial dir), `-y`, `-es`
and `-n` (resume and rung checkpoints), and `-x` / `-1d -1c -1h`, which set the trial steps and the
model shape of a one-scale search.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

from pipeline.tune.shapes import DEFAULT_LADDER, GPT2_124M, Shape

SEARCHES = ("grid", "random", "halving", "hyperband", "greedy")
PROJECTIONS = ("model-scale", "data-scale")
# g5.xlarge on-demand, us-east-1 (the trainer's --estimate default).
DEFAULT_PRICE_PER_HOUR = 1.006
CONFIG_FILE = "tune_config.json"

# Trainer flags that take no value; every other trainer flag takes exactly one.
TRAINER_SWITCHES = ("--quiet",)
# Trainer flags the tuner sets per trial: passing them through would contradict the strategy.
MANAGED_FLAGS = ("-l", "-o", "-y", "-es", "-n", "-nk", "--estimate", "--help")
# Trainer flags the tuner reads (and then sets itself per trial).
READ_FLAGS = ("-x", "-1d", "-ld", "-1c", "-lc", "-1h", "-lh")


@dataclass(frozen=True)
class TuneConfig:
    search: str = "grid"
    projection: Optional[str] = None
    budget_usd: float = 20.0
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR
    out: str = "tune"
    lr_min: float = 1e-4
    lr_max: float = 1e-1
    n_lrs: int = 8
    steps: int = 128                       # steps of a one-scale / model-scale trial (-x)
    shape: Shape = DEFAULT_LADDER[0]       # model of a one-scale search
    ladder: Tuple[Shape, ...] = DEFAULT_LADDER
    data_steps: Tuple[int, ...] = (50, 100, 200)
    target: Shape = GPT2_124M
    target_steps: int = 4725
    target_batch_tokens: int = 524288
    eta: int = 3
    max_resource: int = 555                # R of the Hyperband table, in steps
    gpus: Tuple[str, ...] = ()
    seed: int = 0
    bootstrap: int = 200
    trainer_args: Tuple[str, ...] = ()
    final_micro_batch: int = 32
    final_init: Optional[str] = None
    final_start_step: Optional[int] = None
    final_log_dir: str = "log124M"

    @property
    def strategy(self) -> str:
        return self.search + ("+" + self.projection if self.projection else "")

    def trainer_value(self, flag: str, default: Optional[str] = None) -> Optional[str]:
        """The value passed through for a trainer flag (last one wins, as in argparse)."""
        value = default
        for name, v in pairs(self.trainer_args):
            if name == flag:
                value = v
        return value

    @property
    def seq_len(self) -> int:
        return int(self.trainer_value("-t", "1024"))

    @property
    def batch_tokens(self) -> int:
        """Tokens per optimizer step of every trial (-d; llm.c's default is one micro-batch)."""
        d = int(self.trainer_value("-d", "-1"))
        return d if d > 0 else int(self.trainer_value("-b", "4")) * self.seq_len

    def to_json(self) -> str:
        d = asdict(self)
        for key in ("shape", "target"):
            d[key] = getattr(self, key).label
        d["ladder"] = [s.label for s in self.ladder]
        d["strategy"] = self.strategy
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TuneConfig":
        d = json.loads(text)
        d.pop("strategy", None)
        d["shape"], d["target"] = Shape.parse(d["shape"]), Shape.parse(d["target"])
        d["ladder"] = tuple(Shape.parse(s) for s in d["ladder"])
        for key in ("data_steps", "gpus", "trainer_args"):
            d[key] = tuple(d[key])
        return cls(**d)

    def save(self) -> str:
        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, CONFIG_FILE)
        with open(path, "w") as f:
            f.write(self.to_json() + "\n")
        return path


def load(out: str) -> TuneConfig:
    with open(os.path.join(out, CONFIG_FILE)) as f:
        return TuneConfig.from_json(f.read())


def pairs(tokens: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """Trainer tokens -> [(flag, value)]; `-x=128` and `-x 128` both work, switches get None."""
    out, i = [], 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("-") or _is_number(tok):
            raise ValueError("trainer flags: %r is not a flag (values follow their flag)" % tok)
        if "=" in tok:
            name, value = tok.split("=", 1)
            out.append((name, value))
            i += 1
        elif tok in TRAINER_SWITCHES:
            out.append((tok, None))
            i += 1
        elif i + 1 < len(tokens):
            out.append((tok, tokens[i + 1]))
            i += 2
        else:
            raise ValueError("trainer flag %s needs a value" % tok)
    return out


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _split_strategy(text: str) -> Tuple[str, Optional[str]]:
    parts = [p for p in text.split("+") if p]
    search = next((p for p in parts if p in SEARCHES), None)
    projection = next((p for p in parts if p in PROJECTIONS), None)
    unknown = [p for p in parts if p not in SEARCHES + PROJECTIONS]
    if unknown or not parts or len(parts) > 2 or (len(parts) == 2 and not (search and projection)):
        raise ValueError("--strategy %r: use one of %s, or one projection of %s, or SEARCH+PROJECTION "
                         "(e.g. random+model-scale)" % (text, "/".join(SEARCHES), "/".join(PROJECTIONS)))
    if projection and search not in (None, "grid", "random"):
        raise ValueError("--strategy %r: a projection runs a grid or random search at each point" % text)
    return search or "grid", projection


STRATEGY_HELP = """\
strategies (--strategy):
  grid         --n-lrs LRs evenly spaced in log-LR at one shape (-1d -1c -1h, default 1/64/1),
               -x steps each; recommends the minimum of a U-curve fitted to their val losses
  random       the same with log-uniform random LRs (Optuna's RandomSampler, --tune-seed)
  halving      --n-lrs random LRs, -x steps each; Optuna's SuccessiveHalvingPruner (--eta) reads
               each trial's val loss every -v steps and stops the laggards; recommends the lowest
               final val loss of the trials that ran to the end
  hyperband    Hyperband's bracket table for --eta and --max-resource R steps; arms are random
               LRs, the best 1/eta of each round continue from their checkpoint; recommends the
               lowest val loss among the arms that ran the most steps
  greedy       warmup off (-u 0): double the LR from the bottom of --lr-range until a trial
               diverges, then try 2^-1/4, 2^-1/2, 2^-3/4 of that LR; recommends the stable trial
               with the lowest val loss
  model-scale  the search at each --ladder shape; power law of the optimal LR against parameter
               count, extrapolated to --target with a bootstrap band
  data-scale   the search with the --target model at each --data-steps step count; power law of
               the optimal LR against tokens (steps x -d), extrapolated to --target-steps x
               --target-batch tokens
  SEARCH+PROJECTION, e.g. random+model-scale: the projection runs that search at each point

trainer flags: every flag the tuner does not know (-i -j -ih -b -t -d -u -v -m -k -q -c -h
--device --seed ...) goes unchanged to every trial; -i and -j are required. -x and -1d -1c -1h
set the steps and shape of a one-scale search. The tuner sets -l -o -y -es -n itself (passing them
is an error).

exit codes: 0 done (or stopped at the budget), 2 bad arguments, 3 plan refused (over budget),
4 pricing failed, 5 nothing to recommend. See docs/TUNE.md.
"""


def build_parser() -> argparse.ArgumentParser:
    # add_help=False: -h is the trainer's HellaSwag switch (-h 1), which must pass through to trials
    p = argparse.ArgumentParser(
        prog="pipeline tune", allow_abbrev=False, add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="pipeline tune --strategy S --budget-usd USD --out DIR [options] -i GLOB -j GLOB "
              "[trainer flags]\n"
              "       pipeline tune --resume --out DIR [--budget-usd USD] [--gpus LIST]\n"
              "       pipeline tune report DIR",
        description="Tune GPT-2's peak learning rate under a dollar budget: price the plan, refuse it\n"
                    "if it costs more than --budget-usd, run the trials as `pipeline train` processes,\n"
                    "fit their val losses, and recommend the LR with the final run's command.",
        epilog=STRATEGY_HELP)
    p.add_argument("--help", action="help", help="show this help and exit")
    g = p.add_argument_group("what to run")
    a = g.add_argument
    a("--strategy", default="grid", metavar="S",
      help="grid, random, halving, hyperband, greedy, model-scale, data-scale, or SEARCH+PROJECTION "
           "(see below; default grid)")
    a("--out", required=True, metavar="DIR",
      help="output dir: tune_config.json, study.db, trials/, results.csv, plots, recommendation.json")
    a("--resume", action="store_true", help="continue the study in --out: finished trials are kept, "
      "a trial cut off restarts")
    a("--lr-range", nargs=2, type=float, metavar=("MIN", "MAX"), default=(1e-4, 1e-1),
      help="learning rates searched, log scale (default 1e-4 1e-1)")
    a("--n-lrs", type=int, default=8, metavar="N",
      help="LRs per scale: grid points or random draws (default 8)")
    a("--tune-seed", type=int, default=0, metavar="N",
      help="seed of the random LRs and the bootstrap (default 0)")
    g = p.add_argument_group("money")
    a = g.add_argument
    a("--budget-usd", type=float, metavar="USD",
      help="refuse a plan above this, stop before spending more (default 20)")
    a("--price-per-hour", type=float, default=DEFAULT_PRICE_PER_HOUR, metavar="USD",
      help="instance $/hour (default %.3f: g5.xlarge on-demand)" % DEFAULT_PRICE_PER_HOUR)
    a("--price-only", action="store_true", help="print the priced plan and exit")
    a("--gpus", default="", metavar="LIST",
      help="run trials side by side, one per listed GPU (CUDA_VISIBLE_DEVICES), e.g. 0,1; a GPU may "
           "repeat (0,0) to share it")
    g = p.add_argument_group("halving and hyperband")
    a = g.add_argument
    a("--eta", type=int, default=3, metavar="N", help="reduction factor: keep 1/eta per round (default 3)")
    a("--max-resource", type=int, default=555, metavar="R",
      help="Hyperband R: the most steps an arm runs (default 555)")
    g = p.add_argument_group("projections")
    a = g.add_argument
    a("--ladder", default=",".join(s.label for s in DEFAULT_LADDER), metavar="D/C/H,...",
      help="model-scale shapes (default %(default)s)")
    a("--data-steps", default="50,100,200", metavar="N,...",
      help="data-scale step counts (default %(default)s)")
    a("--target", default=GPT2_124M.label, metavar="D/C/H",
      help="the final run's shape (default %(default)s = GPT-2 124M)")
    a("--target-steps", type=int, default=4725, metavar="N", help="the final run's steps (default 4725)")
    a("--target-batch", type=int, default=524288, metavar="TOKENS",
      help="the final run's tokens per step, its -d (default 524288)")
    a("--bootstrap", type=int, default=200, metavar="N",
      help="bootstrap resamples for the projection's band (default 200)")
    g = p.add_argument_group("the recommended final run")
    a = g.add_argument
    a("--final-batch", type=int, default=32, metavar="B", help="its -b (default 32, fits an A10G)")
    a("--final-init", metavar="FILE", help="its -e, e.g. seed_model.bin")
    a("--final-start-step", type=int, metavar="N", help="its -ss, with --final-init")
    a("--final-log-dir", default="log124M", metavar="DIR", help="its -o (default log124M)")
    return p


def parse(argv: Sequence[str]) -> Tuple[TuneConfig, bool, bool]:
    """argv -> (config, resume, price_only). A resume reads the saved config; only --budget-usd and
    --gpus may change (more money, other GPUs), since the plan must stay the same."""
    parser = build_parser()
    args, trainer = parser.parse_known_args(list(argv))
    if args.resume:
        if not os.path.exists(os.path.join(args.out, CONFIG_FILE)):
            parser.error("--resume: no %s in %s" % (CONFIG_FILE, args.out))
        if trainer:
            parser.error("--resume continues the saved plan: leave out the trainer flags %s" % " ".join(trainer))
        config = load(args.out)
        if args.budget_usd is not None:
            config = replace(config, budget_usd=args.budget_usd)
        if args.gpus:
            config = replace(config, gpus=tuple(g.strip() for g in args.gpus.split(",") if g.strip()))
        return config, True, args.price_only
    try:
        config = from_args(args, trainer)
    except ValueError as e:
        parser.error(str(e))
    return config, False, args.price_only


def from_args(args: argparse.Namespace, trainer: List[str]) -> TuneConfig:
    search, projection = _split_strategy(args.strategy)
    flags = pairs(trainer)
    managed = sorted({name for name, _ in flags if name in MANAGED_FLAGS})
    if managed:
        raise ValueError("the tuner sets %s itself for each trial; leave them out" % " ".join(managed))
    read: Dict[str, str] = {}
    passthrough: List[str] = []
    for name, value in flags:
        if name in READ_FLAGS:
            read[name.replace("-l", "-1", 1) if name.startswith("-l") else name] = value
        else:
            passthrough += [name] if value is None else [name, value]
    if not any(n in ("-i", "-id") for n, _ in flags):
        raise ValueError("-i (train shard glob) is required: it goes to every trial")
    if not any(n in ("-j", "-iv") for n, _ in flags):
        raise ValueError("-j (val shard glob) is required: trials are ranked by their val loss")
    shape = DEFAULT_LADDER[0]
    if any(k in read for k in ("-1d", "-1c", "-1h")):
        if not all(k in read for k in ("-1d", "-1c", "-1h")):
            raise ValueError("give the searched model's shape as all of -1d -1c -1h")
        shape = Shape(int(read["-1d"]), int(read["-1c"]), int(read["-1h"]))
    lr_min, lr_max = sorted(args.lr_range)
    if lr_min <= 0:
        raise ValueError("--lr-range must be positive")
    data_steps = tuple(int(s) for s in args.data_steps.split(",") if s)
    ladder = tuple(Shape.parse(s) for s in args.ladder.split(",") if s)
    if projection == "model-scale" and len(ladder) < 2:
        raise ValueError("--ladder needs at least two shapes to fit a power law")
    if projection == "data-scale" and len(data_steps) < 2:
        raise ValueError("--data-steps needs at least two step counts to fit a power law")
    return TuneConfig(
        search=search, projection=projection,
        budget_usd=20.0 if args.budget_usd is None else args.budget_usd,
        price_per_hour=args.price_per_hour, out=args.out, lr_min=lr_min, lr_max=lr_max,
        n_lrs=args.n_lrs, steps=int(read.get("-x", 128)), shape=shape, ladder=ladder,
        data_steps=data_steps, target=Shape.parse(args.target), target_steps=args.target_steps,
        target_batch_tokens=args.target_batch, eta=args.eta, max_resource=args.max_resource,
        gpus=tuple(g.strip() for g in args.gpus.split(",") if g.strip()), seed=args.tune_seed,
        bootstrap=args.bootstrap, trainer_args=tuple(passthrough), final_micro_batch=args.final_batch,
        final_init=args.final_init, final_start_step=args.final_start_step,
        final_log_dir=args.final_log_dir)
