"""Peak memory and throughput of streaming a full-size image file through utils.data.pipeline.

    python benchmarks/stream_memory.py [--images 20000] [--batch 128] [--dir /tmp]

Writes a synthetic DCMH-layout HDF5 file (n x 224 x 224 x 3 uint8, ~3 GB for
20,000 images; written in chunks with the same layout prepare.py writes),
then, in a fresh process, streams every row through `image_batches` (mean image
subtracted, float32) and prints the peak resident memory (target: under 2 GB,
whatever n is) and items/second. The file is deleted afterwards unless --keep.
The streaming pass reads a file just written, so it is mostly served from the
page cache: the figure is the pipeline's cost, not the disk's.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

IMAGE_BYTES = 224 * 224 * 3


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_file(path, n, chunk=500):
    import h5py
    from prepare import create_dcmh_datasets, write_image_rows
    rng = np.random.RandomState(0)
    labels = np.zeros((n, 24), np.uint8)
    labels[np.arange(n), rng.randint(0, 24, n)] = 1
    texts = (rng.rand(n, 64) < 0.1).astype(np.uint8)
    ramp = (np.arange(224)[:, None, None] + np.arange(224)[None, :, None] + np.arange(3)).astype(np.uint8)
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        images = create_dcmh_datasets(f, n, texts, labels)
        for first in range(0, n, chunk):
            rows = np.arange(first, min(first + chunk, n))
            block = (ramp[None] + rows[:, None, None, None].astype(np.uint8))  # distinct per image
            write_image_rows(images, first, block)
        f["mean_image"] = np.full((3, 224, 224), 127.5, np.float32)
    seconds = time.perf_counter() - start
    print(f"wrote {n} images ({n * IMAGE_BYTES / 2**30:.2f} GiB) to {path} in {seconds:.1f} s "
          f"({n / seconds:.0f} images/s); writer peak RSS {peak_rss_mb():.0f} MB")


def stream(path, batch, parallel_reads, prefetch):
    from utils.data import load_dataset
    from utils.data.pipeline import image_batches
    import tensorflow as tf  # noqa: F401  (imported before the baseline is taken)

    data = load_dataset("flickr", path, seed=0, split_sizes=(1, 1))
    rows = np.arange(len(data.images))
    baseline = rss_mb()
    sampled = [baseline]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            sampled.append(rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    checksum, count = 0.0, 0
    start = time.perf_counter()
    for images, batch_rows in image_batches(data.images, rows, batch, data.mean_image, shuffle_seed=0,
                                            parallel_reads=parallel_reads, prefetch=prefetch):
        checksum += float(images[:, 0, 0, 0].numpy().sum())  # touch the values
        count += int(batch_rows.shape[0])
    seconds = time.perf_counter() - start
    done.set()
    assert count == len(rows), (count, len(rows))
    print(f"streamed {count} images (batch {batch}, shuffled, {parallel_reads} parallel reads, prefetch "
          f"{prefetch}) in {seconds:.1f} s: {count / seconds:.0f} images/s, "
          f"{count * IMAGE_BYTES / 2**20 / seconds:.0f} MB/s of uint8 pixels")
    print(f"RSS after loading the dataset and TensorFlow: {baseline:.0f} MB; sampled peak while streaming "
          f"{max(sampled):.0f} MB; process peak (ru_maxrss) {peak_rss_mb():.0f} MB "
          f"(file size {count * IMAGE_BYTES / 2**20:.0f} MB)")
    print(json.dumps({"images": count, "file_mb": count * IMAGE_BYTES / 2**20, "baseline_rss_mb": baseline,
                      "peak_rss_mb": max(sampled), "ru_maxrss_mb": peak_rss_mb(), "seconds": seconds,
                      "images_per_second": count / seconds}))  # last line: read by the parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--parallel-reads", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic file")
    parser.add_argument("--out", default="", help="results JSON (default: benchmarks/results/stream_memory_IMAGES.json)")
    parser.add_argument("--stream-only", default="", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.stream_only:
        stream(args.stream_only, args.batch, args.parallel_reads, args.prefetch)
        return
    need = args.images * IMAGE_BYTES * 1.05 + 2**28
    free = shutil.disk_usage(args.dir).free
    if free < need:
        print(f"not enough disk in {args.dir}: {free / 2**30:.1f} GiB free, {need / 2**30:.1f} GiB needed; "
              f"pass --dir with more room or fewer --images")
        sys.exit(1)
    path = os.path.join(args.dir, f"stream_memory_{os.getpid()}.h5")
    try:
        write_file(path, args.images)
        # A fresh process, so the peak RSS counts the streaming only.
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--stream-only", path,
                                "--batch", str(args.batch), "--parallel-reads", str(args.parallel_reads),
                                "--prefetch", str(args.prefetch)], check=True, stdout=subprocess.PIPE, text=True)
        print(child.stdout, end="")
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        settings = {"batch": args.batch, "parallel_reads": args.parallel_reads, "prefetch": args.prefetch}
        results_io.write_results(args.out or results_io.results_path(f"stream_memory_{args.images}.json"),
                                 {**figures, "settings": settings})
    finally:
        if not args.keep and os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
