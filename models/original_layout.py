"""Mapping between the authors' SSAH variable layout and our Keras variables.

The program builds every layer as a convolution, so its dense kernels are stored as
[1, in, 1, out] (first layers over a [batch, 1, in, 1] input), [1, 1, in, out] (later
layers) or [1, d, 6, out] (TxtNet's first layer over the (d, 6) MS map, which equals our
dense layer over its row-major flattening), and some biases as [1, out]. Names are the
program's TensorFlow 1 variable names: Variable, Variable_1, ... in creation order (LabNet,
then TxtNet's MS scales and layers), w{i} / bias{i} for the trunk's MatConvNet layer i, and
the discriminators' scopes below.

nets: {"lab": LabNet, "img": ImgNet (CNNF trunk), "txt": TxtNet, "dis_img": D_I,
"dis_img_label": D_I', "dis_txt": D_T, "dis_txt_label": D_T'}; any subset. Build the nets
first (call them once) so their variables exist.
"""
import numpy as np

from utils.errors import UserError

# Our discriminator keys -> the program's variable scope.
DISCRIMINATOR_SCOPES = {"dis_img": ("disnet_IL", "disnet_IL"), "dis_img_label": ("disnet_IL_1", "disnet_IL"),
                        "dis_txt": ("disnet_TL", "disnet_TL"), "dis_txt_label": ("disnet_TL_1", "disnet_TL")}
IMG_HEAD_INDEXES = (20, 21, 22)  # fc8, hash, label: the program continues the MatConvNet layer numbering


def _dense_entries(layer, kernel_name, kernel_shape, bias_name, bias_shape):
    return [(kernel_name, layer.kernel, kernel_shape), (bias_name, layer.bias, bias_shape)]


def _size(layer):
    return tuple(int(v) for v in layer.kernel.shape)


def variable_table(nets):
    """[(program name, our variable, program shape)] for the nets given."""
    missing_build = [key for key, net in nets.items() if not net.built]
    if missing_build:
        raise UserError(f"networks {missing_build} have no variables yet; call each net on a dummy batch first")
    table = []
    if "lab" in nets:
        lab = nets["lab"]
        layers = [lab.fc1, lab.fc2, lab.hash_head, lab.label_head]
        for i, layer in enumerate(layers):
            fan_in, units = _size(layer)
            kernel_shape = (1, fan_in, 1, units) if i == 0 else (1, 1, fan_in, units)
            table += _dense_entries(layer, f"Variable{'' if i == 0 else '_' + str(2 * i)}", kernel_shape,
                                    f"Variable_{2 * i + 1}", (1, units))
    if "txt" in nets:
        txt = nets["txt"]
        if txt.fusion.fusion != "per_window":
            raise UserError("the program's layout exists only for the program's per-window MS fusion; "
                            f"this TxtNet fuses with {txt.fusion.fusion!r}")
        number = 8
        for window in txt.fusion.windows:  # creation order 50, 30, 15, 10, 5
            table.append((f"Variable_{number}", txt.fusion.scales[window], (1, 1, 1, 1)))
            number += 1
        for i, layer in enumerate([txt.fc1, txt.fc2, txt.hash_head, txt.label_head]):
            fan_in, units = _size(layer)
            if i == 0:
                kernel_shape = (1, txt.fusion.length, txt.fusion.channels, units)
            else:
                kernel_shape = (1, 1, fan_in, units)
            bias_shape = (1, units) if i < 2 else (units,)
            table += _dense_entries(layer, f"Variable_{number}", kernel_shape, f"Variable_{number + 1}", bias_shape)
            number += 2
    if "img" in nets:
        img = nets["img"]
        convs = getattr(img.trunk, "convs", None)
        if convs is None:
            raise UserError("the program's layout exists only for the CNN-F trunk (models/cnnf.py); "
                            f"this ImgNet has a {type(img.trunk).__name__} trunk")
        for conv in convs:
            table.append((f"w{conv.spec.index}", conv.kernel, _size(conv)))
            table.append((f"bias{conv.spec.index}", conv.bias, (conv.spec.width,)))
        for index, layer in zip(IMG_HEAD_INDEXES, [img.fc8, img.hash_head, img.label_head]):
            fan_in, units = _size(layer)
            table += _dense_entries(layer, f"w{index}", (1, 1, fan_in, units), f"bias{index}", (units,))
    for key, (scope, prefix) in DISCRIMINATOR_SCOPES.items():
        if key not in nets:
            continue
        dis = nets[key]
        layers = list(dis.hidden_layers) + [dis.out]
        suffixes = [f"fc{i + 1}" for i in range(len(dis.hidden_layers))] + ["out"]
        for i, (layer, suffix) in enumerate(zip(layers, suffixes)):
            fan_in, units = _size(layer)
            kernel_shape = (1, fan_in, 1, units) if i == 0 else (1, 1, fan_in, units)
            base = f"{scope}/{prefix}_{suffix}"
            table += _dense_entries(layer, f"{base}/Variable", kernel_shape, f"{base}/Variable_1", (units,))
    return table


def load_original_ssah_variables(nets, arrays, strict=True):
    """Assigns the program's arrays (name -> ndarray) to our variables.

    strict: every variable of the given nets must be in `arrays`. Names in `arrays` that
    belong to no given net are always an error (a typo or a net left out of `nets`).
    Returns the list of names assigned.
    """
    table = variable_table(nets)
    known = {name for name, _, _ in table}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise UserError(f"unknown SSAH variable names {unknown[:5]}{'...' if len(unknown) > 5 else ''}: "
                        "pass the matching nets (lab, img, txt, dis_*) or strip prefixes like 'init/'")
    missing = [name for name in known if name not in arrays]
    if strict and missing:
        raise UserError(f"SSAH variables {sorted(missing)[:5]} are missing; pass all of them or strict=False")
    assigned = []
    for name, variable, program_shape in table:
        if name not in arrays:
            continue
        value = np.asarray(arrays[name], dtype=np.float32)
        if tuple(value.shape) != tuple(program_shape):
            raise UserError(f"SSAH variable {name} has shape {value.shape}, expected {program_shape} "
                            "(check the nets' sizes: classes, bits, embed width, text length, CNN-F widths)")
        variable.assign(value.reshape(tuple(variable.shape)))
        assigned.append(name)
    return assigned


def original_ssah_variables(nets):
    """Our variables in the program's layout: {program name: ndarray}."""
    return {name: np.asarray(variable.numpy()).reshape(program_shape)
            for name, variable, program_shape in variable_table(nets)}
