"""Seconds per SSAH update of each step, per precision, against the machine's own matmul rate.

MIRFLICKR-25K scale: n = 10,000 stored training items, d = 1,386 tags, c = 24 classes,
E = 512, K = 32, hidden width 4096. --trunk features: every step (LabNet, discriminators,
ImgNet on 4,096-d feature vectors, TxtNet) at batch 128, plus one monitoring-loss
evaluation per net (the n x n early-stop loss). --trunk cnnf: the two steps the trunk
changes (discriminators: CNN-F forward; ImgNet: CNN-F forward and backward) on 224 x 224 x 3
uint8 images through the full-width CNN-F (random weights, mean subtraction included), batch
32. Each (trunk, precision) pair gets a fresh trainer; each step is timed as the median of
--repeats updates after --warmup untimed ones (the first call traces the tf.function).

Each step's floating-point operations are counted by TensorFlow's profiler on the step's
traced graph (forward, backward and the n-row loss terms; the optimizer's elementwise work is
not counted), so GFLOP/s = GFLOP / median seconds, and "of matmul" is that rate as a fraction
of a large float32 matmul's rate measured in the same run (the practical limit of the
machine for this arithmetic). The speed-up column is float32 seconds / mixed_bfloat16 seconds.
bfloat16 is fast only where the hardware has it (x86: avx512_bf16 or amx_bf16; GPUs): the
first lines print the CPU's relevant flags and whether TensorFlow's oneDNN kernels are on
(TF_ENABLE_ONEDNN_OPTS, read when TensorFlow starts).

    python benchmarks/ssah_step_speed.py --precision float32,mixed_bfloat16 --trunk features,cnnf
    python benchmarks/ssah_step_speed.py --trunk features --profile    # + each step's costliest ops
    python benchmarks/ssah_step_speed.py --jit ...                      # XLA (GPUs)

--profile adds, per step of the first precision, where its time goes: TensorFlow's profiler
trace of --repeats updates, each op's time summed by kind (forward matmul, gradient matmuls
as TensorFlow's MatMul gradient writes them with transposed operands, optimizer updates, ...).
"""
import argparse
import collections
import glob
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import results_io  # noqa: E402  (early: it notes the commit the run starts from)

# x86 flags that decide 16-bit matmul speed (plus the float32 ones for reference)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni",
             "avx512_vnni")
STEPS = {"features": (("lab", "LabNet"), ("dis", "discriminators"), ("img", "ImgNet"), ("txt", "TxtNet")),
         "cnnf": (("dis", "discriminators"), ("img", "ImgNet"))}


def cpu_flags():
    """{flag: present} for CPU_FLAGS from /proc/cpuinfo ({} where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return {}
    present = set(line.split(":", 1)[-1].split())
    return {flag: flag in present for flag in CPU_FLAGS} if present else {}


def matmul_rate(tf, size, dtype, repeats=3):
    """GFLOP/s of a size x size x size matmul (median of `repeats` after one untimed)."""
    a = tf.cast(tf.random.stateless_normal([size, size], seed=[1, 2]), dtype)
    product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, a), tf.float32)))
    float(product())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(product())
        times.append(time.perf_counter() - start)
    return 2.0 * size ** 3 / statistics.median(times) / 1e9


def graph_flops(graph):
    """Floating-point operations of a traced graph's live ops (those its outputs or stateful ops
    depend on: TensorFlow prunes the rest, e.g. the gradient of an input that needs none), each
    by TensorFlow's registered flop statistics (MatMul, Conv2D and their gradients, ...)."""
    from tensorflow.python.framework import ops as tf_ops
    pending = [t.op for t in graph.outputs] + list(graph.control_outputs)
    live = set()
    while pending:
        op = pending.pop()
        if op in live:
            continue
        live.add(op)
        pending += [t.op for t in op.inputs] + list(op.control_inputs)
    total = 0
    for op in live:
        try:
            total += tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
        except ValueError:  # no flop statistics registered for this op type
            pass
    return int(total)


