"""`pipeline tune`: plan -> price -> run trials -> fit -> recommend; `pipeline tune report DIR`.

    pipeline tune --strategy grid --budget-usd 5 -i 'out/shards/*_train_*.bin' \\
        -j 'out/shards/*_val_*.bin' --out tune/tiny -1d 1 -1c 64 -1h 1 -x 128 -u 13 -d 524288
    pipeline tune --resume --out tune/tiny          # after a crash: finished trials are kept
    pipeline tune report tune/tiny                  # tables, plots and the recommendation again

Exit codes: 0 done (or stopped at the budget), 2 bad arguments, 3 plan refused (over budget),
4 pricing failed, 5 nothing to recommend.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import List, Optional, Sequence

from pipeline.tune import config as cfg
from pipeline.tune import pricing, report, store, strategies
from pipeline.tune.runner import Runner


def _ordered(strategy: strategies.Strategy, found) -> List[store.TrialRecord]:
    order = {s.trial_id: k for k, s in enumerate(strategy.planned())}
    return sorted(found.values(), key=lambda r: (order.get(r.trial_id, len(order)), r.trial_id))


def spent_usd(config: cfg.TuneConfig, study, prices) -> float:
    seconds = float(study.user_attrs.get("spent_seconds", 0.0)) + pricing.pricing_seconds(prices)
    return seconds * config.price_per_hour / 3600.0


def finish(config: cfg.TuneConfig, study, strategy, prices, echo=print) -> int:
    records = _ordered(strategy, store.records(study))
    table = report.rows(records)
    report.write_csv(os.path.join(config.out, "results.csv"), table)
    echo(report.format_table(table))
    try:
        rec = strategy.recommend(records)
    except ValueError as e:
        echo("no recommendation: %s" % e)
        report.plot(config, records, None, config.out)
        return 5
    d = report.recommendation_dict(config, rec, spent_usd(config, study, prices))
    with open(os.path.join(config.out, "recommendation.json"), "w") as f:
        json.dump(d, f, indent=2)
    written = report.plot(config, records, rec, config.out)
    echo(report.format_recommendation(d))
    echo("wrote %s" % ", ".join([os.path.join(config.out, n) for n in ("results.csv", "recommendation.json")]
                                + written))
    return 0


REPORT_USAGE = """usage: pipeline tune report DIR

Rebuild what a `pipeline tune` run gives from what DIR stores (tune_config.json, study.db,
pricing.json), without training: the results table (printed and results.csv), the plots
(ucurve.png, curves.png, projection.png for projections) and recommendation.json with the
final run's command. Works on a finished run and on one that stopped or was cut off.

exit codes: 0 done, 2 bad arguments, 5 nothing to recommend yet."""


def report_main(argv: Sequence[str]) -> int:
    if list(argv) in (["--help"], ["-h"]):
        print(REPORT_USAGE)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        print(REPORT_USAGE, file=sys.stderr)
        return 2
    if not os.path.exists(os.path.join(argv[0], cfg.CONFIG_FILE)):
        print("pipeline tune report: %s holds no %s (not a tune --out dir)" % (argv[0], cfg.CONFIG_FILE),
              file=sys.stderr)
        return 2
    config = cfg.load(argv[0])
    config = dataclasses.replace(config, out=argv[0])
    strategy = strategies.make(config)
    study = store.open_study(config.out)
    prices = pricing.measure(config, []) if os.path.exists(
        os.path.join(config.out, pricing.PRICING_FILE)) else {}
    return finish(config, study, strategy, prices)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    config, resume, price_only = cfg.parse(argv)
    if not resume and os.path.exists(os.path.join(config.out, "study.db")):
        print("pipeline tune: %s already holds a study; --resume it or choose another --out" % config.out,
              file=sys.stderr)
        return 2
    config.save()
    strategy = strategies.make(config)
    pruner = strategy.pruner() if isinstance(strategy, strategies.OptunaHalving) else None
    planned = strategy.planned()
    try:
        prices = pricing.measure(config, sorted({s.shape for s in planned}))
    except pricing.PricingError as e:
        print("pipeline tune: %s" % e, file=sys.stderr)
        return 4
    for p in prices.values():
        print("step price %s: slowest of steps 10-19 %.1f ms, start-up %.1f s"
              % (p.shape, p.slowest_step_s * 1000, p.startup_s))
    # a fresh run creates its study only once the plan is accepted
    study = store.open_study(config.out, pruner) if resume else None
    finished = store.records(study) if resume else {}
    remaining = [s for s in planned if s.trial_id not in finished]
    plan = pricing.price_plan(config, remaining, prices)
    already = spent_usd(config, study, prices) if resume else plan.pricing_dollars
    total = plan.total_dollars - plan.pricing_dollars + already
    print("plan (%s, %d trials%s):" % (config.strategy, len(remaining),
                                        ", %d finished before" % (len(planned) - len(remaining))
                                        if resume else ""))
    print(pricing.format_plan(config, plan))
    if strategy.__class__ in (strategies.Hyperband, strategies.OptunaHalving, strategies.Greedy):
        print("(an upper bound: this strategy stops or skips trials as it learns)")
    if total > config.budget_usd:
        refused = pricing.PlanPrice(plan.rows, already, total, plan.total_hours)
        print(pricing.over_budget_message(config, refused), file=sys.stderr)
        return 3
    if price_only:
        return 0
    if study is None:
        study = store.open_study(config.out, pruner)
    if resume:
        cut = store.mark_interrupted(study)
        if cut:
            print("resume: restarting %s (cut off)" % ", ".join(cut))
    runner = Runner(config, study, lambda s: pricing.trial_seconds(config, s, prices[s.shape.label]),
                    spent_before_usd=already, prune=pruner is not None)
    try:
        strategy.execute(runner)
    finally:
        runner.close()
    return finish(config, study, strategy, prices)
