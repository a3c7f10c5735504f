"""Writes the trimmed golden files of tests/golden/ from the full ones:

    python tests/golden/build.py --from ../shared/golden

Keeps the arrays the tests read (codec.KEEP), stores each in the smallest of the exact forms
codec.py describes, and checks that every array decodes bit for bit before it writes a file."""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE))]  # the repository, for utils and tests

from tests.golden import codec  # noqa: E402
from utils.errors import UserError, run_command_line  # noqa: E402
from utils.io import atomic_path  # noqa: E402


def previous_state(key, full):
    """The array `key` (a variable after a step) was before that step: the same variable after
    the latest earlier step that changed it, else its initial value; None when there is none."""
    for prefixes in (("after_lab/", "after_dis/", "after_img/", "after_txt/"),
                     ("step0/after/", "step1/after/", "step2/after/")):
        for at, prefix in enumerate(prefixes):
            if key.startswith(prefix):
                name = key[len(prefix):]
                for earlier in reversed(prefixes[:at]):
                    if earlier + name in full:
                        return earlier + name
                return "init/" + name if "init/" + name in full else None
    return None


def find_op_seed(value, graph_seed, tries=200):
    """The op seed with which tf.random_normal(stddev=0.01) under `graph_seed` drew `value`."""
    head = value.ravel()[:8]
    for op_seed in range(tries):
        if np.array_equal(codec.seeded_normal(head.shape, graph_seed, op_seed, codec.NORMAL_STDDEV), head):
            return op_seed
    return None


def encode(name, full):
    """{stored name: array} for the kept arrays of the full file `name` (a dict)."""
    stored = {}
    for key in sorted(k for k in full if codec.kept(name, k)):
        value = full[key]
        if (name, key) in codec.SYNTHETIC_IMAGES:
            recipe = codec.SYNTHETIC_IMAGES[name, key]
            if np.array_equal(codec.synthetic_images(full["input/labels"], *recipe), value):
                stored.update({key + "~images": np.array(recipe), key + "~sha256": codec.sha256(value)})
                continue
            print(f"{name}: {key} is not the recipe's; stored as it is")
        if value.dtype == np.float32 and key.startswith("init/") and name in codec.NORMAL_GRAPH_SEED:
            graph_seed = codec.NORMAL_GRAPH_SEED[name]
            op_seed = find_op_seed(value, graph_seed)
            if op_seed is not None and np.array_equal(
                    codec.seeded_normal(value.shape, graph_seed, op_seed, codec.NORMAL_STDDEV), value):
                stored.update({key + "~normal": np.array([graph_seed, op_seed, codec.NORMAL_STDDEV]),
                               key + "~shape": np.array(value.shape), key + "~sha256": codec.sha256(value)})
                continue
        base = previous_state(key, full)
        if base is not None and value.dtype == np.float32 and full[base].shape == value.shape:
            difference, fix_at, fix_ulps = codec.delta(value, full[base])
            stored.update({key + "~delta": difference, key + "~base": np.array(base), key + "~fix_at": fix_at,
                           key + "~fix_ulps": fix_ulps})
        elif value.dtype == np.float32 and value.size >= codec.PLANES_FROM:
            stored.update({key + "~planes": codec.planes(value), key + "~shape": np.array(value.shape)})
        else:
            stored[key] = value
    return stored


def check(name, full, stored):
    decoded = codec.decode(stored, name)
    expected = sorted(k for k in full if codec.kept(name, k))
    if sorted(decoded) != expected:
        raise UserError(f"{name}: decodes to other arrays than it keeps: {sorted(set(decoded) ^ set(expected))}")
    for key in expected:
        ours, theirs = decoded[key], full[key]
        if ours.dtype != theirs.dtype or ours.shape != theirs.shape or ours.tobytes() != theirs.tobytes():
            raise UserError(f"{name}: {key} does not decode to the full file's array")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="folder of the full golden files")
    parser.add_argument("--to", default=HERE, help="folder to write the trimmed files to (default: tests/golden)")
    args = parser.parse_args(argv)
    for name in codec.KEEP:
        path = os.path.join(args.source, name)
        if not os.path.exists(path):
            raise UserError(f"{path} is missing; pass --from the folder that holds {', '.join(codec.KEEP)}")
        with np.load(path) as z:
            full = {key: z[key] for key in z.files}
        stored = encode(name, full)
        check(name, full, stored)
        target = os.path.join(args.to, name)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **stored)
        print(f"{target}: {sum(codec.kept(name, k) for k in full)} of {len(full)} arrays, "
              f"{os.path.getsize(path) / 1e6:.1f} MB -> {os.path.getsize(target) / 1e6:.1f} MB")


if __name__ == "__main__":
    run_command_line(main)
