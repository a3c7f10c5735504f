"""Seconds per SSAH training iteration and training throughput (items/s), per step.

MIRFLICKR-25K scale: n = 10,000 stored training items, d = 1,386 tags, c = 24 classes,
E = 512, K = 32, hidden width 4096. --trunk features (default): ImgNet on 4,096-d feature
vectors, batch 128, plus one monitoring-loss evaluation per net (the n x n early-stop
loss). --trunk cnnf: ImgNet on 224 x 224 x 3 uint8 images through CNN-F (random weights;
mean subtraction included), batch 32 by default: the discriminator and ImgNet steps then
carry the CNN-F forward (and backward) pass. Prints the median of --repeats timed
iterations after --warmup untimed ones (the first call traces the tf.function);
items/s = batch / median seconds.

    python benchmarks/ssah_step_speed.py [--trunk features|cnnf] [--repeats 10] [--threads 2]
                                         [--jit] [--mixed-precision]   (the GPU settings)

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

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trunk", default="features", choices=("features", "cnnf"))
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: 128 features, 32 cnnf)")
    parser.add_argument("--repeats", type=int, default=0, help="timed iterations (default: 10 features, 3 cnnf)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed iterations (default: 2 features, 1 cnnf)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra/inter-op threads (0 = all)")
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--variant", default="original", choices=("original", "paper"))
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--mixed-precision", action="store_true", help="Keras mixed_float16")
    parser.add_argument("--out", default="", help="results JSON (default: benchmarks/results/ssah_step_speed_TRUNK.json)")
    args = parser.parse_args()
    cnnf = args.trunk == "cnnf"
    args.batch = args.batch or (32 if cnnf else 128)
    args.repeats = args.repeats or (3 if cnnf else 10)
    args.warmup = args.warmup or (1 if cnnf else 2)
    args.out = args.out or results_io.results_path(f"ssah_step_speed_{args.trunk}.json")

    import numpy as np
    import tensorflow as tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from models.cnnf import CNNF
    from models.ssah import FeatureTrunk
    from trainers.ssah import IMAGENET_MEAN_RGB, PRESETS, Config, SsahModel
    from utils.distribute import dtype_policy

    n, batch, text_dim, classes, image_dim = args.items, args.batch, 1386, 24, 4096
    rng = np.random.RandomState(0)
    labels = (rng.rand(n, classes) < 0.15).astype(np.float32)
    labels[np.arange(n), rng.randint(0, classes, n)] = 1.0
    texts = (rng.rand(n, text_dim) < 0.01).astype(np.float32)
    config = Config(bits=32, embed_dim=512, hidden_dim=4096, batch_size=batch, jit=args.jit,
                    mixed_precision=args.mixed_precision, **PRESETS[args.variant])
    with dtype_policy(args.mixed_precision):
        trunk = CNNF() if cnnf else FeatureTrunk(4096)
    if cnnf:  # a pool of random images stands in for the n stored ones (only batches are read)
        pool = rng.randint(0, 256, (2 * batch, 224, 224, 3)).astype(np.uint8)
        mean = tf.constant(np.asarray(IMAGENET_MEAN_RGB, np.float32))
        trainer = SsahModel(config, labels, text_dim, trunk, lambda x: tf.cast(x, tf.float32) - mean)
        trainer.build((224, 224, 3))

        def image_rows(rows):
            return pool[rows % len(pool)]
    else:
        images = rng.rand(n, image_dim).astype(np.float32)
        trainer = SsahModel(config, labels, text_dim, trunk)
        trainer.build((image_dim,))

        def image_rows(rows):
            return images[rows]

    def args_for(step, rows):
        return {"lab": (rows, labels[rows]), "dis": (image_rows(rows), texts[rows], labels[rows]),
                "img": (rows, image_rows(rows), labels[rows]), "txt": (rows, texts[rows], labels[rows])}[step]

    print(f"SSAH step time, trunk={args.trunk}, n={n}, batch={batch}, d={text_dim}, E=512, K=32, "
          f"threads={args.threads or 'all'}, variant={args.variant}, jit={args.jit}, "
          f"mixed_precision={args.mixed_precision}, device={'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'}")
    print(f"| step | median s/iteration | items/s | min | max |\n|---|---|---|---|---|")
    results = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "steps": [], "monitoring": []}
    for step, name in (("lab", "LabNet"), ("dis", f"discriminators ({args.trunk})"),
                       ("img", f"ImgNet ({args.trunk})"), ("txt", "TxtNet")):
        times = []
        for i in range(args.warmup + args.repeats):
            rows = rng.permutation(n)[:batch]
            step_args = args_for(step, rows)
            start = time.perf_counter()
            losses = trainer.step(step, *step_args, learning_rate=1e-4)
            float(losses["loss"])  # read: the step has finished
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        median = statistics.median(times)
        results["steps"].append({"step": name.split(" (")[0], "median_seconds": median,
                                 "items_per_second": batch / median, "seconds": times})
        print(f"| {name} | {median:.4f} | {batch / median:.0f} | {min(times):.4f} | {max(times):.4f} |", flush=True)
    for net, name in (() if cnnf else (("lab", "LabNet"), ("img", "ImgNet"), ("txt", "TxtNet"))):
        start = time.perf_counter()
        trainer.monitoring_loss(net)
        seconds = time.perf_counter() - start
        results["monitoring"].append({"net": name, "seconds": seconds})
        print(f"| monitoring loss {net} (once per checked pass) | {seconds:.3f} | | | |")
    results_io.write_results(args.out, results)


if __name__ == "__main__":
    main()
