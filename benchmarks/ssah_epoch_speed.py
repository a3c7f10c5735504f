"""One whole SSAH epoch of the original schedule with 224 x 224 images, for each way the images
can be stored: in memory, and an HDF5 file in each storage kind (contiguous, chunked per image,
chunked 16 items a chunk, gzip-compressed), both of h5py's item axes for the contiguous one.

The setting of issue 22: MIRFLICKR-25K's real tags and labels (its first --items rows, from
../shared/data; synthetic when absent) with made random images, CNN-F of reduced channels
8/16/24/16/16/64/4096, E 512, K 32, batch 128, the original schedule with the program's early
stop, batches drawn by the trainer. Every storage kind starts from the same trainer state (one
warm-up update of each step first, which also traces them), so the epochs are the same
arithmetic and differ only in how the images are read.

Prints, per storage kind: the epoch's seconds and ratio to the in-memory epoch; per step its
updates and mean seconds per update; the monitoring checks; the image reads (made in a
background thread while updates run); and, on the same batch in the same run, the CNN-F trunk's
own forward + backward (ImgNet) and forward (discriminators) time and the method's all-n
discriminator term of the ImgNet step, against which each ImgNet update is set.

    python benchmarks/ssah_epoch_speed.py [--items 1000] [--kinds memory,contiguous,...] [--threads 2]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

WIDTHS = (8, 16, 24, 16, 16, 64, 4096)
KINDS = {  # name -> (h5py storage kind, items on h5py's first axis) or None: in memory
    "memory": None,
    "contiguous items-first": ("contiguous", True),
    "contiguous items-last": ("contiguous", False),
    "chunked per image": ("chunked per image", True),
    "chunked (16 items a chunk)": ("chunked", True),
    "compressed (gzip)": ("compressed", True),
}


def tags_and_labels(items):
    """The first `items` rows of MIRFLICKR-25K's YAll and LAll (float32), or synthetic ones."""
    import numpy as np
    import scipy.io
    folder = os.path.join(results_io.REPO, "..", "shared", "data", "mirflickr25k")
    if os.path.isdir(folder):
        texts = scipy.io.loadmat(os.path.join(folder, "mirflickr25k-yall.mat"))["YAll"][:items]
        labels = scipy.io.loadmat(os.path.join(folder, "mirflickr25k-lall.mat"))["LAll"][:items]
        return texts.astype(np.float32), labels.astype(np.float32), "MIRFLICKR-25K"
    rng = np.random.RandomState(0)
    labels = (rng.rand(items, 24) < 0.15).astype(np.float32)
    labels[np.arange(items), rng.randint(0, 24, items)] = 1
    return (rng.rand(items, 1386) < 0.01).astype(np.float32), labels, "synthetic"


