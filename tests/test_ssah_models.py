"""SSAH networks: LRN, the multi-scale fusion block, initialisation, shapes and settings."""
import numpy as np
import pytest
import tensorflow as tf

from models.cnnf import CNNF, GOLDEN_WIDTHS, ConvTrunk, vgg_f_geometry
from models.ssah import (LRN_SETTINGS, Discriminator, FeatureTrunk, ImgNet, LabNet, MultiScaleFusion, TxtNet,
                         legacy_bilinear_matrix, local_response_normalization)
from utils.run import set_seed


def numpy_lrn(x, radius=2, bias=2.0, alpha=1e-4, beta=0.75):
    """TF's LRN over the last axis: x / (bias + alpha * sum of squares in [c - r, c + r])^beta."""
    out = np.empty_like(x)
    channels = x.shape[-1]
    for c in range(channels):
        window = x[..., max(0, c - radius):min(channels, c + radius + 1)]
        out[..., c] = x[..., c] / (bias + alpha * np.sum(window ** 2, axis=-1)) ** beta
    return out


def numpy_legacy_resize(signal, out_size):
    """TF1 bilinear resize of the last axis, align_corners=False, no half-pixel centres."""
    in_size = signal.shape[-1]
    out = np.empty(signal.shape[:-1] + (out_size,), dtype=np.float64)
    for dst in range(out_size):
        src = dst * in_size / out_size
        low = int(np.floor(src))
        high = min(low + 1, in_size - 1)
        frac = src - low
        out[..., dst] = signal[..., low] * (1 - frac) + signal[..., high] * frac
    return out


def numpy_fusion(x, scales):
    """MS block: channels raw, then windows ascending; each avg-pool VALID, * scale, relu, resize."""
    d = x.shape[1]
    channels = [x.astype(np.float64)]
    for window in sorted(scales):
        count = d // window
        pooled = x[:, :count * window].reshape(len(x), count, window).mean(axis=2)
        channels.append(numpy_legacy_resize(np.maximum(pooled * scales[window], 0.0), d))
    return np.stack(channels, axis=-1)


def numpy_joint_fusion(x, windows, kernel, bias):
    """The paper's MS block: each window's averages (VALID) resized back to d, windows ascending,
    fused by one 1x1 convolution (a weight per window, one bias) and relu: (batch, d, 1)."""
    d = x.shape[1]
    resized = []
    for window in sorted(windows):
        count = d // window
        pooled = x[:, :count * window].reshape(len(x), count, window).mean(axis=2)
        resized.append(numpy_legacy_resize(pooled, d))
    fused = np.einsum("bdw,w->bd", np.stack(resized, axis=-1), np.asarray(kernel, np.float64)) + bias
    return np.maximum(fused, 0.0)[..., None]


def test_lrn_matches_the_formula_on_the_channel_axis():
    x = np.random.default_rng(0).normal(0, 30, (5, 40)).astype(np.float32)  # large enough for LRN to act
    got = local_response_normalization(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, numpy_lrn(x.astype(np.float64)), rtol=1e-5)
    assert np.abs(got - x / 2.0 ** 0.75).max() > 1e-3  # the neighbourhood term matters here


