"""Weight files (MatConvNet CNN-F / VGG-19 .mat, Keras VGG19 .h5) and the SSAH original layout."""
import numpy as np
import pytest
import scipy.io

from models.cnnf import CNNF, GOLDEN_WIDTHS, cnnf_from_file, load_cnnf, vgg_f_geometry
from models.original_layout import (DISCRIMINATOR_SCOPES, load_original_ssah_variables,
                                    original_ssah_variables)
from models.ssah import Discriminator, FeatureTrunk, ImgNet, LabNet, TxtNet
from models.vgg19 import VGG19, keras_layer_names, vgg19_from_file, vgg19_geometry
from tests.conftest import load_golden
from utils.errors import UserError

SMALL_CNNF = (4, 8, 8, 8, 8, 16, 32)
SMALL_VGG = (2, 3, 3, 4, 4, 8, 6)


# ----------------------------------------------------------------------------- MatConvNet files

def conv_weights(kernel, bias, old_layout):
    """A conv layer's weights: `filters`/`biases` (old layout) or the cell `weights` = {filters, biases}."""
    if old_layout:
        return {"filters": kernel, "biases": bias}
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = kernel, bias
    return {"weights": cell}


def matconvnet_layers(geometry, rng, old_layout):
    """A MatConvNet `layers` cell array (1 x N of structs) for the geometry, random weights, plus fc8 + softmax."""
    structs, in_channels, kernels = [], 3, []
    for spec in geometry:
        layer = {"name": spec.name or f"{spec.kind}{spec.index}", "type": spec.kind}
        if spec.kind == "conv":
            kernel = rng.normal(0, 0.05, (*spec.size, in_channels, spec.width)).astype(np.float32)
            bias = rng.normal(0, 0.1, (1, spec.width)).astype(np.float32)  # MATLAB row vector
            kernels.append((kernel, bias.ravel()))
            layer.update(conv_weights(kernel, bias, old_layout))
            layer.update(stride=np.array([list(spec.stride)], float), pad=np.array([list(spec.pad)], float))
            in_channels = spec.width
        elif spec.kind == "lrn":
            layer["type"] = "normalize" if old_layout else "lrn"
            layer["param"] = np.array([[5, 2, 1e-4, 0.75]])
        elif spec.kind == "pool":
            layer.update(method="max", pool=np.array([list(spec.size)], float),
                         stride=np.array([list(spec.stride)], float), pad=np.array([list(spec.pad)], float))
        structs.append(layer)
    structs.append({"name": "fc8", "type": "conv", "stride": 1.0, "pad": 0.0,
                    **conv_weights(np.ones((1, 1, in_channels, 3), np.float32), np.zeros((1, 3), np.float32),
                                   old_layout)})
    structs.append({"name": "prob", "type": "softmax"})
    cells = np.empty((1, len(structs)), dtype=object)
    for i, layer in enumerate(structs):
        cells[0, i] = layer
    return cells, kernels


def write_matconvnet(path, geometry, old_layout, mean_image, seed=0, scalar_pads=False):
    cells, kernels = matconvnet_layers(geometry, np.random.default_rng(seed), old_layout)
    if scalar_pads:  # MatConvNet also stores a uniform pad/stride as one number
        for layer in cells.ravel():
            if layer["type"] == "conv" and len(set(np.ravel(layer["pad"]))) == 1:
                layer["pad"], layer["stride"] = float(np.ravel(layer["pad"])[0]), float(np.ravel(layer["stride"])[0])
    normalization = {"averageImage": mean_image, "imageSize": np.array([[224, 224, 3]], float)}
    content = {"layers": cells, "classes": {"name": np.array(["a", "b", "c"], dtype=object)}}
    if old_layout:
        content["normalization"] = normalization
    else:
        content["meta"] = {"normalization": normalization, "inputs": {"name": "input"}}
    scipy.io.savemat(path, content)
    return kernels


def mean_image(seed=1):
    return np.random.default_rng(seed).uniform(90, 130, (224, 224, 3)).astype(np.float32)


