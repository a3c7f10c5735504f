"""VGG-19 trunk up to fc7 (4096, relu), the paper's stronger image backbone for SSAH.

Weights come from either
- a Keras .h5 file in the keras.applications VGG19 layout (layers block1_conv1 ..
  block5_conv4, fc1, fc2; the legacy HDF5 layout of vgg19_weights_tf_dim_ordering_tf_kernels.h5,
  root attribute `layer_names`, possibly under `model_weights`). That network expects BGR
  input minus the Caffe channel means, which `prepare` applies; or
- MatConvNet's imagenet-vgg-verydeep-19.mat (old or new layout, see models/cnnf.py): RGB
  input minus the file's average image.
fc1/fc6 is a VALID 7x7 convolution here (a dense layer over the row-major flattening of
the 7 x 7 x 512 map, which is how Keras' Flatten + Dense lays it out).
"""
import os

import numpy as np

from models.cnnf import IMAGE_SIZE, ConvTrunk, LayerSpec, _mean_image, read_matconvnet_layers
from utils.errors import UserError

BLOCK_DEPTHS = (2, 2, 4, 4, 4)
DEFAULT_WIDTHS = (64, 128, 256, 512, 512, 4096, 4096)  # block1..block5 convs, fc6 (fc1), fc7 (fc2)
KERAS_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.vgg19.preprocess_input ("caffe")


def keras_layer_names():
    """The keras.applications VGG19 names of our 18 conv layers, in order."""
    names = [f"block{b + 1}_conv{i + 1}" for b, depth in enumerate(BLOCK_DEPTHS) for i in range(depth)]
    return names + ["fc1", "fc2"]


def vgg19_geometry(widths=DEFAULT_WIDTHS, image_size=IMAGE_SIZE):
    """VGG-19 layers as MatConvNet numbers them (conv1_1 = 0 ... relu7), no weights."""
    if len(widths) != 7:
        raise UserError(f"VGG-19 needs 7 widths (blocks 1-5, fc6, fc7), got {len(widths)}: {widths}")
    if image_size % 32:
        raise UserError(f"VGG-19 input size must be a multiple of 32, got {image_size}")
    specs, index = [], 0
    for block, depth in enumerate(BLOCK_DEPTHS):
        for conv in range(depth):
            specs.append(LayerSpec("conv", index, f"conv{block + 1}_{conv + 1}", (3, 3), int(widths[block]),
                                   pad=(1, 1, 1, 1)))
            specs.append(LayerSpec("relu", index + 1))
            index += 2
        specs.append(LayerSpec("pool", index, size=(2, 2), stride=(2, 2)))
        index += 1
    fc_size = image_size // 32
    specs += [LayerSpec("conv", index, "fc6", (fc_size, fc_size), int(widths[5])), LayerSpec("relu", index + 1),
              LayerSpec("conv", index + 3, "fc7", (1, 1), int(widths[6])), LayerSpec("relu", index + 4)]
    return specs  # index + 2 is MatConvNet's dropout6 in some files; the numbering follows the new file


class VGG19(ConvTrunk):
    """VGG-19 trunk: (batch, 224, 224, 3) prepared image -> (batch, fc7 width) after relu.

    Without `geometry` (see the loaders) a random init with `widths`.
    """

    def __init__(self, geometry=None, widths=DEFAULT_WIDTHS, mean_image=None, bgr_input=False, **kwargs):
        super().__init__(geometry if geometry is not None else vgg19_geometry(widths), mean_image, bgr_input,
                         **kwargs)


def _read_keras_h5(path):
    """{layer name: [arrays in weight order]} from a legacy Keras HDF5 weights/model file."""
    import h5py
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise UserError(f"cannot open {path} as HDF5 ({error}); pass keras.applications' VGG19 .h5 weights")
    with handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise UserError(f"{path} is not in the Keras HDF5 weights layout (no `layer_names`); pass "
                            "vgg19_weights_tf_dim_ordering_tf_kernels.h5 or a Keras 2 (legacy) save_weights file")
        weights = {}
        for raw_name in group.attrs["layer_names"]:
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            layer = group[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in layer.attrs.get("weight_names", [])]
            weights[name] = [np.asarray(layer[w], dtype=np.float32) for w in weight_names]
    return weights


def load_vgg19_keras_h5(path, image_size=IMAGE_SIZE):
    """Geometry with weights from a keras.applications VGG19 .h5 (with top: fc1/fc2 needed)."""
    if not os.path.isfile(path):
        raise UserError(f"VGG19 weight file not found: {path}; pass keras.applications' "
                        "vgg19_weights_tf_dim_ordering_tf_kernels.h5 (the include_top file)")
    weights = _read_keras_h5(path)
    missing = [name for name in keras_layer_names() if len(weights.get(name, [])) != 2]
    if missing:
        raise UserError(f"{path} lacks VGG19 layers {missing[:4]}: use the include_top weight file "
                        "(fc1 and fc2 are needed), not the _notop one")
    convs = [weights[name] for name in keras_layer_names()]
    block_starts = np.cumsum((0,) + BLOCK_DEPTHS[:-1])
    widths = [convs[start][0].shape[-1] for start in block_starts] + [convs[-2][0].shape[-1], convs[-1][0].shape[-1]]
    geometry = vgg19_geometry(widths, image_size)
    for spec, (kernel, bias) in zip([s for s in geometry if s.kind == "conv"], convs):
        if kernel.ndim == 2:  # fc1/fc2 dense kernels: [h * w * c, out] in row-major (h, w, c) order
            rows = spec.size[0] * spec.size[1]
            if kernel.shape[0] % rows:
                raise UserError(f"{path}: {spec.name} kernel {kernel.shape} does not fit a "
                                f"{image_size}x{image_size} input")
            kernel = kernel.reshape(*spec.size, kernel.shape[0] // rows, kernel.shape[-1])
        spec.kernel, spec.bias = kernel, bias.ravel()
    return geometry


def load_vgg19_mat(path):
    """(geometry with weights, mean image) from MatConvNet imagenet-vgg-verydeep-19.mat."""
    geometry, mat = read_matconvnet_layers(path, stop_after_convs=18)
    return geometry, _mean_image(mat, path)


def vgg19_from_file(path, image_size=IMAGE_SIZE):
    """A built VGG19 trunk from a .h5 (Keras, BGR input) or .mat (MatConvNet, RGB input) file."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".mat":
        geometry, mean_image = load_vgg19_mat(path)
        model = VGG19(geometry, mean_image=mean_image)
    elif extension in (".h5", ".hdf5"):
        mean = np.broadcast_to(np.asarray(KERAS_CAFFE_MEAN_BGR, np.float32), (image_size, image_size, 3))
        model = VGG19(load_vgg19_keras_h5(path, image_size), mean_image=mean, bgr_input=True)
    else:
        raise UserError(f"unknown VGG19 weight file type {extension!r} ({path}); "
                        "pass a Keras .h5 or a MatConvNet .mat")
    model.build((None, image_size, image_size, 3))
    return model
