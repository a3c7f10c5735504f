"""Settings search on a validation split, and the JSON presets it writes.

    python tune.py --method ssah --dataset wiki --trials 30 --bits 32 --out trainers/presets/ssah-wiki.json
    python tune.py --method acmr --dataset wiki --trials 20
    python tune.py --method acmr --dataset wiki --trials 40 --objective min --warm-start trainers/presets/acmr-wiki.json
    python tune.py --method metah --dataset office-googlenet:A->W --trials 20 --iterations 200
    python tune.py --method metah --dataset office-googlenet:W->A --trials 24 --target-balance-floor 0  # no target check
    python tune.py --rerank trainers/presets/acmr-wiki.json --top 8 --seeds 1,2,3,4  # see rerank()

Each trial trains the method in-process (its `fit`) with settings an Optuna TPE sampler
(seeded) proposes, and scores them on VALIDATION items carved out of the training set, never
on the queries: image-text datasets hold out `--validation-size` training items (default: a
fifth), which are ranked against the database without them; METAH holds out a share of the
SOURCE (`--validation-fraction`, default 0.1; the target is unlabelled). The score is the
mean validation mAP over the retrieval directions (SSAH: i->t and t->i over the whole
ranking; ACMR: by `--objective`, see trainers.acmr.OBJECTIVES, default the mean of its two protocols'
direction averages, mAP@top_k and mAP over all; METAH: source validation queries against the
source database), under the run's tie rule.
Source queries cannot see what the terms acting through the unlabelled target do to it, so a METAH
search also judges the target without its labels: a trial whose classifier spreads the target's
training items over the classes with a balance (entropy of the predicted classes' shares over
log C) below `--target-balance-floor` (default 0.9; 0: off) ranks below every trial that keeps it.

Trial 0 runs the base settings (the program's method with train.py's dataset defaults, as far as
they lie in the search space), so a preset is never worse than them on validation; after a warm
start, a choice setting the earlier search did not have is next tried on its best trial.
Options after the known ones are train.py options held fixed in every trial (and written into
the preset); a setting given that way is left out of the search. The best trial's settings go
to --out as a preset (written atomically) with the command, every trial, the best validation
figure, the search space and the date; `python train.py --preset-file FILE` applies it, and
`--variant tuned` (METAH: `--preset tuned`) applies the committed trainers/presets/METHOD-DATASET.json.
"""
import argparse
import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
import typing

from trainers.registry import METHODS, get_method, spec_of
from utils.errors import UserError, run_command_line
from utils.presets import (PER_RUN_FIELDS, PRESET_FORMAT, PRESETS_DIR, converted, preset_json, preset_name, read_preset,
                           write_preset)

# Subtracted from a METAH trial's score when the target's prediction balance is below the floor:
# validation mAP lies in [0, 1], so such a trial ranks below every other, and TPE still sees
# which rejected settings came closer.
REJECTED_PENALTY = 1.0
# Re-ranking over seeds: between trials of equal mean validation mAP (a small validation part that
# every good trial ranks perfectly), the validation queries' hash-lookup mAP within Hamming radius 2
# (METAH reports it) decides.
TIE_BREAK_FIGURE = "map_radius2"


# --------------------------------------------------------------------------- validation figures

def all_objectives():
    """{objective: rule} over every method (--objective's choices)."""
    objectives = {}
    for name in METHODS:
        objectives.update({key: rule for key, rule in get_method(name).objectives.items() if key not in objectives})
    return objectives


def validation_score(method, config, objective="mean"):
    """(score, figures): the validation mAP of one trained `config` (see the module docstring);
    ACMR's combines its protocols by `objective` (its OBJECTIVES)."""
    from utils.run import set_seed
    set_seed(config.seed)
    return get_method(method).validation_score(config, objective)


# --------------------------------------------------------------------------- the search

