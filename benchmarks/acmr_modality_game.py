"""ACMR's modality game on Wikipedia (wikiData.mat): what the modality classifier's accuracy shows.

    python benchmarks/acmr_modality_game.py [--seed 0] [--epochs 0] [--runs original,paper,...]
        [--out benchmarks/results/acmr_modality_game.json] [--png benchmarks/results/acmr_modality_game.png]

Runs (one seed each; each a normal run folder with TensorBoard under --runs-dir):
  original        the authors' program (adversarial path inert)
  paper           the paper's method as specified (lambda 0.05, k = 5, classifier Adam lr 1e-4),
                  without its weight regulariser L_reg (--regularisation-weight 0), to isolate the game
  paper-no-adv    control: the same with lambda 0 (the reversed gradient switched off)
  fast-adv        departure: a classifier that can keep up (updated every batch, lr 1e-2) and lambda 1
  fast-no-adv     its control: the same with lambda 0
Per epoch it records the live classifier's accuracy on each training batch (before that
iteration's updates), its accuracy on the test embeddings, and the separability: a fresh
linear classifier fitted to convergence on the current training embeddings, its test accuracy
(utils.separability). After training it also trains a fresh modality classifier with the run's
own architecture and optimiser on the FROZEN final embeddings for as many updates as the run
gave the live one. Writes the curves as JSON and a PNG; prints a summary.
"""
import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

import numpy as np  # noqa: E402

from trainers.acmr import TEST_PROTOCOL  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FAST = {"projector_steps": 1, "modality_learning_rate": 1e-2}
# The game isolates the adversary: the paper variant's weight regulariser (L_reg) stays off,
# as it was when these runs were first measured; everything else is the paper's.
PAPER = {"regularisation_weight": 0.0}
RUNS = {
    "original": ("original", {}),
    "paper": ("paper", {**PAPER}),
    "paper-no-adv": ("paper", {**PAPER, "lambda_value": 0.0}),
    "fast-adv": ("paper", {**PAPER, **FAST, "lambda_value": 1.0}),
    "fast-no-adv": ("paper", {**PAPER, **FAST, "lambda_value": 0.0}),
}


def frozen_classifier_accuracy(model, data, steps, seed):
    """A fresh modality classifier (the run's sizes, the run's Adam) trained `steps` batches of
    64 pairs on the frozen final training embeddings; its accuracy on the test embeddings."""
    import keras
    import tensorflow as tf
    from losses.acmr import modality_accuracy, modality_loss
    from models.acmr import ModalityClassifier, layer_sizes
    config = model.config
    train_img, train_txt = model.embed(*data.part("train")[:2])
    test_img, test_txt = model.embed(*data.part("query")[:2])
    keras.utils.set_random_seed(seed)
    classifier = ModalityClassifier(layer_sizes(config.architecture, config.dataset)[2])
    classifier(tf.constant(train_img[:1]))
    optimizer = keras.optimizers.Adam(config.modality_learning_rate, beta_1=config.beta_1, beta_2=config.beta_2,
                                      epsilon=config.adam_epsilon)

    @tf.function
    def step(img, txt):
        with tf.GradientTape() as tape:
            loss = modality_loss(classifier(img, reverse=False), classifier(txt, reverse=False))
        optimizer.apply_gradients(zip(tape.gradient(loss, classifier.trainable_variables),
                                      classifier.trainable_variables))

    rng = np.random.RandomState(seed)
    for _ in range(steps):
        rows = rng.choice(len(train_img), config.batch_size, replace=False)
        step(tf.constant(train_img[rows]), tf.constant(train_txt[rows]))
    return float(modality_accuracy(classifier(tf.constant(test_img), reverse=False),
                                   classifier(tf.constant(test_txt), reverse=False)))


def run_one(name, args):
    from trainers import acmr
    from utils.run import Run, set_seed
    variant, overrides = RUNS[name]
    config = dataclasses.replace(acmr.Config(), **{**acmr.PRESETS[variant], **overrides}, variant=variant,
                                 seed=args.seed, epochs=args.epochs, eval_every=10, separability_every=1,
                                 log_every=1, runs_dir=args.runs_dir, ties=args.ties,
                                 run_name=f"{name}-seed{args.seed}-{time.strftime('%H%M%S')}")
    set_seed(args.seed)
    data = acmr.load_data(config)
    train_img, train_txt, _ = data.part("train")
    model = acmr.AcmrModel(config, train_img.shape[1], train_txt.shape[1], data.num_classes)
    start = dict(acmr.modality_diagnostics(model, data), epoch=0)
    run = Run.create("acmr", config)
    results = acmr.fit(config, data=data, run=run, model=model)
    classifier_updates = results["iterations"] // config.projector_steps
    frozen = frozen_classifier_accuracy(model, data, classifier_updates, args.seed)
    epochs = results["epochs"]
    return {"variant": variant, "overrides": overrides, "run": run.dir, "seconds": results["seconds"],
            "lambda": [r["lambda"] for r in epochs],
            "batch_accuracy": [r["modality_accuracy_batches"] for r in epochs],
            "epoch_accuracy": [r["losses"]["modality_accuracy"] for r in epochs],
            "modality_loss": [r["losses"]["modality"] for r in epochs],
            "live_test": [start["live_test"]] + [r["modality"]["live_test"] for r in epochs],
            "separability": [start["separability"]] + [r["modality"]["separability"] for r in epochs],
            "classifier_updates": classifier_updates, "frozen_classifier_test": frozen,
            "final_map": results["final"]}


