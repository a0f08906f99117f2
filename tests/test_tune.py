"""`pipeline tune` on CPU: the fits against known answers, the Hyperband table and successive halving on a
synthetic objective, and the whole tuner on real tiny `pipeline train` runs (U-curve, divergence, a plan
refused over budget, SIGKILL and --resume)."""
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("optuna")
pytest.importorskip("torch")

from pipeline.shards.llmc import write_shard  # noqa: E402
from pipeline.tune import command, fit  # noqa: E402
from pipeline.tune.report import TIMING_COLUMNS  # noqa: E402
from pipeline.tune.runner import LogFollower  # noqa: E402
from pipeline.tune.shapes import GPT2_124M, Shape  # noqa: E402
from pipeline.tune.strategies import hyperband_brackets, successive_halving  # noqa: E402

# A model and batch small enough for a CPU trial in a few seconds.
TINY = ["-1d", "1", "-1c", "32", "-1h", "2", "-b", "4", "-t", "32", "-v", "4", "-m", "2", "-s", "0",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Train and val shards of a learnable stream (a repeating 50-token phrase) in llm.c's format."""
    d = tmp_path_factory.mktemp("shards")
    phrase = np.random.default_rng(0).integers(0, 50257, size=50)
    stream = np.tile(phrase, 200)
    write_shard(str(d / "x_train_000001.bin"), stream[:4000])
    write_shard(str(d / "x_train_000002.bin"), stream[4000:8000])
    write_shard(str(d / "x_val_000000.bin"), stream[:2000])
    return ["-i", str(d / "x_train_*.bin"), "-j", str(d / "x_val_*.bin")]


@pytest.fixture(autouse=True)
def one_thread_trials(monkeypatch):
    # each trial is a separate process: one torch thread is faster (and deterministic) on 2 cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def read_table(out):
    with open(os.path.join(out, "results.csv")) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ fits

def test_u_curve_finds_the_known_minimum_of_a_noisy_objective():
    rng = np.random.default_rng(3)
    x0 = math.log10(2.7e-3)
    lrs = np.logspace(-4, -1, 10)
    x = np.log10(lrs)
    # not a parabola: steeper on the right (divergence) and flat far left, plus noise
    loss = 3.0 + np.where(x > x0, 1.2 * (x - x0) ** 2, 0.5 * np.abs(x - x0) ** 1.7) + rng.normal(0, 0.01, 10)
    u = fit.fit_u_curve(lrs, loss)
    assert u.coeffs is not None
    assert abs(math.log10(u.lr_opt) - x0) < 0.15, u


def test_u_curve_at_the_edge_of_the_range_says_so():
    lrs = np.logspace(-4, -1, 6)
    u = fit.fit_u_curve(lrs, 5 - np.log10(lrs))   # still falling at the top of the range
    assert u.lr_opt == pytest.approx(lrs[-1]) and "widen --lr-range" in u.rule


def test_power_law_projection_recovers_a_known_exponent():
    rng = np.random.default_rng(7)
    coef, exponent = 2.0, -0.35
    groups = []
    for n in (3.3e6, 7.0e6, 1.1e7, 2.0e7):
        opt = coef * n ** exponent
        lrs = np.logspace(math.log10(opt) - 1.2, math.log10(opt) + 1.2, 9)
        loss = 4.0 + 0.6 * (np.log10(lrs / opt)) ** 2 + rng.normal(0, 0.004, 9)
        groups.append((n, list(lrs), list(loss)))
    p = fit.project(groups, GPT2_124M.params(), resamples=100, seed=1)
    assert abs(p.law.exponent - exponent) < 0.05, p.law
    truth = coef * GPT2_124M.params() ** exponent
    assert abs(math.log10(p.lr / truth)) < 0.1
    assert p.band[0] <= p.lr <= p.band[1] and p.band[0] < truth * 1.3 and p.band[1] > truth / 1.3


def test_parameter_count_of_gpt2_124m_is_llmc_s():
    assert GPT2_124M.params() == 124475904          # llm.c prints num_parameters: 124475904
    assert Shape.parse("1/64/1").label == "1/64/1"


# ------------------------------------------------------------------------- successive halving

def test_hyperband_table_is_the_course_s():
    table = {b["s"]: b["rounds"] for b in hyperband_brackets(555, 3)}
    # by hand: s_max = 5 (3^5 = 243 <= 555 < 729), B = 6 x 555; n = ceil(6 x 3^s / (s + 1)), r = 555 / 3^s
    assert sorted(table) == [0, 1, 2, 3, 4, 5]
    assert table[5] == [(243, 2), (81, 7), (27, 21), (9, 62), (3, 185), (1, 555)]
    assert table[4] == [(98, 7), (32, 21), (10, 62), (3, 185), (1, 555)]
    assert table[3] == [(41, 21), (13, 62), (4, 185), (1, 555)]
    assert table[2] == [(18, 62), (6, 185), (2, 555)]
    assert table[1] == [(9, 185), (3, 555)]
    assert table[0] == [(6, 555)]


def test_successive_halving_keeps_the_best_arm_of_a_synthetic_objective():
    rng = np.random.default_rng(11)
    arms = {"a%02d" % k: lr for k, lr in enumerate(np.logspace(-4, -1, 27))}
    best = min(arms, key=lambda a: abs(math.log10(arms[a]) - math.log10(3e-3)))
    seen = []

    def evaluate(alive, i, steps):
        seen.append((len(alive), steps))
        # loss falls with steps; arms differ by distance to the optimum; noise below the gaps
        return {a: 3 + (math.log10(arms[a]) + 2.52) ** 2 + 5.0 / steps + rng.normal(0, 0.002)
                if arms[a] < 0.05 else float("nan") for a in alive}

    rounds = [(27, 5), (9, 15), (3, 45), (1, 135)]
    history = successive_halving(list(arms), rounds, evaluate)
    assert seen == rounds
    assert list(history[-1]["losses"]) == [best]


# ---------------------------------------------------------------------------- real trials

def test_divergence_is_detected_from_main_log(tmp_path):
    log = tmp_path / "main.log"
    log.write_text("s:0 trl:10.9000 lr:0.000100 norm:1.00\ns:0 tel:10.9500\ns:1 trl:9.1000 lr:0.0001 norm:1\n")
    f = LogFollower(str(log))
    f.poll()
    assert f.divergence() is None
    with open(log, "a") as out:
        out.write("s:2 trl:11.2000 lr:0.000100 norm:9.00\n")
    f.poll()
    assert "above the first" in f.divergence()[0] and f.divergence()[1] == 2
    g = LogFollower(str(log))
    log.write_text("s:0 trl:10.9 lr:0.1 norm:1\ns:1 trl:nan lr:0.1 norm:nan\n")
    g.poll()
    assert "nan" in g.divergence()[0]


def test_grid_on_real_tiny_runs_finds_the_u_curve_minimum_and_marks_divergence(shards, tmp_path):
    out = str(tmp_path / "grid")
    rc = command.main(["--strategy", "grid", "--n-lrs", "5", "--lr-range", "1e-3", "1", "--budget-usd", "1",
                       "--out", out, "-x", "16"] + shards + TINY)
    assert rc == 0
    rows = read_table(out)
    assert [r["status"] for r in rows][-1] == "diverged"          # lr = 1 blows up on step 1
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) >= 3
    best = min(done, key=lambda r: float(r["final_val"]))
    lrs = [float(r["lr"]) for r in done]
    assert min(lrs) < float(best["lr"]) < max(lrs)                 # a real U: the best is inside
    import json
    rec = json.load(open(os.path.join(out, "recommendation.json")))
    spacing = 10 ** (3 / 4)                                        # the grid's LR ratio
    assert float(best["lr"]) / spacing < rec["lr"] < float(best["lr"]) * spacing
    assert "-l %.3g" % rec["lr"] in rec["command"] and "-1d 12 -1c 768 -1h 12" in rec["command"]
    for name in ("ucurve.png", "curves.png", "tune_config.json", "study.db"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert os.path.exists(os.path.join(out, "trials", rows[0]["trial"], "main.log"))
    # `report` rebuilds the same table from what is stored
    os.remove(os.path.join(out, "results.csv"))
    assert command.main(["report", out]) == 0
    assert read_table(out) == rows


def test_plan_over_budget_is_refused_before_any_training(shards, tmp_path, capsys):
    out = str(tmp_path / "over")
    argv = ["--strategy", "grid+model-scale", "--ladder", "1/32/2,2/32/2", "--n-lrs", "6", "--out", out,
            "--price-per-hour", "1000", "-x", "40"] + shards + TINY
    assert command.main(argv + ["--budget-usd", "1000000", "--price-only"]) == 0
    printed = capsys.readouterr().out
    total = float(re.search(r"^total\s+12\s+480\s+\S+\s+(\S+)$", printed, re.M).group(1))
    pricing_usd = float(re.search(r"^pricing runs\s+(\S+)$", printed, re.M).group(1))
    budget = pricing_usd + (total - pricing_usd) / 2      # room for about half of the trials
    assert command.main(argv + ["--budget-usd", "%.4f" % budget]) == 3
    captured = capsys.readouterr()
    assert "pricing 1/32/2:" not in captured.out                  # measured once, reused
    assert "plan refused" in captured.err and "over --budget-usd" in captured.err
    n_lrs = int(re.search(r"--n-lrs (\d+)", captured.err).group(1))
    assert 1 <= n_lrs < 6
    assert not os.path.exists(os.path.join(out, "trials"))        # priced, never trained
    assert not os.path.exists(os.path.join(out, "study.db"))


def _tune(out, shards, *extra):
    # 48 steps, about 4 s of training per trial here: the kill below lands mid-trial even when the
    # polling test is descheduled for a while (12 steps left under a second).
    return [sys.executable, "-m", "pipeline", "tune", "--strategy", "grid", "--n-lrs", "3", "--lr-range",
            "3e-3", "3e-1", "--budget-usd", "1", "--out", out, "-x", "48"] + list(extra) + shards + TINY


def test_sigkill_mid_trial_then_resume_gives_the_uninterrupted_table(shards, tmp_path):
    whole = str(tmp_path / "whole")
    subprocess.run(_tune(whole, shards), check=True, stdout=subprocess.DEVNULL)
    cut = str(tmp_path / "cut")
    tuner = subprocess.Popen(_tune(cut, shards), stdout=subprocess.DEVNULL)
    second = os.path.join(cut, "trials", "d1c32h2-01", "main.log")
    deadline = time.time() + 300
    while not (os.path.exists(second) and "trl" in open(second).read()):   # the 2nd trial is training
        assert tuner.poll() is None and time.time() < deadline
        time.sleep(0.05)
    first_log = os.path.join(cut, "trials", "d1c32h2-00", "stdout.log")
    first_mtime = os.path.getmtime(first_log)
    tuner.send_signal(signal.SIGKILL)
    tuner.wait()
    r = subprocess.run([sys.executable, "-m", "pipeline", "tune", "--resume", "--out", cut],
                       stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stdout
    assert "restarting d1c32h2-01" in r.stdout
    assert "trial d1c32h2-00:" not in r.stdout                      # finished: not run again
    assert os.path.getmtime(first_log) == first_mtime

    def strip(rows):
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]
    assert strip(read_table(cut)) == strip(read_table(whole))
    assert len(read_table(cut)) == 3


# ------------------------------------------------ adaptive strategies and data-scale on real trials

def _study_records(out):
    from pipeline.tune import store
    return store.records(store.open_study(out))


def _logged_steps(out, directory, kind="trl"):
    with open(os.path.join(out, "trials", directory, "main.log")) as f:
        return [int(line.split()[0][2:]) for line in f if line.split()[1].startswith(kind + ":")]


def _recommendation(out):
    with open(os.path.join(out, "recommendation.json")) as f:
        return json.load(f)


def test_halving_prunes_by_the_successive_halving_rule_and_the_best_arm_runs_all_steps(shards, tmp_path):
    out = str(tmp_path / "halving")
    steps, every, eta = 32, 4, 3
    rc = command.main(["--strategy", "halving", "--n-lrs", "6", "--lr-range", "1e-3", "3e-2", "--eta", str(eta),
                       "--budget-usd", "1", "--out", out, "-x", str(steps)] + shards + TINY)
    assert rc == 0
    rows = read_table(out)
    records = _study_records(out)
    assert [r["status"] for r in rows].count("diverged") == 0      # the rule below has no divergence in it
    # Asynchronous successive halving, from its definition: trials run in order; at rung k (step
    # every * eta^k, before the last step) a trial continues only if its val loss is within the best
    # 1/eta (at least the best one) of the losses every trial so far had at that rung.
    at_rung = {}
    for row in rows:
        curve = dict(records[row["trial"]].val_curve)
        expected, k = ("done", None), 0
        while every * eta ** k < steps:
            step = every * eta ** k
            at_rung.setdefault(k, []).append(curve[step])
            ranked = sorted(at_rung[k])
            if curve[step] > ranked[max(0, len(ranked) // eta - 1)]:
                expected = ("pruned", step)
                break
            k += 1
        assert row["status"] == expected[0], (row, expected)
        if expected[0] == "pruned":                                 # its record ends where it was pruned
            assert max(s for s, _ in records[row["trial"]].val_curve) == expected[1]
            assert float(row["final_val"]) == pytest.approx(curve[expected[1]], abs=1e-4)
    statuses = [r["status"] for r in rows]
    assert statuses.count("pruned") >= 2 and statuses.count("done") >= 1
    # a pruned trial really stopped: its process did not train to the end
    assert any(max(_logged_steps(out, r["trial"])) < steps - 1 for r in rows if r["status"] == "pruned")
    best = min(rows, key=lambda r: float(r["final_val"]))
    assert best["status"] == "done" and int(best["steps"]) == steps
    assert max(_logged_steps(out, best["trial"], "tel")) == steps
    rec = _recommendation(out)
    assert rec["lr"] == pytest.approx(float(best["lr"]), rel=1e-3)
    assert "not pruned" in rec["rule"] and best["trial"] in rec["rule"]


def test_hyperband_end_to_end_runs_its_table_and_promoted_arms_resume_from_checkpoints(shards, tmp_path):
    out = str(tmp_path / "hyperband")
    R, eta = 3, 3
    rc = command.main(["--strategy", "hyperband", "--max-resource", str(R), "--eta", str(eta), "--lr-range",
                       "1e-3", "3e-2", "--budget-usd", "1", "--out", out] + shards + TINY)
    assert rc == 0
    rows = read_table(out)
    assert all(r["status"] == "done" for r in rows)
    # what ran, counted from the table: bracket -> round -> steps of each arm
    ran = {}
    for r in rows:
        m = re.fullmatch(r"s(\d+)-a\d+-r(\d+)", r["trial"])
        ran.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), []).append(int(r["steps"]))
    counted = {s: [(len(v), v[0]) for _, v in sorted(rounds.items())] for s, rounds in ran.items()}
    # with no divergence every bracket runs its whole table: s=1 3x1 then 1x3, s=0 2x3 (by hand)
    assert counted == {1: [(3, 1), (1, 3)], 0: [(2, 3)]}
    rec = _recommendation(out)
    assert {b["s"]: [tuple(x) for x in b["rounds"]] for b in rec["hyperband"]} == counted
    assert {b["s"]: [tuple(x) for x in b["planned"]] for b in rec["hyperband"]} == counted
    # the promoted arm is the best of round 0 and continued from its step-1 checkpoint
    first = [r for r in rows if r["trial"].startswith("s1-") and r["trial"].endswith("-r0")]
    promoted = min(first, key=lambda r: float(r["final_val"]))["trial"][:-3]
    assert [r["trial"] for r in rows if r["trial"].endswith("-r1")] == [promoted + "-r1"]
    with open(os.path.join(out, "trials", promoted, "stdout.log")) as f:
        assert "state_00000001_00000.bin at step 1" in f.read()
    # ... exactly: its losses equal one uninterrupted 3-step run at the same LR
    with open(os.path.join(out, "trials", promoted, "command.txt")) as f:
        lr = re.search(r"-l (\S+)", f.read()).group(1)
    whole = str(tmp_path / "whole")
    subprocess.run([sys.executable, "-m", "pipeline", "train"] + shards + TINY + ["-x", str(R), "-l", lr,
                                                                                "-o", whole],
                   check=True, stdout=subprocess.DEVNULL)
    from pipeline.gpt.logs import parse_log
    arm, ref = parse_log(os.path.join(out, "trials", promoted)), parse_log(whole)
    assert arm["train"] == ref["train"] and arm["val"][-1] == ref["val"][-1]
    # the brackets are over: no checkpoint is left behind
    assert not [n for _, _, files in os.walk(os.path.join(out, "trials")) for n in files
                if n.startswith(("model_", "state_", "DONE_"))]
    best = min((r for r in rows if int(r["steps"]) == R), key=lambda r: float(r["final_val"]))
    assert rec["lr"] == pytest.approx(float(best["lr"]), rel=1e-3)


def test_greedy_doubles_until_the_first_divergence_then_tries_fractions_below_it(shards, tmp_path):
    out = str(tmp_path / "greedy")
    lo = 0.04
    rc = command.main(["--strategy", "greedy", "--lr-range", str(lo), "3", "--budget-usd", "1", "--out", out,
                       "-x", "16", "-u", "4"] + shards + TINY)
    assert rc == 0
    rows = read_table(out)
    doublings = [r for r in rows if "-x" in r["trial"]]
    fractions = [r for r in rows if "-f" in r["trial"]]
    # doubled from the bottom of the range, stopped at the first divergence
    assert [float(r["lr"]) for r in doublings] == pytest.approx([lo * 2 ** k for k in range(len(doublings))],
                                                                rel=1e-3)
    assert [r["status"] for r in doublings] == ["done"] * (len(doublings) - 1) + ["diverged"]
    assert len(doublings) >= 3
    diverged_lr = lo * 2 ** (len(doublings) - 1)
    # then fractions of it, all above the last stable doubling
    assert [float(r["lr"]) for r in fractions] == pytest.approx(
        [diverged_lr * 2 ** -0.25, diverged_lr * 2 ** -0.5, diverged_lr * 2 ** -0.75], rel=1e-3)
    # warmup off in every trial, whatever -u was passed through
    for r in rows:
        with open(os.path.join(out, "trials", r["trial"], "command.txt")) as f:
            assert re.search(r"-u 0\b", f.read())
    rec = _recommendation(out)
    stable = [r for r in rows if r["status"] == "done"]
    best = min(stable, key=lambda r: float(r["final_val"]))
    assert rec["lr"] == pytest.approx(float(best["lr"]), rel=1e-3)
    assert "until %.3g diverged" % diverged_lr in rec["rule"]


def test_data_scale_fits_one_optimum_per_step_count_and_extrapolates_to_the_target_tokens(shards, tmp_path):
    out = str(tmp_path / "data")
    step_counts, tokens_per_step, target_steps = (8, 16, 32), 4 * 32, 512
    rc = command.main(["--strategy", "data-scale", "--target", "1/32/2", "--data-steps",
                       ",".join(map(str, step_counts)), "--n-lrs", "3", "--lr-range", "3e-3", "1e-1",
                       "--target-steps", str(target_steps), "--target-batch", str(tokens_per_step),
                       "--bootstrap", "50", "--budget-usd", "1", "--out", out] + shards + TINY)
    assert rc == 0
    rows = read_table(out)
    assert sorted(int(r["steps"]) for r in rows) == sorted(list(step_counts) * 3)
    assert {r["shape"] for r in rows} == {"1/32/2"}                   # the target model at every point
    rec = _recommendation(out)
    p = rec["projection"]
    assert p["axis"] == "tokens"
    assert p["scales"] == [float(n * tokens_per_step) for n in step_counts]
    assert len(p["optima"]) == len(step_counts)
    for n, opt in zip(step_counts, p["optima"]):
        assert rec["u_curves"]["%d steps" % n]["lr_opt"] == pytest.approx(opt)
        lrs = [float(r["lr"]) for r in rows if int(r["steps"]) == n and r["status"] == "done"]
        assert min(lrs) * 0.999 <= opt <= max(lrs) * 1.001
    # the extrapolation: a line through log(optimum) against log(tokens), at the target's tokens
    slope, intercept = np.polyfit(np.log(p["scales"]), np.log(p["optima"]), 1)
    target = target_steps * tokens_per_step
    assert p["target"] == target and p["exponent"] == pytest.approx(slope)
    assert rec["lr"] == pytest.approx(math.exp(intercept) * target ** slope, rel=1e-6)
    assert "against tokens" in rec["rule"]
    assert "%d steps x %d tokens" % (target_steps, tokens_per_step) in rec["rule"]
    assert "-1d 1 -1c 32 -1h 2" in rec["command"] and "-x %d" % target_steps in rec["command"]
    assert os.path.getsize(os.path.join(out, "projection.png")) > 0


def test_help_reads_and_the_trainer_s_h_passes_through(tmp_path, capsys):
    from pipeline.tune import config as cfg
    with pytest.raises(SystemExit) as e:
        cfg.parse(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in ("halving", "hyperband", "greedy", "data-scale", "trainer flags", "exit codes"):
        assert name in text
    config, _, _ = cfg.parse(["--out", str(tmp_path), "-i", "a.bin", "-j", "b.bin", "-h", "1", "-ih", "h.bin"])
    assert ("-h", "1") in cfg.pairs(config.trainer_args)
    assert command.main(["report", "--help"]) == 0
    assert "usage: pipeline tune report DIR" in capsys.readouterr().out


def test_halving_pruner_ignores_failed_attempts_that_run_again_on_resume():
    import optuna
    from pipeline.tune import config as cfg
    from pipeline.tune.strategies import OptunaHalving
    config = cfg.TuneConfig(search="halving", eta=2, trainer_args=("-v", "1"))
    study = optuna.create_study(pruner=OptunaHalving(config).pruner())

    def attempt(value):
        trial = study.ask()
        trial.report(value, 1)
        return trial, trial.should_prune()

    first, pruned = attempt(1.0)
    assert not pruned
    study.tell(first, 1.0)
    cut, _ = attempt(0.5)                  # an attempt cut off (or out of memory): it runs again
    study.tell(cut, state=optuna.trial.TrialState.FAIL)
    # the first rung, eta 2: the best half (at least the best) of [1.0, 0.7] goes on; the failed 0.5
    # must not stand in the way
    _, pruned = attempt(0.7)
    assert not pruned
    # and a real competitor still counts
    second, _ = attempt(0.5)
    study.tell(second, 0.5)
    _, pruned = attempt(0.8)               # [1.0, 0.7, 0.5, 0.8]: the best half is 0.5 and 0.7
    assert pruned