def warm_start_trials(path, method, config, space, bits, seed, objective):
    """The trials recorded in the preset at `path` (an earlier ACMR search on the same data, bits,
    seed, validation part and tie rule) as (record, params, score): each rescored under `objective`
    from its recorded validation figures, its params those of the searched settings now. A
    setting it did not search is read off the config its own params made (e.g. a trial's
    train_label_classifier from its switches); a trial that lies outside today's space (a
    setting now fixed, a value out of range) is left out."""
    spec = get_method(method)
    if spec.rescore is None:
        raise UserError(f"--warm-start rescores recorded ACMR trials from their figures; {method}'s records "
                        f"hold only the score of their own criterion: leave --warm-start out")
    read_preset(path, method, get_method(method).Config)  # a missing or broken file: a one-line error
    with open(path) as f:
        recorded = json.load(f)
    validation = recorded.get("validation") or {}
    wanted = {"dataset": (recorded.get("dataset"), config.dataset), "bits": (recorded.get("bits"), bits),
              "seed": (recorded.get("seed"), seed), "validation size": (validation.get("size"), config.validation_size),
              "tie rule": (validation.get("ties"), config.ties)}
    for what, (theirs, ours) in wanted.items():
        if theirs != ours:
            raise UserError(f"--warm-start {path} was searched with {what} {theirs!r}, this search with {ours!r}: "
                            f"its validation figures do not compare; give the same {what} or leave --warm-start out")
    names = {param.name for param in space}
    trials = []
    for record in recorded.get("trials", ()):
        if not isinstance(record, dict) or "figures" not in record or set(record.get("params", {})) - names:
            continue
        trial_config = apply_params(config, record["params"], space)
        params = {}
        for param in space:
            value = record["params"].get(param.name, getattr(trial_config, param.name, None))
            if isinstance(value, tuple):
                value = ",".join(map(str, value))
            if param.holds(value):
                params[param.name] = value
        if len(params) == len(space):
            trials.append((record, params, spec.rescore(record["figures"], objective)))
    return trials


def new_choice_trials(warm, space):
    """Params of start trials for choice settings that the warm-start trials did not search (their
    value there read off the config): the best earlier trial with each other choice, so a setting
    new to the space is measured where the search already stands, whatever the sampler draws."""
    if not warm:
        return []
    record, params, _ = max(warm, key=lambda trial: trial[2])
    trials = []
    for param in space:
        if param.choices and not param.preset and param.name not in record.get("params", {}):
            trials += [{**params, param.name: choice} for choice in param.choices if choice != params[param.name]]
    return trials


def base_config(method, fixed_options):
    """(Config built as train.py builds it from the fixed options, names of the settings given)."""
    from train import build_config
    from utils.config import add_config_arguments
    spec = get_method(method)
    parser = argparse.ArgumentParser(prog=f"python tune.py --method {method}")
    add_config_arguments(parser, spec.config_class)
    args = parser.parse_args(fixed_options)
    given = {name for name, value in vars(args).items() if value is not None}
    return build_config(spec, args), given


def search_space(method, given):
    return [param for param in get_method(method).search_space if param.name not in given]


def settings_of(config, base, chosen):
    """The preset settings (JSON values): the `chosen` ones (searched or given) and every other
    method setting that differs from `base` (the Config's defaults under the base variant:
    e.g. a dataset's defaults); per-run settings left out."""
    return {name: (list(value) if isinstance(value, tuple) else value)
            for name, value in dataclasses.asdict(config).items()
            if name not in PER_RUN_FIELDS and (name in chosen or value != getattr(base, name))}


def base_params(method, config, space, preset=None):
    """The base config's values of the searched settings, for a first trial that measures the
    program's method itself (so the search never returns worse than it on validation); a value
    outside the searched range is left to the sampler. With `preset` (a name in the method's
    PRESETS), the values of the config under that preset's switches instead: a start trial that
    measures, e.g., the paper variant."""
    spec = get_method(method)
    if preset is not None:
        config = dataclasses.replace(config, **spec.presets[preset])
    values = dataclasses.asdict(config)
    values.update({key: value for key, value in spec.resolved_settings(config).items() if key in values})
    params = {}
    for param in space:
        if param.preset:
            params[param.name] = preset or spec.base_preset
            continue
        value = values[param.name]
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        if param.choices:
            if value in param.choices:
                params[param.name] = value
        elif param.low <= value <= param.high:
            params[param.name] = value
    return params


