"""Seconds per SSAH training iteration at MIRFLICKR-25K scale, per step.

n = 10,000 stored training items, batch 128, d = 1,386 tags, c = 24 classes, E = 512,
K = 32, hidden width 4096; ImgNet on 4,096-d feature vectors (feature trunk), so the
figure excludes the CNN-F forward pass. Prints the median of --repeats timed iterations
after --warmup untimed ones (the first call traces the tf.function), plus one
monitoring-loss evaluation per net (the n x n early-stop loss).

    python benchmarks/ssah_step_speed.py [--repeats 10] [--threads 2]

The authors' TF1 program needs about 25 s per TxtNet and 1 s per LabNet iteration on 2
cores (its TxtNet runs the [1, d, 6, 4096] convolution; its losses are computed for all
n rows on the host); targets here: TxtNet <= 1 s, LabNet <= 0.1 s.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra/inter-op threads (0 = all)")
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--variant", default="original", choices=("original", "paper"))
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from models.ssah import FeatureTrunk
    from trainers.ssah import PRESETS, Config, SSAHTrainer

    n, batch, text_dim, classes, image_dim = args.items, 128, 1386, 24, 4096
    rng = np.random.RandomState(0)
    labels = (rng.rand(n, classes) < 0.15).astype(np.float32)
    labels[np.arange(n), rng.randint(0, classes, n)] = 1.0
    texts = (rng.rand(n, text_dim) < 0.01).astype(np.float32)
    images = rng.rand(n, image_dim).astype(np.float32)
    config = Config(bits=32, embed_dim=512, hidden_dim=4096, batch_size=batch, **PRESETS[args.variant])
    trainer = SSAHTrainer(config, labels, text_dim, FeatureTrunk(4096))
    trainer.build((image_dim,))

    def args_for(step, rows):
        return {"lab": (rows, labels[rows]), "dis": (images[rows], texts[rows], labels[rows]),
                "img": (rows, images[rows], labels[rows]), "txt": (rows, texts[rows], labels[rows])}[step]

    print(f"SSAH step time, n={n}, batch={batch}, d={text_dim}, E=512, K=32, "
          f"threads={args.threads or 'all'}, variant={args.variant}")
    print(f"| step | median s/iteration | min | max |\n|---|---|---|---|")
    for step, name in (("lab", "LabNet"), ("dis", "discriminators"), ("img", "ImgNet (features)"),
                       ("txt", "TxtNet")):
        times = []
        for i in range(args.warmup + args.repeats):
            rows = rng.permutation(n)[:batch]
            step_args = args_for(step, rows)
            start = time.perf_counter()
            trainer.step(step, *step_args, learning_rate=1e-4)  # returns floats: the step has finished
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        print(f"| {name} | {statistics.median(times):.4f} | {min(times):.4f} | {max(times):.4f} |", flush=True)
    for net in ("lab", "img", "txt"):
        start = time.perf_counter()
        trainer.monitoring_loss(net)
        print(f"| monitoring loss {net} (once per checked pass) | {time.perf_counter() - start:.3f} | | |")


if __name__ == "__main__":
    main()