@pytest.mark.parametrize("old_layout", [True, False])
def test_load_cnnf_reads_both_layouts(tmp_path, old_layout):
    path = str(tmp_path / "vgg-f.mat")
    mean = mean_image()
    kernels = write_matconvnet(path, vgg_f_geometry(SMALL_CNNF), old_layout, mean, scalar_pads=not old_layout)
    geometry, loaded_mean = load_cnnf(path)
    np.testing.assert_array_equal(loaded_mean, mean)
    assert [s.kind for s in geometry] == [s.kind for s in vgg_f_geometry(SMALL_CNNF)]  # fc8/softmax not read
    convs = [s for s in geometry if s.kind == "conv"]
    assert [s.name for s in convs] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert [s.index for s in convs] == [0, 4, 8, 10, 12, 15, 17]
    for spec, (kernel, bias) in zip(convs, kernels):
        np.testing.assert_array_equal(spec.kernel, kernel)
        np.testing.assert_array_equal(spec.bias, bias)
    assert convs[0].stride == (4, 4) and convs[1].pad == (2, 2, 2, 2) and convs[5].size == (6, 6)
    pools = [s for s in geometry if s.kind == "pool"]
    assert all(p.pad == (0, 1, 0, 1) and p.stride == (2, 2) and p.size == (3, 3) and p.pooling == "max" for p in pools)
    assert [s.lrn for s in geometry if s.kind == "lrn"] == [dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)] * 2

    # the file's geometry runs exactly like the built-in imagenet-vgg-f geometry with the same weights
    model = cnnf_from_file(path)
    reference = CNNF(widths=SMALL_CNNF)
    images = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    reference(images[:1].astype(np.float32))
    for conv, (kernel, bias) in zip(reference.convs, kernels):
        conv.kernel.assign(kernel), conv.bias.assign(bias)
    inputs = model.prepare(images)
    np.testing.assert_allclose(inputs.numpy(), images.astype(np.float32) - mean, rtol=1e-6)
    out = model(inputs).numpy()
    assert out.shape == (2, 32) and out.max() > 0
    np.testing.assert_allclose(out, reference(inputs).numpy(), rtol=1e-5, atol=1e-6)


def test_per_channel_mean_is_broadcast(tmp_path):
    path = str(tmp_path / "vgg-f.mat")
    write_matconvnet(path, vgg_f_geometry(SMALL_CNNF), False, np.array([[[123.0, 117.0, 104.0]]], np.float32))
    _, mean = load_cnnf(path)
    assert mean.shape == (224, 224, 3) and np.all(mean[100, 7] == [123.0, 117.0, 104.0])


def assert_one_line_user_error(call, match):
    with pytest.raises(UserError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_cnnf_file_errors(tmp_path):
    assert_one_line_user_error(lambda: load_cnnf(str(tmp_path / "missing.mat")), "not found")
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"this is not a mat file at all" * 10)
    assert_one_line_user_error(lambda: load_cnnf(str(garbage)), "MATLAB")
    scipy.io.savemat(str(tmp_path / "nolayers.mat"), {"net": np.zeros(3)})
    assert_one_line_user_error(lambda: load_cnnf(str(tmp_path / "nolayers.mat")), "no `layers`")
    nomean = str(tmp_path / "nomean.mat")
    write_matconvnet(nomean, vgg_f_geometry(SMALL_CNNF), True, mean_image())
    content = scipy.io.loadmat(nomean)
    del content["normalization"]
    scipy.io.savemat(nomean, {k: v for k, v in content.items() if not k.startswith("__")})
    assert_one_line_user_error(lambda: load_cnnf(nomean), "no mean image")
    short = str(tmp_path / "short.mat")
    write_matconvnet(short, vgg_f_geometry(SMALL_CNNF)[:12], False, mean_image())
    assert_one_line_user_error(lambda: load_cnnf(short), "conv layers")


# ----------------------------------------------------------------------------- VGG-19

def tiny_keras_vgg19(widths, seed=0):
    """keras.applications' VGG19 architecture and layer names with small widths."""
    import keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((224, 224, 3))
    x = inputs
    for block, depth in enumerate((2, 2, 4, 4, 4)):
        for conv in range(depth):
            x = keras.layers.Conv2D(widths[block], 3, padding="same", activation="relu",
                                    bias_initializer="random_normal", name=f"block{block + 1}_conv{conv + 1}")(x)
        x = keras.layers.MaxPooling2D(2, 2, name=f"block{block + 1}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(widths[5], activation="relu", bias_initializer="random_normal", name="fc1")(x)
    fc2 = keras.layers.Dense(widths[6], activation="relu", bias_initializer="random_normal", name="fc2")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="predictions")(fc2)
    return keras.Model(inputs, outputs), keras.Model(inputs, fc2)


