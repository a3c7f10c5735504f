"""The golden files the repository carries (tests/golden/, built by tests/golden/build.py from the
full files of ../shared/golden): they decode to exact copies of the arrays the tests read, and
their inputs are the real data they say they are. The checks against the full files skip when
the shared folder is absent; the golden tests themselves run from tests/golden/."""
import os

import numpy as np
import pytest
import scipy.io

from tests.conftest import GOLDEN, load_golden, shared_path
from tests.golden import codec
from tests.golden.build import encode


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(codec.KEEP))
def test_trimmed_file_decodes_to_the_full_files_arrays_bit_for_bit(name):
    with np.load(shared_path("golden", name)) as z:
        full = {key: z[key] for key in z.files}
    trimmed = codec.load(os.path.join(GOLDEN, name))
    assert sorted(trimmed) == sorted(k for k in full if codec.kept(name, k))
    for key, value in trimmed.items():
        assert value.dtype == full[key].dtype and value.shape == full[key].shape, key
        assert value.tobytes() == full[key].tobytes(), key


def test_golden_files_stay_small():
    sizes = {name: os.path.getsize(os.path.join(GOLDEN, name)) for name in codec.KEEP}
    assert sum(sizes.values()) <= 25e6, sizes


def test_exact_forms_round_trip_where_float32_rounding_bites():
    """A delta across zero, onto tiny values and onto a value twice its base does not come back
    exactly from base + delta alone; the stored corrections restore every bit."""
    rng = np.random.default_rng(0)
    base = (rng.normal(size=(50, 40)) * 0.01).astype(np.float32)
    after = (base - np.float32(3e-4) * np.sign(rng.normal(size=base.shape))).astype(np.float32)
    base[0, :4] = [1.0, -1e-30, 0.0, 3e-4]
    after[0, :4] = [3e-8, 7e-38, -0.0, 7.0000005e-4]
    full = {"init/w": base, "after_lab/w": after, "after_dis/w": after * np.float32(1.5),
            "init/big": rng.normal(size=(300, 300)).astype(np.float32), "lab/loss": np.float32(2.5)}
    stored = encode("ssah-one-step.npz", full)
    assert {"after_lab/w~delta", "after_dis/w~delta", "init/big~planes"} <= set(stored)
    assert str(stored["after_dis/w~base"]) == "after_lab/w"  # each update from the state before it
    assert len(stored["after_lab/w~fix_at"]) > 0  # the case this test is about happened
    decoded = codec.decode(stored)
    assert sorted(decoded) == sorted(full)
    for key, value in full.items():
        assert np.asarray(value).tobytes() == decoded[key].tobytes(), key


def test_an_input_drawn_again_differently_is_an_error_not_another_input():
    stored = {"init/w~normal": np.array([2718, 5, 0.01]), "init/w~shape": np.array([3, 4]),
              "init/w~sha256": codec.sha256(np.zeros((3, 4), np.float32))}
    with pytest.raises(AssertionError, match="init/w drawn again from its seed differs"):
        codec.decode(stored)


def test_acmr_golden_inputs_are_the_real_wikipedia_batches_in_file_order():
    from trainers import acmr
    golden = load_golden("acmr-three-steps.npz")
    mat = scipy.io.loadmat(shared_path("data", "wikipedia", "wikiData.mat"))
    config = acmr.Config()
    batches = acmr.epoch_batches(len(mat["I_tr"]), config.batch_size, config.shuffle, config.drop_last,
                                 config.seed, 0)
    assert len(batches) == 2173 // 64 == 33
    for step in range(3):
        rows = batches[step]
        np.testing.assert_array_equal(rows, np.arange(64 * step, 64 * step + 64))
        np.testing.assert_array_equal(golden[f"step{step}/input/img"], mat["I_tr"][rows].astype(np.float32))
        np.testing.assert_array_equal(golden[f"step{step}/input/txt"], mat["T_tr"][rows].astype(np.float32))
        np.testing.assert_array_equal(golden[f"step{step}/input/labels"], mat["L_tr"][rows].reshape(-1))