def apply_params(config, params, space=(), fixed=()):
    """`config` with the trial's values (tuple settings given as text parsed); a preset Param of
    `space` contributes its preset's switches first (module: the config's method), except the
    settings named in `fixed` (held fixed by the search's command line: they keep config's value)."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name: f for f in dataclasses.fields(config)}
    preset_names = {param.name for param in space if param.preset}
    values = {}
    for name in preset_names & set(params):
        values.update({key: value for key, value in spec_of(config).presets[params[name]].items()
                       if key not in fixed})
    values.update({name: converted(fields[name], hints[name], value, "search")
                   for name, value in params.items() if name not in preset_names})
    return dataclasses.replace(config, **values)


def balance_floor(method, given=None):
    """The target balance floor of a search: `given`, else METAH's default (0, off, for the others)."""
    if given is not None:
        return given
    return get_method(method).target_balance_floor or 0.0


def target_check(method, figures, floor):
    """(penalty, record fields) of a trial's target criterion: a METAH trial whose target prediction
    balance (in its figures) is below `floor` (0: off) loses REJECTED_PENALTY; other methods have no
    target to judge."""
    if get_method(method).target_balance_floor is None:
        return 0.0, {}
    accepted = figures["target_prediction_balance"] >= floor
    return (0.0 if accepted else REJECTED_PENALTY), {"accepted": accepted}


def search_setup(method, dataset, bits, seed, fixed_options, validation_size, validation_fraction):
    """(base Config of every trial, settings given, search space, the base variant's Config): what a
    search and a re-ranking of its trials build alike from the same options."""
    spec = get_method(method)
    options = ["--dataset", dataset, "--bits", str(bits), "--seed", str(seed), *fixed_options]
    config, given = base_config(method, options)
    if spec.validation_field == "validation_fraction":
        fraction = spec.validation_share if validation_fraction is None else validation_fraction
        config = dataclasses.replace(config, validation_fraction=fraction)
        if fraction <= 0:
            raise UserError("METAH's search scores on source validation queries: give --validation-fraction > 0")
    else:
        if validation_size is None:
            from utils.data import load_dataset
            data = load_dataset(config.dataset, config.data, config.seed, config.split_file,
                                split_sizes=config.split_sizes)
            validation_size = max(1, int(round(spec.validation_share * len(data.split.train))))
        config = dataclasses.replace(config, validation_size=validation_size)
    reference = spec.config_class(**{**dataclasses.asdict(spec.config_class()), **spec.presets[spec.base_preset]})
    return config, given, search_space(method, given), reference