def write_legacy_keras_h5(model, path, include_top=True):
    """The HDF5 layout of keras.applications' downloaded weight files (Keras 2 save_weights)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
        if not include_top:
            names = [n for n in handle.attrs["layer_names"]
                     if (n.decode() if isinstance(n, bytes) else n) not in ("fc1", "fc2", "predictions")]
            handle.attrs["layer_names"] = names


@pytest.mark.slow
def test_vgg19_from_keras_h5_matches_the_keras_network(tmp_path):
    full, up_to_fc2 = tiny_keras_vgg19(SMALL_VGG)
    path = str(tmp_path / "vgg19.h5")
    write_legacy_keras_h5(full, path)
    trunk = vgg19_from_file(path)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    # keras.applications.vgg19.preprocess_input: RGB -> BGR, minus the Caffe channel means
    expected_input = rgb[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(trunk.prepare(rgb).numpy(), expected_input, rtol=1e-6, atol=1e-4)
    expected = up_to_fc2(expected_input).numpy()
    got = trunk(trunk.prepare(rgb)).numpy()
    assert got.shape == (2, SMALL_VGG[-1]) and expected.max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    notop = str(tmp_path / "vgg19_notop.h5")
    write_legacy_keras_h5(full, notop, include_top=False)
    assert_one_line_user_error(lambda: vgg19_from_file(notop), "include_top")


@pytest.mark.slow
def test_vgg19_from_matconvnet_mat_both_layouts(tmp_path):
    geometry = vgg19_geometry(SMALL_VGG)
    rgb = np.random.default_rng(1).integers(0, 256, (1, 224, 224, 3)).astype(np.uint8)
    outputs = []
    for old_layout in (True, False):
        path = str(tmp_path / f"verydeep-{old_layout}.mat")
        kernels = write_matconvnet(path, geometry, old_layout, np.array([[[123.68, 116.779, 103.939]]], np.float32))
        trunk = vgg19_from_file(path)
        assert not trunk.bgr_input and trunk.mean_image.shape == (224, 224, 3)
        assert [c.spec.index for c in trunk.convs][-2:] == [37, 39]
        reference = VGG19(widths=SMALL_VGG)
        reference(np.zeros((1, 224, 224, 3), np.float32))
        for conv, (kernel, bias) in zip(reference.convs, kernels):
            conv.kernel.assign(kernel), conv.bias.assign(bias)
        x = trunk.prepare(rgb)
        np.testing.assert_allclose(x.numpy()[0, 5, 5], rgb[0, 5, 5] - np.array([123.68, 116.779, 103.939]), rtol=1e-5)
        outputs.append(trunk(x).numpy())
        np.testing.assert_allclose(outputs[-1], reference(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs[0], outputs[1])  # same seed: same weights in both layouts
    assert_one_line_user_error(lambda: vgg19_from_file(str(tmp_path / "weights.npz")), "unknown VGG19")
    assert_one_line_user_error(lambda: vgg19_from_file(str(tmp_path / "missing.h5")), "not found")
    assert len(keras_layer_names()) == 18


# ----------------------------------------------------------------------------- original SSAH layout

def build_nets(n_classes, bits, embed, text_dim, widths=GOLDEN_WIDTHS, hidden=4096):
    nets = dict(lab=LabNet(n_classes, bits, embed, hidden_dim=hidden),
                txt=TxtNet(text_dim, n_classes, bits, embed, hidden_dim=hidden),
                img=ImgNet(CNNF(widths=widths), n_classes, bits, embed))
    nets.update({key: Discriminator() for key in DISCRIMINATOR_SCOPES})
    nets["lab"](np.zeros((1, n_classes), np.float32))
    nets["txt"](np.zeros((1, text_dim), np.float32))
    nets["img"](np.zeros((1, 224, 224, 3), np.float32))
    for key in DISCRIMINATOR_SCOPES:
        nets[key](np.zeros((1, embed), np.float32))
    return nets


@pytest.mark.slow
def test_original_layout_round_trip_and_errors():
    small = (2, 2, 2, 2, 2, 4, 8)
    first, second = build_nets(5, 8, 6, 12, small, hidden=16), build_nets(5, 8, 6, 12, small, hidden=16)
    arrays = original_ssah_variables(first)
    assert arrays["Variable"].shape == (1, 5, 1, 16) and arrays["Variable_1"].shape == (1, 16)
    # d = 12 keeps windows 10 and 5 only (Variable_8, _9); the numbering after them moves up by 3
    assert arrays["Variable_8"].shape == arrays["Variable_9"].shape == (1, 1, 1, 1)
    assert arrays["Variable_10"].shape == (1, 12, 3, 16) and arrays["Variable_11"].shape == (1, 16)
    assert arrays["Variable_17"].shape == (5,) and "Variable_18" not in arrays  # label bias, c = 5
    assert arrays["disnet_TL_1/disnet_TL_fc1/Variable"].shape == (1, 6, 1, 512)
    assert arrays["w17"].shape == (1, 1, 4, 8) and arrays["w20"].shape == (1, 1, 8, 6)
    assert sum(v.size for v in arrays.values()) == sum(
        int(np.prod(v.shape)) for net in first.values() for v in net.trainable_weights)
    load_original_ssah_variables(second, arrays)
    x = np.random.default_rng(0).random((3, 12)).astype(np.float32)
    for a, b in zip(first["txt"](x), second["txt"](x)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    wrong = dict(arrays, Variable=np.zeros((1, 5, 1, 17), np.float32))
    assert_one_line_user_error(lambda: load_original_ssah_variables(second, wrong), "shape")
    assert_one_line_user_error(lambda: load_original_ssah_variables(second, {"init/Variable": 0}), "unknown")
    assert_one_line_user_error(lambda: load_original_ssah_variables(second, {"Variable": arrays["Variable"]}),
                               "missing")
    load_original_ssah_variables(second, {"Variable": arrays["Variable"]}, strict=False)
    feature_img = {"img": ImgNet(FeatureTrunk(8), 5, 8, 6)}
    feature_img["img"](np.zeros((1, 3), np.float32))
    assert_one_line_user_error(lambda: original_ssah_variables(feature_img), "CNN-F")
    assert_one_line_user_error(lambda: original_ssah_variables({"lab": LabNet(5, 8)}), "dummy batch")


@pytest.fixture(scope="module")
def golden_arrays():
    return load_golden("ssah-one-step.npz")


def arrays_of(z, prefix):
    return {k[len(prefix):]: v for k, v in z.items() if k.startswith(prefix)}


def test_golden_init_round_trips_and_after_weights_give_the_golden_outputs(golden_arrays):
    z = golden_arrays
    n, bits, embed, classes, d, _ = (int(v) for v in z["config"])
    nets = build_nets(classes, bits, embed, d)
    init = arrays_of(z, "init/")
    assert sorted(load_original_ssah_variables(nets, init)) == sorted(init)
    back = original_ssah_variables(nets)
    assert sorted(back) == sorted(init)
    for name, value in init.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)

    batch = z["batch_index"]
    labels = z["input/train_labels"][batch]
    _, hashes, predicted = nets["lab"](labels)
    assert np.all(np.abs(hashes.numpy()) < 1) and np.all((predicted.numpy() > 0.4) & (predicted.numpy() < 0.6))
    assert not np.allclose(hashes.numpy(), z["lab/hash_after"], atol=1e-3)  # init differs from after_lab

    images = z["input/batch_images_uint8"].astype(np.float32) - z["input/mean_image"]
    inputs = {"lab": labels, "img": images, "txt": z["input/batch_text"]}
    for step in ("lab", "img", "txt"):
        after = arrays_of(z, f"after_{step}/")
        load_original_ssah_variables(nets, after, strict=False)
        feature, hashes, predicted = nets[step](inputs[step])
        for name, value in (("feat", feature), ("hash", hashes), ("label", predicted)):
            np.testing.assert_allclose(value.numpy(), z[f"{step}/{name}_after"], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{step}/{name}_after")
        changed = original_ssah_variables(nets)
        for name, value in after.items():
            np.testing.assert_array_equal(changed[name], value)