def plot(curves, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from utils import io
    figure = Figure(figsize=(15, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    first, live, probe = (figure.add_subplot(1, 3, i) for i in (1, 2, 3))
    for name, c in curves.items():
        per_batch = np.concatenate([np.asarray(b) for b in c["batch_accuracy"]])
        width = min(8, len(per_batch))
        smooth = np.convolve(per_batch, np.ones(width) / width, mode="valid")
        line, = first.plot(np.arange(len(smooth)) + width, smooth, lw=1, label=name)
        per_epoch = len(c["batch_accuracy"][0])
        first.set_xlim(0, 10 * per_epoch)
        live.plot(np.arange(1, len(c["epoch_accuracy"]) + 1), c["epoch_accuracy"], color=line.get_color(), label=name)
        probe.plot(np.arange(len(c["separability"])), c["separability"], color=line.get_color(), label=name)
    for axes, title, xlabel in ((first, "live classifier, training batches (before each update);\n"
                                 "moving mean over 8 batches, first 10 epochs", "iteration"),
                                (live, "live classifier, epoch mean over training batches", "epoch"),
                                (probe, "separability: fresh linear classifier fitted to\n"
                                 "convergence on the train embeddings, test accuracy", "epoch (0: at init)")):
        axes.axhline(0.5, color="grey", lw=0.8, ls="--")
        axes.set_title(title, fontsize=9)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("modality accuracy")
        axes.set_ylim(0.2, 1.02)
        axes.grid(alpha=0.3)
    probe.legend(fontsize=8, loc="lower left")
    buffer = __import__("io").BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getvalue())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=0, help="0: the program's 50")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"any of {', '.join(RUNS)}")
    parser.add_argument("--runs-dir", default=os.path.join("/tmp", "acmr-modality-game"))
    parser.add_argument("--out", default=os.path.join(RESULTS, "acmr_modality_game.json"))
    parser.add_argument("--png", default=os.path.join(RESULTS, "acmr_modality_game.png"))
    from utils.metrics import DEFAULT_TIES, TIE_RULES
    parser.add_argument("--ties", default=DEFAULT_TIES, choices=TIE_RULES, help="tie rule of the mAP figures")
    args = parser.parse_args(argv)
    from utils.errors import UserError
    names = args.runs.split(",")
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise UserError(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    curves = {}
    for name in names:
        curves[name] = run_one(name, args)
        c = curves[name]
        print(f"{name}: {c['seconds']:.0f} s, final mAP@50 (ties: {args.ties}) avg "
              f"{c['final_map'][TEST_PROTOCOL]['average']:.3f}", flush=True)
    results_io.write_results(args.out, {"seed": args.seed, "runs": curves, "ties": args.ties})
    plot(curves, args.png)

    print("\nModality accuracy (0.5 = chance). live: the trained modality classifier; separability: a fresh "
          "linear classifier fitted to convergence on that epoch's embeddings (test pairs).")
    print("| run | settings | live, batch mean ep 1 / 2 / 5 / last | live on test, end | separability init / ep 1 / 5 / last"
          " | fresh classifier, frozen embeddings, same updates | mAP@50 avg |")
    print("|---|---|---|---|---|---|---|")
    for name, c in curves.items():
        acc, sep = c["epoch_accuracy"], c["separability"]
        pick = lambda values, epochs: " / ".join(f"{values[min(e, len(values) - 1)]:.2f}" for e in epochs)  # noqa: E731
        settings = c["variant"] + "".join(f", {k}={v:g}" for k, v in c["overrides"].items())
        print(f"| {name} | {settings} | {pick(acc, (0, 1, 4, len(acc) - 1))} | {c['live_test'][-1]:.2f} | "
              f"{pick(sep, (0, 1, 5, len(sep) - 1))} | {c['frozen_classifier_test']:.2f} "
              f"({c['classifier_updates']} updates) | {c['final_map'][TEST_PROTOCOL]['average']:.3f} |")
    print(f"\ncurves: {args.out}; plot: {args.png}")
    return curves


if __name__ == "__main__":
    main()