def op_kind(name):
    """A readable kind for a traced op "scope/.../op:Type" (the profile's grouping). TensorFlow's
    own MatMul gradient runs under the "gradient_tape" scope; a product outside it (a forward,
    or a custom gradient's) counts as plain MatMul."""
    scope, _, kind = name.rpartition(":")
    if kind == "_FusedMatMul":
        return "_FusedMatMul (forward with bias)"
    if kind == "MatMul" and "gradient_tape" in scope:
        operand = "transposed kernel" if scope.endswith("/MatMul") else "transposed input"
        return f"MatMul of TensorFlow's gradient ({operand})"
    if kind in ("MatMul", "Conv2D", "_FusedConv2D") and "gradient_tape" not in scope:
        return f"{kind} (forward, or a Dense gradient product)" if kind == "MatMul" else f"{kind} (forward)"
    return kind


def profile_ops(tf, run, repeats):
    """{op kind: seconds per update} from a profiler trace of `repeats` calls of run()."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    logdir = tempfile.mkdtemp(prefix="ssah_step_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(repeats):
        run()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1], "rb") as f:
        space.ParseFromString(f.read())
    seconds = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor's op threads
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and "::" not in name:  # "scope/op:Type", not the executor's own events
                    seconds[op_kind(name)] += event.duration_ps / 1e12 / repeats
    return dict(seconds.most_common())


def time_steps(tf, np, trainer, steps, args_for, rng, n, batch, args):
    """[{step, median_seconds, seconds, gflop, ...}] for each (step, name) in steps."""
    out = []
    for step, name in steps:
        times = []
        for i in range(args.warmup + args.repeats):
            step_args = args_for(step, rng.permutation(n)[:batch])
            start = time.perf_counter()
            float(trainer.step(step, *step_args, learning_rate=1e-4)["loss"])  # read: the step has finished
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        graph = next(f for key, f in trainer._concrete.items() if key[0] == step).graph
        median = statistics.median(times)
        record = {"step": name, "median_seconds": median, "items_per_second": batch / median,
                  "seconds": times, "gflop": graph_flops(graph) / 1e9}
        if args.profile_now:
            record["profile_seconds_by_op"] = profile_ops(tf, lambda: float(trainer.step(
                step, *args_for(step, rng.permutation(n)[:batch]), learning_rate=1e-4)["loss"]), args.repeats)
        out.append(record)
        print(f"  {name}: {median:.4f} s, {record['gflop']:.2f} GFLOP", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="float32,mixed_bfloat16",
                        help="comma-separated: float32, mixed_bfloat16, mixed_float16 (GPUs)")
    parser.add_argument("--trunk", default="features,cnnf", help="comma-separated: features, cnnf")
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: 128 features, 32 cnnf)")
    parser.add_argument("--repeats", type=int, default=5, help="timed updates per step")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per step (the first traces)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra/inter-op threads (0 = all)")
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--variant", default="original", choices=("original", "paper"))
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the reference float32 matmul")
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--profile", action="store_true", help="per step of the first precision: time by op kind")
    parser.add_argument("--out", default="", help="results JSON (default: benchmarks/results/ssah_step_speed.json)")
    args = parser.parse_args()
    precisions = [p for p in args.precision.split(",") if p]
    trunks = [t for t in args.trunk.split(",") if t]
    unknown = sorted(set(trunks) - set(STEPS))
    if unknown:
        parser.error(f"unknown trunk {unknown}; choose from {', '.join(STEPS)}")
    args.out = args.out or results_io.results_path("ssah_step_speed.json")

    import numpy as np
    import tensorflow as tf
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from benchmarks.readme_figures import ssah_step_precision
    from models.cnnf import CNNF
    from models.ssah import FeatureTrunk
    from trainers.ssah import IMAGENET_MEAN_RGB, PRESETS, Config, SsahModel
    from utils.distribute import check_precision, dtype_policy
    for precision in precisions:
        check_precision(precision)

    gpu = bool(tf.config.list_logical_devices("GPU"))
    flags = cpu_flags()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow's default for this CPU)")
    print(f"CPU: {results_io.cpu_model()}, {os.cpu_count()} cores; flags: "
          + ", ".join(f"{flag} {'yes' if on else 'NO'}" for flag, on in flags.items())
          + f"; TF_ENABLE_ONEDNN_OPTS={onednn}; device: {'GPU ' + ', '.join(results_io.gpu_names()) if gpu else 'CPU'}")
    matmul = {"size": args.matmul_size,
              "float32_gflops": matmul_rate(tf, args.matmul_size, tf.float32),
              "bfloat16_gflops": matmul_rate(tf, args.matmul_size, tf.bfloat16)}
    print(f"{args.matmul_size}^3 matmul: float32 {matmul['float32_gflops']:.1f} GFLOP/s, "
          f"bfloat16 {matmul['bfloat16_gflops']:.1f} GFLOP/s", flush=True)

    n, text_dim, classes, image_dim = args.items, 1386, 24, 4096
    rng = np.random.RandomState(0)
    labels = (rng.rand(n, classes) < 0.15).astype(np.float32)
    labels[np.arange(n), rng.randint(0, classes, n)] = 1.0
    texts = (rng.rand(n, text_dim) < 0.01).astype(np.float32)
    features = rng.rand(n, image_dim).astype(np.float32)
    mean = tf.constant(np.asarray(IMAGENET_MEAN_RGB, np.float32))
    runs = []
    for trunk_name in trunks:
        cnnf = trunk_name == "cnnf"
        batch = args.batch or (32 if cnnf else 128)
        # CNN-F: a pool of random images stands in for the n stored ones (only batches are read)
        images = rng.randint(0, 256, (2 * batch, 224, 224, 3)).astype(np.uint8) if cnnf else features
        for index, precision in enumerate(precisions):
            config = Config(bits=32, embed_dim=512, hidden_dim=4096, batch_size=batch, jit=args.jit,
                            precision=precision, **PRESETS[args.variant])
            with dtype_policy(precision):
                trunk = CNNF() if cnnf else FeatureTrunk(image_dim)
            trainer = SsahModel(config, labels, text_dim, trunk,
                                  (lambda x: tf.cast(x, tf.float32) - mean) if cnnf else None)
            trainer.build(images.shape[1:])

            def args_for(step, rows):
                image_rows = images[rows % len(images)]
                return {"lab": (rows, labels[rows]), "dis": (image_rows, texts[rows], labels[rows]),
                        "img": (rows, image_rows, labels[rows]), "txt": (rows, texts[rows], labels[rows])}[step]
            print(f"trunk {trunk_name}, batch {batch}, {precision}:", flush=True)
            args.profile_now = args.profile and index == 0
            run = {"trunk": trunk_name, "precision": precision, "batch": batch,
                   "steps": time_steps(tf, np, trainer, STEPS[trunk_name], args_for, rng, n, batch, args)}
            if not cnnf and index == 0:  # float32 buffers in every precision: timed once
                run["monitoring"] = []
                for net, name in (("lab", "LabNet"), ("img", "ImgNet"), ("txt", "TxtNet")):
                    start = time.perf_counter()
                    trainer.monitoring_loss(net)
                    run["monitoring"].append({"net": name, "seconds": time.perf_counter() - start})
            runs.append(run)
    results = {"settings": {"precision": precisions, "trunk": trunks, "repeats": args.repeats,
                            "warmup": args.warmup, "threads": args.threads, "items": n, "variant": args.variant,
                            "jit": args.jit, "text_dim": text_dim, "embed_dim": 512, "bits": 32},
               "cpu_flags": flags, "onednn": onednn, "device": "GPU" if gpu else "CPU", "matmul": matmul,
               "runs": runs}
    print(ssah_step_precision("", results))
    results_io.write_results(args.out, results)


if __name__ == "__main__":
    main()