def test_lrn_equals_tensorflow_lrn_op_values_and_gradients():
    x = tf.constant(np.random.default_rng(1).normal(0, 40, (6, 4096)).astype(np.float32))

    def tf_op(v):
        return tf.reshape(tf.nn.local_response_normalization(tf.reshape(v, [-1, 1, 1, 4096]), **LRN_SETTINGS), [-1, 4096])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = local_response_normalization(x), tf_op(x)
        weights = tf.constant(np.random.default_rng(2).normal(size=(6, 4096)).astype(np.float32))
        loss_ours, loss_theirs = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss_ours, x).numpy(), tape.gradient(loss_theirs, x).numpy(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("in_size,out_size", [(12, 60), (2, 60), (6, 37), (7, 7), (1, 10)])
def test_legacy_resize_matrix_matches_formula_and_tf1_op(in_size, out_size):
    signal = np.random.default_rng(in_size).normal(size=(3, in_size))
    got = signal @ legacy_bilinear_matrix(in_size, out_size)
    np.testing.assert_allclose(got, numpy_legacy_resize(signal, out_size), rtol=1e-5, atol=1e-6)
    tf1 = tf.compat.v1.image.resize_bilinear(signal.reshape(3, 1, in_size, 1).astype(np.float32), [1, out_size],
                                             align_corners=False, half_pixel_centers=False)
    np.testing.assert_allclose(got, tf1.numpy().reshape(3, out_size), rtol=1e-5, atol=1e-6)
    if in_size > 1 and in_size != out_size:  # TF2's half-pixel resize is a different function
        tf2 = tf.image.resize(signal.reshape(3, 1, in_size, 1), [1, out_size], method="bilinear")
        assert np.abs(tf2.numpy().reshape(3, out_size) - got).max() > 1e-3


@pytest.mark.parametrize("d", [60, 37])
def test_multiscale_fusion_matches_numpy(d):
    rng = np.random.default_rng(d)
    x = (rng.random((4, d)) < 0.3).astype(np.float32) * rng.integers(1, 4, (4, d))
    fusion = MultiScaleFusion()
    fusion(x[:1])
    scales = {50: 0.7, 30: -0.4, 15: 1.3, 10: 0.2, 5: -1.1}  # negative ones are zeroed by the relu
    for window, variable in fusion.scales.items():
        variable.assign(scales[window])
    got = fusion(x).numpy()
    kept = {w: s for w, s in scales.items() if w <= d}
    np.testing.assert_allclose(got, numpy_fusion(x, kept), rtol=1e-5, atol=1e-6)
    assert got.shape == (4, d, 1 + len(kept))
    np.testing.assert_array_equal(got[..., 0], x)  # channel 0 is the raw vector
    window_order = sorted(kept)
    assert np.all(got[..., 1 + window_order.index(30)] == 0) and np.all(got[..., 1 + window_order.index(5)] == 0)


def test_fusion_scalars_are_created_in_the_programs_order():
    fusion = MultiScaleFusion()
    fusion(np.zeros((1, 60), np.float32))
    assert [v.path.split("/")[-1] for v in fusion.weights] == [f"scale_w{w}" for w in (50, 30, 15, 10, 5)]
    assert all(tuple(v.shape) == () for v in fusion.weights)


def test_windows_wider_than_the_text_are_dropped():
    txt = TxtNet(text_dim=10, num_classes=10, bits=8, embed_dim=16, hidden_dim=32)
    feature, hashes, labels = txt(np.ones((3, 10), np.float32))
    assert txt.fusion.windows == (10, 5) and txt.fusion.dropped_windows == (50, 30, 15)
    assert txt.fusion.channels == 3 and tuple(txt.fc1.kernel.shape) == (30, 32)
    assert feature.shape == (3, 16) and hashes.shape == (3, 8) and labels.shape == (3, 10)


@pytest.mark.parametrize("d", [10, 37, 7])
def test_joint_fusion_over_the_papers_windows_matches_numpy(d):
    """Windows 1, 2, 3, 5, 10 and one 1x1 convolution; d = 10 is Wikipedia's text, d = 7 drops window 10."""
    rng = np.random.default_rng(d)
    x = rng.random((5, d)).astype(np.float32) * (rng.random((5, d)) < 0.5)
    fusion = MultiScaleFusion((1, 2, 3, 5, 10), fusion="joint")
    fusion(x[:1])
    kept = tuple(w for w in (1, 2, 3, 5, 10) if w <= d)
    assert fusion.windows == kept and fusion.dropped_windows == tuple(w for w in (10,) if w > d)
    assert fusion.channels == 1 and fusion.scales == {}
    kernel = np.array([0.9, -0.5, 1.2, 0.4, -0.8][:len(kept)], np.float32)
    fusion.fusion_kernel.assign(kernel)
    fusion.fusion_bias.assign(-0.3)
    got = fusion(x).numpy()
    assert got.shape == (5, d, 1)
    np.testing.assert_allclose(got, numpy_joint_fusion(x, kept, kernel, -0.3), rtol=1e-5, atol=1e-6)
    assert 0 < np.mean(got == 0) < 1  # the relu acts on some positions, not all
    # window 1 is the raw vector: with only its weight on, the block is relu(w * x + b)
    fusion.fusion_kernel.assign(np.eye(len(kept), dtype=np.float32)[0] * 2.0)
    fusion.fusion_bias.assign(0.0)
    np.testing.assert_allclose(fusion(x).numpy()[..., 0], 2.0 * x, rtol=1e-6)


def test_joint_fusion_needs_a_window_no_wider_than_the_text():
    with pytest.raises(ValueError, match="wider than the 10-d text"):
        MultiScaleFusion((50, 30), fusion="joint")(np.zeros((1, 10), np.float32))
    with pytest.raises(ValueError, match="fusion must be"):
        MultiScaleFusion(fusion="sum")
    with pytest.raises(ValueError, match="differ"):
        MultiScaleFusion((5, 5))


def test_txtnet_with_joint_fusion_reads_one_channel():
    txt = TxtNet(text_dim=10, num_classes=10, bits=8, embed_dim=16, hidden_dim=32, windows=(1, 2, 3, 5, 10),
                 fusion="joint")
    x = np.random.default_rng(4).random((3, 10)).astype(np.float32)
    feature, hashes, labels = txt(x)
    assert tuple(txt.fc1.kernel.shape) == (10, 32)
    assert [v.path.split("/")[-1] for v in txt.fusion.weights] == ["fusion_kernel", "fusion_bias"]
    fused = txt.fusion(x).numpy()[..., 0]
    expected = np.maximum(fused @ txt.fc1.kernel.numpy() + txt.fc1.bias.numpy(), 0)
    np.testing.assert_allclose(txt.fc1(txt.flatten(txt.fusion(x))).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert feature.shape == (3, 16) and hashes.shape == (3, 8) and labels.shape == (3, 10)


def test_txtnet_first_layer_reads_the_row_major_flattening_of_the_fusion_map():
    txt = TxtNet(text_dim=20, num_classes=4, bits=4, embed_dim=8, hidden_dim=6)
    x = np.random.default_rng(1).random((2, 20)).astype(np.float32)
    txt(x)
    fused = txt.fusion(x).numpy()  # (2, 20, channels)
    kernel = txt.fc1.kernel.numpy().reshape(20, txt.fusion.channels, 6)
    expected = np.maximum(np.einsum("bdc,dco->bo", fused, kernel) + txt.fc1.bias.numpy(), 0)
    np.testing.assert_allclose(txt.fc1(txt.flatten(txt.fusion(x))).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_new_layers_are_normal_0_01_for_weights_and_biases_and_follow_the_seed():
    def build(seed):
        set_seed(seed, deterministic=False)
        net = LabNet(num_classes=24, bits=16, embed_dim=64)
        net(np.zeros((1, 24), np.float32))
        return net
    net = build(5)
    kernel, bias = net.fc1.kernel.numpy(), net.fc1.bias.numpy()
    assert abs(kernel.std() - 0.01) < 5e-4 and abs(kernel.mean()) < 5e-4
    assert abs(bias.std() - 0.01) < 1.5e-3 and np.all(bias != 0)
    np.testing.assert_array_equal(build(5).fc2.kernel.numpy(), net.fc2.kernel.numpy())
    assert not np.array_equal(build(6).fc2.kernel.numpy(), net.fc2.kernel.numpy())
    # one fresh initializer per variable: variables of equal shape still get different values
    d1, d2 = Discriminator(), Discriminator()
    d1(np.zeros((1, 64), np.float32)), d2(np.zeros((1, 64), np.float32))
    assert not np.array_equal(d1.out.kernel.numpy(), d2.out.kernel.numpy())


def test_labnet_outputs_and_activations():
    net = LabNet(num_classes=6, bits=8, embed_dim=12, hidden_dim=20)
    labels = np.eye(6, dtype=np.float32)[[0, 2, 5]]
    feature, hashes, predicted = (t.numpy() for t in net(labels))
    assert feature.shape == (3, 12) and hashes.shape == (3, 8) and predicted.shape == (3, 6)
    assert feature.min() >= 0 and np.abs(hashes).max() < 1 and 0 < predicted.min() and predicted.max() < 1
    hidden = np.maximum(labels @ net.fc1.kernel.numpy() + net.fc1.bias.numpy(), 0)
    expected_feature = np.maximum(numpy_lrn(hidden) @ net.fc2.kernel.numpy() + net.fc2.bias.numpy(), 0)
    np.testing.assert_allclose(feature, expected_feature, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(hashes, np.tanh(feature @ net.hash_head.kernel.numpy() + net.hash_head.bias.numpy()),
                               rtol=1e-4, atol=1e-7)


def test_labnet_sigmoid_setting_is_the_papers_hidden_activation():
    net = LabNet(num_classes=6, bits=8, embed_dim=12, hidden_dim=20, hidden_activation="sigmoid")
    feature, _, _ = net(np.eye(6, dtype=np.float32))
    hidden = 1 / (1 + np.exp(-(np.eye(6) @ net.fc1.kernel.numpy() + net.fc1.bias.numpy())))
    expected = 1 / (1 + np.exp(-(numpy_lrn(hidden) @ net.fc2.kernel.numpy() + net.fc2.bias.numpy())))
    np.testing.assert_allclose(feature.numpy(), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="hidden_activation"):
        LabNet(6, 8, hidden_activation="tanh")


def test_txtnet_applies_lrn_before_the_heads():
    txt = TxtNet(text_dim=20, num_classes=4, bits=4, embed_dim=8, hidden_dim=6)
    x = np.random.default_rng(2).random((2, 20)).astype(np.float32) * 50
    feature, hashes, _ = txt(x)
    expected = np.tanh(numpy_lrn(feature.numpy()) @ txt.hash_head.kernel.numpy() + txt.hash_head.bias.numpy())
    np.testing.assert_allclose(hashes.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_imgnet_on_feature_trunk_and_discriminator_shapes():
    img = ImgNet(FeatureTrunk(out_dim=32), num_classes=5, bits=8, embed_dim=16)
    feature, hashes, predicted = img(np.random.default_rng(0).random((4, 10)).astype(np.float32))
    assert feature.shape == (4, 16) and hashes.shape == (4, 8) and predicted.shape == (4, 5)
    dis = Discriminator(dropout_rate=0.5)
    x = np.ones((64, 16), np.float32)
    np.testing.assert_array_equal(dis(x).numpy(), dis(x, training=False).numpy())
    assert dis(x).shape == (64, 1)
    assert not np.allclose(dis(x, training=True).numpy(), dis(x).numpy())  # dropout acts only when training
    assert [tuple(v.shape) for v in dis.trainable_weights] == [(16, 512), (512,), (512, 256), (256,), (256, 1), (1,)]


@pytest.mark.parametrize("activation,fn", [("relu", lambda v: np.maximum(v, 0)), ("tanh", np.tanh)])
def test_discriminator_hidden_activation(activation, fn):
    dis = Discriminator(hidden=(24, 12), activation=activation)
    x = np.random.default_rng(5).normal(0, 30, (7, 16)).astype(np.float32)
    got = dis(x).numpy()
    hidden = x.astype(np.float64)
    for layer in dis.hidden_layers:
        hidden = fn(hidden @ layer.kernel.numpy() + layer.bias.numpy())
    if activation == "tanh":
        assert hidden.min() < 0  # tanh passes negative values on, where relu would zero them
    np.testing.assert_allclose(got, hidden @ dis.out.kernel.numpy() + dis.out.bias.numpy(), rtol=1e-4, atol=1e-7)
    assert got.shape == (7, 1)
    with pytest.raises(ValueError, match="activation"):
        Discriminator(activation="sigmoid")


def test_cnnf_geometry_gives_6x6_before_fc6_and_fc7_features():
    before_fc6 = ConvTrunk(vgg_f_geometry(GOLDEN_WIDTHS)[:15])
    assert before_fc6(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 6 * 6 * 16)
    trunk = CNNF(widths=GOLDEN_WIDTHS)
    out = trunk(np.random.default_rng(0).normal(0, 50, (2, 224, 224, 3)).astype(np.float32)).numpy()
    assert out.shape == (2, 4096) and out.min() >= 0 and out.max() > 0
    assert [c.spec.index for c in trunk.convs] == [0, 4, 8, 10, 12, 15, 17]
    assert [tuple(c.kernel.shape) for c in trunk.convs] == [
        (11, 11, 3, 8), (5, 5, 8, 16), (3, 3, 16, 16), (3, 3, 16, 16), (3, 3, 16, 16), (6, 6, 16, 64), (1, 1, 64, 4096)]


def test_fc6_and_fc7_are_the_convolution_forward_to_the_bit_with_matmul_gradients():
    """fc6 and fc7 (kernels over the whole input) run as products of the flattenings: outputs
    equal to the convolution's bit for bit, gradients to float32 rounding, and the gradient graph
    holds no convolution gradient with a one-position output (TensorFlow's CPU kernels for those
    run tens of times slower than the forward pass)."""
    trunk = CNNF(widths=GOLDEN_WIDTHS)
    images = tf.constant(np.random.default_rng(1).normal(0, 50, (4, 224, 224, 3)).astype(np.float32))
    trunk(images)
    before_fc6 = ConvTrunk(vgg_f_geometry(GOLDEN_WIDTHS)[:15])
    before_fc6(images)
    for mine, theirs in zip(before_fc6.convs, trunk.convs):
        mine.kernel.assign(theirs.kernel)
        mine.bias.assign(theirs.bias)
    fc6, fc7 = trunk.convs[5:]

    def as_convolutions(pooled):
        x = tf.reshape(pooled, [-1, 6, 6, 16])
        x = tf.nn.relu(tf.nn.conv2d(x, fc6.kernel, [1, 1, 1, 1], "VALID") + fc6.bias)
        return tf.reshape(tf.nn.relu(tf.nn.conv2d(x, fc7.kernel, [1, 1, 1, 1], "VALID") + fc7.bias), [-1, 4096])

    @tf.function
    def outputs_and_gradients(run, conv5):
        with tf.GradientTape() as tape:
            out = run()
            loss = tf.reduce_sum(tf.sin(out))
        return out, tape.gradient(loss, [fc6.kernel, fc7.kernel, conv5.kernel])

    mine, my_grads = outputs_and_gradients(lambda: trunk(images), trunk.convs[4])
    conv, conv_grads = outputs_and_gradients(lambda: as_convolutions(before_fc6(images)), before_fc6.convs[4])
    np.testing.assert_array_equal(mine.numpy(), conv.numpy())
    for got, want in zip(my_grads, conv_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-5 * np.abs(want.numpy()).max())
    graph = outputs_and_gradients.get_concrete_function(lambda: trunk(images), trunk.convs[4]).graph
    fc_kernels = {tuple(fc6.kernel.shape), tuple(fc7.kernel.shape)}
    filter_grads = [tuple(op.outputs[0].shape) for op in graph.get_operations() if op.type == "Conv2DBackpropFilter"]
    input_grads = [tuple(op.inputs[2].shape[1:3]) for op in graph.get_operations() if op.type == "Conv2DBackpropInput"]
    assert len(filter_grads) == 5 and not fc_kernels & set(filter_grads)  # conv1-5 only
    assert (1, 1) not in input_grads


def test_negative_branch_scales_get_no_gradient_and_a_traced_step_works():
    txt = TxtNet(text_dim=60, num_classes=4, bits=4, embed_dim=8, hidden_dim=16)
    x = (np.random.default_rng(3).random((6, 60)) < 0.3).astype(np.float32)
    txt(x[:1])
    for window, value in zip((50, 30, 15, 10, 5), (0.01, -0.01, -0.01, 0.009, -0.003)):
        txt.fusion.scales[window].assign(value)

    @tf.function(input_signature=[tf.TensorSpec((None, 60), tf.float32)])
    def gradients(texts):
        with tf.GradientTape() as tape:
            _, hashes, _ = txt(texts)
            loss = tf.reduce_sum(tf.square(hashes - 0.5))
        return tape.gradient(loss, [txt.fusion.scales[w] for w in (50, 30, 15, 10, 5)])

    grads = [float(g) for g in gradients(tf.constant(x))]
    assert grads[1] == grads[2] == grads[4] == 0.0  # relu(negative * pooled counts) is 0: no gradient
    assert grads[0] != 0.0 and grads[3] != 0.0