def median_seconds(fn, repeats=3):
    fn()  # traces
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000, help="training items (the issue: 1,000)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--schedule", default="original")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, of: " + ", ".join(KINDS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="results JSON (default: benchmarks/results/ssah_epoch_speed.json)")
    args = parser.parse_args()
    args.out = args.out or results_io.results_path("ssah_epoch_speed.json")
    kinds = [k.strip() for k in args.kinds.split(",")]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose of {list(KINDS)}")

    import h5py
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from losses import ssah as L
    from models.cnnf import CNNF
    from trainers.ssah import IMAGENET_MEAN_RGB, PRESETS, STEP_NAMES, Config, EpochLoop, SsahModel
    from utils.data import dcmh

    n = args.items
    texts, labels, tag_source = tags_and_labels(n)
    images = np.random.RandomState(0).randint(0, 256, (n, 224, 224, 3)).astype(np.uint8)
    config = Config(bits=32, embed_dim=512, batch_size=args.batch, schedule=args.schedule, **PRESETS["original"])
    mean = tf.constant(np.asarray(IMAGENET_MEAN_RGB, np.float32))

    def preprocess(x):
        return tf.cast(x, tf.float32) - mean

    def new_trainer():
        tf.keras.utils.set_random_seed(0)
        trainer = SsahModel(config, labels, texts.shape[1], CNNF(widths=WIDTHS), preprocess, seed=0)
        trainer.build((224, 224, 3))
        return trainer

    print(f"SSAH epoch, schedule {args.schedule}, {n} items ({tag_source} tags and labels, made 224 x 224 images), "
          f"CNN-F {'/'.join(map(str, WIDTHS))}, E 512, K 32, batch {args.batch}, threads {args.threads}", flush=True)
    folder = tempfile.mkdtemp(prefix="ssah_epoch_")
    results = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "tag_source": tag_source,
               "kinds": {}}
    warm_rows = np.arange(args.batch) % n
    for kind in kinds:
        if KINDS[kind] is None:
            source = images
        else:
            storage, items_first = KINDS[kind]
            path = os.path.join(folder, f"images{len(results['kinds'])}.h5")
            with h5py.File(path, "w") as f:
                dcmh.write_images(f, "images", images, items_first, storage)
            source = dcmh.HDF5Images(path, "images", n)
        trainer = new_trainer()
        for step in STEP_NAMES:  # warm-up: traces each step (the same state for every kind)
            inputs = {"lab": (warm_rows, labels[warm_rows]),
                      "dis": (images[warm_rows], texts[warm_rows], labels[warm_rows]),
                      "img": (warm_rows, images[warm_rows], labels[warm_rows]),
                      "txt": (warm_rows, texts[warm_rows], labels[warm_rows])}[step]
            float(trainer.step(step, *inputs, learning_rate=1e-4)["loss"])
        spent = {step: [] for step in STEP_NAMES}
        monitoring, reads = [], []
        real_step, real_monitor = trainer.step, trainer.monitoring_loss

        def timed_step(name, *inputs, learning_rate, real_step=real_step, spent=spent):
            start = time.perf_counter()
            losses = real_step(name, *inputs, learning_rate=learning_rate)
            float(losses["loss"])  # finished
            spent[name].append(time.perf_counter() - start)
            return losses

        def timed_monitor(net, real_monitor=real_monitor, monitoring=monitoring):
            start = time.perf_counter()
            value = real_monitor(net)
            monitoring.append(time.perf_counter() - start)
            return value
        trainer.step, trainer.monitoring_loss = timed_step, timed_monitor
        if KINDS[kind] is not None:
            real_read = source.__getitem__

            class TimedSource:  # the reads the loop makes, timed
                shape, ndim, dtype = source.shape, source.ndim, source.dtype

                def __getitem__(self, rows, real_read=real_read, reads=reads):
                    start = time.perf_counter()
                    values = real_read(rows)
                    reads.append(time.perf_counter() - start)
                    return values
            source = TimedSource()
        loop = EpochLoop(trainer, config, (source, texts, labels))
        start = time.perf_counter()
        loop.run_epoch(0)
        seconds = time.perf_counter() - start
        entry = {"epoch_seconds": seconds, "read_plan": None if KINDS[kind] is None else dcmh.HDF5Images(
                     path, "images", n).read_plan,
                 "steps": {step: {"updates": len(t), "mean_seconds": float(np.mean(t)) if t else None,
                                  "total_seconds": float(np.sum(t))} for step, t in spent.items()},
                 "monitoring_seconds": float(np.sum(monitoring)), "monitoring_checks": len(monitoring),
                 "reads": len(reads), "read_seconds": float(np.sum(reads)),
                 "read_seconds_per_batch": float(np.mean(reads)) if reads else 0.0}
        results["kinds"][kind] = entry
        print(f"{kind}: epoch {seconds:.1f} s ({entry['read_plan'] or 'no reads'}; reads {entry['read_seconds']:.1f} s "
              f"in {len(reads)} batches), " + ", ".join(
                  f"{STEP_NAMES[s]} {v['updates']} x {v['mean_seconds']:.3f} s" for s, v in entry["steps"].items()
                  if v["updates"]) + f", monitoring {entry['monitoring_seconds']:.1f} s", flush=True)

    # the trunk's own work on one batch, and the ImgNet step's all-n discriminator term, same run
    trunk = trainer.nets["img"].trunk
    batch = tf.constant(images[np.arange(args.batch) % n])

    @tf.function
    def trunk_forward_backward():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(trunk(preprocess(batch), training=True))
        return tape.gradient(loss, trunk.trainable_variables)

    @tf.function
    def trunk_forward():
        return trunk(preprocess(batch))

    discriminator, stored = trainer.nets["dis_img"], trainer.buffers["feat_I"]

    @tf.function
    def all_n_discriminator_term():
        with tf.GradientTape() as tape:
            loss = L.adversarial_loss(discriminator(stored, training=True), 1.0)
        return tape.gradient(loss, discriminator.trainable_variables)
    reference = {"trunk_forward_backward": median_seconds(trunk_forward_backward),
                 "trunk_forward": median_seconds(trunk_forward),
                 "all_n_discriminator_term": median_seconds(all_n_discriminator_term)}
    results["reference"] = reference
    img_reference = reference["trunk_forward_backward"] + reference["all_n_discriminator_term"]
    print(f"\nreference on one batch: CNN-F forward + backward {reference['trunk_forward_backward']:.3f} s, "
          f"forward {reference['trunk_forward']:.3f} s; the ImgNet step's all-n discriminator term "
          f"{reference['all_n_discriminator_term']:.3f} s")
    memory_epoch = results["kinds"].get("memory", {}).get("epoch_seconds")
    print("| images | epoch (s) | vs in memory | reads (s) | ImgNet update (s) | vs trunk f+b + all-n term "
          "| discriminator update (s) | vs trunk forward |\n|---|---|---|---|---|---|---|---|")
    for kind, entry in results["kinds"].items():
        img, dis = entry["steps"]["img"]["mean_seconds"], entry["steps"]["dis"]["mean_seconds"]
        entry["vs_memory"] = entry["epoch_seconds"] / memory_epoch if memory_epoch else None
        entry["img_vs_reference"] = img / img_reference if img else None
        entry["dis_vs_trunk_forward"] = dis / reference["trunk_forward"] if dis else None
        print(f"| {kind} | {entry['epoch_seconds']:.1f} | "
              + (f"{entry['vs_memory']:.2f}x" if entry["vs_memory"] else "") + f" | {entry['read_seconds']:.1f} | "
              + (f"{img:.3f} | {entry['img_vs_reference']:.2f}x" if img else " | ")
              + (f" | {dis:.3f} | {entry['dis_vs_trunk_forward']:.2f}x |" if dis else " | | |"))
    results_io.write_results(args.out, results)
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    os.rmdir(folder)


if __name__ == "__main__":
    main()
