"""`pipeline tune`: learning-rate tuning under a dollar budget (plan -> price -> trials -> fit -> LR).

Modules, one concept each: `config` (the frozen TuneConfig and the CLI), `shapes` (model shapes and
parameter counts), `pricing` (the plan's price from the trainer's `--estimate`), `fit` (U-curves, power
laws, bootstrap), `strategies` (which trials to run and what they recommend), `store` (the Optuna study
that records every trial), `runner` (trials as `pipeline train` subprocesses), `report` (tables, CSV,
plots, the recommendation) and `command` (the `pipeline tune` entry point).

The tuner talks to the trainer only through its command-line flags, `main.log` and `estimate.json`.
"""