def run_search(method, dataset, trials, bits=32, seed=0, fixed_options=(), out="", validation_size=None,
               validation_fraction=None, timeout=0.0, command="", target_balance_floor=None, objective="mean",
               warm_start=""):
    """Runs the search and writes the preset to `out`; returns the preset as a dict."""
    target_balance_floor = balance_floor(method, target_balance_floor)
    try:
        import optuna
    except ImportError:
        raise UserError("the settings search needs Optuna: pip install optuna") from None
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    if not 0.0 <= target_balance_floor < 1.0:
        raise UserError(f"--target-balance-floor is a share of log C in [0, 1), got {target_balance_floor}")
    spec = get_method(method)
    if target_balance_floor and spec.target_balance_floor is None:
        raise UserError(f"--target-balance-floor judges METAH's unlabelled target; {method} has none: drop it")
    if objective not in all_objectives():
        raise UserError(f"--objective {objective} is not one of {', '.join(all_objectives())}")
    if objective not in spec.objectives:
        raise UserError(f"--objective {objective} combines ACMR's two protocols; {method} scores one "
                        f"figure per trial: leave --objective out")
    config, given, space, reference = search_setup(method, dataset, bits, seed, fixed_options,
                                                    validation_size, validation_fraction)
    records = []

    def score_trial(trial):
        params = {param.name: param.suggest(trial) for param in space}
        trial_config = apply_params(config, params, space, given)
        start = time.perf_counter()
        score, figures = validation_score(method, trial_config, objective)
        penalty, check = target_check(method, figures, target_balance_floor)
        records.append({"number": trial.number, "params": params, "validation_map": score, **check,
                        "figures": figures, "seconds": round(time.perf_counter() - start, 1)})
        verdict = f", target balance {figures['target_prediction_balance']:.3f}" \
            f"{'' if check['accepted'] else ' REJECTED'}" if check else ""
        print(f"trial {trial.number}: validation mAP {score:.4f}{verdict} ({records[-1]['seconds']} s) {params}",
              flush=True)
        return score - penalty

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE samples at random for its first n_startup_trials (10 by default): a third of a short search
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, trials // 3))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    warm = warm_start_trials(warm_start, method, config, space, bits, seed, objective) if warm_start else []
    for record, params, score in warm:  # first, as done trials: what an earlier search measured
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={param.name: param.distribution() for param in space}, value=score))
        records.append({**record, "number": len(records), "params": params, "validation_map": score,
                        "warm_start": {"file": warm_start, "number": record.get("number")}})
    study.enqueue_trial(base_params(method, config, space))  # then the base settings
    for params in new_choice_trials(warm, space):  # then what the earlier search could not draw
        study.enqueue_trial(params)
    for param in space:  # then each other preset of a preset Param as it stands (e.g. ACMR's paper variant)
        for preset in param.choices if param.preset else ():
            if preset != spec.base_preset:
                study.enqueue_trial(base_params(method, config, space, preset))
    study.optimize(score_trial, n_trials=trials, timeout=timeout or None)  # `trials` more after the warm start
    best = study.best_trial
    best_record = next(record for record in records if record["number"] == best.number)
    if not best_record.get("accepted", True):
        highest = max(record["figures"]["target_prediction_balance"] for record in records)
        raise UserError(f"every trial's target prediction balance fell below --target-balance-floor "
                        f"{target_balance_floor} (highest {highest:.3f}); give a lower floor, or 0 to turn the check off")
    best_config = apply_params(config, {param.name: best.params[param.name] for param in space}, space, given)
    preset = {"settings": settings_of(best_config, reference, given | {param.name for param in space}),
              "command": command, "base": spec.base_preset, "bits": bits, "seed": seed,
              "validation": {"objective": objective, "rule": spec.objectives[objective], "ties": config.ties,
                             "size": config.validation_size if spec.validation_field == "validation_size" else None,
                             "source_fraction": (config.validation_fraction
                                                 if spec.validation_field == "validation_fraction" else None),
                             "best_map": best_record["validation_map"], "best_trial": best.number,
                             "warm_start": {"file": warm_start, "trials": len(warm)} if warm_start else None,
                             **({"target_balance_floor": target_balance_floor,
                                 "target_prediction_balance": best_record["figures"]["target_prediction_balance"]}
                                if spec.target_balance_floor is not None else {})},
              "trials": records, "search_space": [dataclasses.asdict(p) for p in space],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if out:
        write_preset(out, method, dataset, **preset)
        print(f"best validation mAP {best.value:.4f} (trial {best.number}); preset written to {out}")
    return {"format": PRESET_FORMAT, "method": method, "dataset": dataset, **preset}


# --------------------------------------------------------------------------- re-ranking over seeds

@dataclasses.dataclass
class RecordedSearch:
    """A search read back from the preset it wrote (recorded_search): its record, its parsed
    options, and what its trials are built from (search_setup)."""
    recorded: dict
    args: argparse.Namespace
    config: object        # the base Config of every trial
    given: set            # settings held fixed by the search's command line
    space: list
    reference: object     # the base variant's Config (settings_of)
    floor: float          # the target balance floor (balance_floor)

    @property
    def method(self):
        return self.recorded["method"]

    def trials(self):
        """The recorded trials that drew every searched setting and scored."""
        names = {param.name for param in self.space}
        return [record for record in self.recorded["trials"]
                if set(record.get("params", {})) == names and "validation_map" in record]

    def trial_config(self, params):
        return apply_params(self.config, params, self.space, self.given)


def recorded_search(path, bits=None, seed=None):
    """The RecordedSearch of the preset at `path`, read back from the tune command it records (at
    its code length and seed, or at `bits` / `seed`); a one-line error when it records none."""
    recorded = preset_json(path)
    method = recorded.get("method") if isinstance(recorded, dict) else None
    if method not in METHODS:
        raise UserError(f"preset file {path} names no method of {', '.join(METHODS)}; give a preset "
                        f"written by python tune.py")
    read_preset(path, method, get_method(method).Config)  # its settings: a one-line error when broken
    words = shlex.split(recorded.get("command") or "")
    # searches recorded before tune.py moved to the top level name `python -m utils.tune`
    prefix = next((len(p) for p in (["python", "tune.py"], ["python", "-m", "utils.tune"]) if words[:len(p)] == p), 0)
    if not prefix or "--rerank" in words or not recorded.get("trials"):
        raise UserError(f"preset file {path} records no search (its command is {recorded.get('command')!r}); "
                        f"re-ranking reruns the trials a python tune.py search recorded")
    args, fixed = argument_parser().parse_known_args(words[prefix:])
    config, given, space, reference = search_setup(method, args.dataset, args.bits if bits is None else bits,
                                                   args.seed if seed is None else seed, fixed,
                                                   args.validation_size, args.validation_fraction)
    return RecordedSearch(recorded, args, config, given, space, reference,
                          balance_floor(method, args.target_balance_floor))


def rerank(path, top, seeds, out="", command=""):
    """Reruns the `top` best trials the search recorded in the preset at `path` at each of `seeds`
    (other than the search's: its figures are recorded) with the search's options, each seed also
    drawing its own validation part, and writes the preset (to `out`, default `path`) with the
    settings of the trial whose validation score, averaged over the search's seed and `seeds`, is
    highest (equal means: the higher mean TIE_BREAK_FIGURE, then the earlier trial); a METAH trial
    counts as kept only if its target balance holds the floor at every seed.
    A score measured on one seed and one validation draw picks the luckiest of many trials; the
    average of several picks what holds. Returns the preset as a dict."""
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    search = recorded_search(path)
    recorded, args, method, floor = search.recorded, search.args, search.method, search.floor
    seeds = list(dict.fromkeys(seeds))
    if not seeds or args.seed in seeds:
        raise UserError(f"--seeds must name seeds other than the search's ({args.seed}), whose figures the "
                        f"preset records; got {','.join(map(str, seeds)) or 'none'}")
    ranked = sorted(search.trials(), key=lambda r: (r.get("accepted", True), r["validation_map"], -r["number"]),
                    reverse=True)
    candidates = []
    for record in ranked[:top]:
        trial_config = search.trial_config(record["params"])
        scores, balances, accepted = {str(args.seed): record["validation_map"]}, {}, record.get("accepted", True)
        figures_by_seed = {str(args.seed): record.get("figures", {})}
        if "target_prediction_balance" in record.get("figures", {}):
            balances[str(args.seed)] = record["figures"]["target_prediction_balance"]
        for seed in seeds:
            start = time.perf_counter()
            score, figures = validation_score(method, dataclasses.replace(trial_config, seed=seed), args.objective)
            penalty, check = target_check(method, figures, floor)
            accepted = accepted and check.get("accepted", True)
            scores[str(seed)] = score
            figures_by_seed[str(seed)] = figures
            if check:
                balances[str(seed)] = figures["target_prediction_balance"]
            print(f"trial {record['number']} seed {seed}: validation mAP {score:.4f}"
                  f"{f', target balance {balances[str(seed)]:.3f}' if check else ''}"
                  f"{'' if check.get('accepted', True) else ' REJECTED'} ({time.perf_counter() - start:.1f} s)",
                  flush=True)
        mean = sum(scores.values()) / len(scores)
        lookups = [figures.get(TIE_BREAK_FIGURE) for figures in figures_by_seed.values()]
        candidates.append({"number": record["number"], "params": record["params"], "scores": scores,
                           "mean_map": mean, "accepted": accepted, **({"balances": balances} if balances else {}),
                           **({f"mean_{TIE_BREAK_FIGURE}": sum(lookups) / len(lookups)}
                              if None not in lookups else {}),
                           "figures": figures_by_seed})
        print(f"trial {record['number']}: mean validation mAP {mean:.4f} over {len(scores)} seeds"
              f"{'' if accepted else ' (REJECTED at some seed)'}", flush=True)
    kept = [candidate for candidate in candidates if candidate["accepted"]]
    if not kept:
        raise UserError(f"every re-ranked trial fell below --target-balance-floor {floor} at some seed; "
                        f"re-rank more trials (--top) or search again")
    # Equal means (e.g. every trial perfect on a small validation part): the better hash lookup on the
    # same validation queries, then the earlier trial (the base first).
    chosen = max(kept, key=lambda candidate: (candidate["mean_map"], candidate.get(f"mean_{TIE_BREAK_FIGURE}", 0.0),
                                              -candidate["number"]))
    preset = {key: value for key, value in recorded.items() if key not in ("format", "method", "dataset")}
    preset["settings"] = settings_of(search.trial_config(chosen["params"]), search.reference,
                                     search.given | {param.name for param in search.space})
    preset["rerank"] = {"command": command, "top": top, "seeds": [args.seed, *seeds],
                        "rule": "mean validation score over the seeds (each its own validation draw); equal "
                                f"means: the higher mean {TIE_BREAK_FIGURE} where the method reports it; "
                                "a METAH trial must hold the target balance floor at every seed",
                        "chosen_trial": chosen["number"], "mean_map": chosen["mean_map"],
                        "candidates": candidates,
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    out = out or path
    write_preset(out, method, recorded["dataset"], **preset)
    print(f"re-ranked {len(candidates)} trials over seeds {preset['rerank']['seeds']}: trial {chosen['number']} "
          f"(mean validation mAP {chosen['mean_map']:.4f}); preset written to {out}")
    return {"format": PRESET_FORMAT, "method": method, "dataset": recorded["dataset"], **preset}


def argument_parser():
    """The search's command line (train.py options after the known ones are held fixed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--trials", type=int, required=True, help="settings tried")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and of every trial's run")
    parser.add_argument("--out", default="", help="preset file to write (default: trainers/presets/"
                        "METHOD-DATASET.json)")
    parser.add_argument("--validation-size", type=int, default=None,
                        help="image-text data: training items held out for scoring (default: a fifth)")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help=f"METAH: share of the source held out (default {get_method('metah').validation_share})")
    parser.add_argument("--objective", default="mean", choices=tuple(all_objectives()),
                        help="ACMR: how a trial's score combines the two protocols' validation averages: "
                        "mean (default), min (the smaller: both must be high) or top_k (mAP@top_k alone)")
    parser.add_argument("--warm-start", default="", metavar="PRESET",
                        help="ACMR: first add the trials an earlier search recorded in PRESET (same data, bits, "
                        "seed, validation part and tie rule), rescored under --objective from their validation "
                        "figures, so the sampler starts from them; --trials more are run")
    parser.add_argument("--timeout", type=float, default=0.0, help="stop starting trials after this many "
                        "seconds (0: no limit)")
    parser.add_argument("--target-balance-floor", type=float, default=None,
                        help="METAH: a trial whose predicted classes on the unlabelled target have an entropy "
                        f"below this share of log C ranks below every other "
                        f"(default {get_method('metah').target_balance_floor}; "
                        "0: off)")
    return parser


def rerank_main(argv, command):
    parser = argparse.ArgumentParser(prog="python tune.py --rerank", description=rerank.__doc__)
    parser.add_argument("--rerank", required=True, metavar="PRESET", help="a preset a search wrote")
    parser.add_argument("--top", type=int, default=6, help="best recorded trials to rerun (default 6)")
    parser.add_argument("--seeds", required=True, help="comma-separated seeds other than the search's, e.g. 1,2,3,4")
    parser.add_argument("--out", default="", help="preset file to write (default: PRESET itself)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers, e.g. 1,2,3,4; got {args.seeds!r}") from None
    rerank(args.rerank, args.top, seeds, out=args.out, command=command)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python tune.py " + " ".join(shlex.quote(a) for a in argv)  # recorded in the preset
    if any(a == "--rerank" or a.startswith("--rerank=") for a in argv):
        return rerank_main(argv, command)
    args, fixed = argument_parser().parse_known_args(argv)
    out = args.out or os.path.join(PRESETS_DIR, preset_name(args.method, args.dataset))
    run_search(args.method, args.dataset, args.trials, bits=args.bits, seed=args.seed, fixed_options=fixed,
               out=out, validation_size=args.validation_size, validation_fraction=args.validation_fraction,
               timeout=args.timeout, command=command, target_balance_floor=args.target_balance_floor,
               objective=args.objective, warm_start=args.warm_start)


if __name__ == "__main__":
    run_command_line(main)
