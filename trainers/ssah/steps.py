"""SsahModel: the nets, the stored buffers, the optimizers and the four update steps
(LabNet, discriminators, ImgNet, TxtNet), each ONE tf.GradientTape update of a batch."""
import numpy as np
import tensorflow as tf

from losses import ssah as L
from models.ssah import Discriminator, ImgNet, LabNet, TxtNet
from trainers.ssah.config import STEP_NAMES, check_network_settings
from utils import distribute
from utils.data import pipeline
from utils.optim import DynamicLossScale, TF1Adam


_to_float = distribute.float32


def _scatter_rows(variable, rows, values):
    return variable.scatter_nd_update(rows[:, None], values)


class SsahModel:
    """Nets, stored buffers, optimizers and the four update steps.

    nets: "lab", "img", "txt", "dis_img", "dis_txt" and, without shared label
    discriminators, "dis_img_label", "dis_txt_label" (D_I', D_T' of the program).
    Buffers (n rows, one per training item): F, G, H (image, text, label hashes),
    feat_I, feat_T, feat_L (semantic features), pred_I, pred_T, pred_L (label predictions).
    """

    def __init__(self, config, train_labels, text_dim, trunk, image_preprocess=None, seed=0, strategy=None,
                 text_preprocess=None):
        """strategy: a tf.distribute strategy (None: one device); create `trunk` under its scope
        and under distribute.dtype_policy(config.precision)."""
        self.config = config
        self.strategy = strategy
        self.text_preprocess = text_preprocess or _to_float
        with distribute.scope(strategy), distribute.dtype_policy(config.precision):
            self._create(train_labels, text_dim, trunk, image_preprocess, seed)

    def _create(self, train_labels, text_dim, trunk, image_preprocess, seed):
        config = self.config
        self.labels = tf.constant(np.asarray(train_labels, np.float32))
        self.num_items, self.num_classes = (int(s) for s in self.labels.shape)
        self.bits, self.embed_dim = config.bits, config.embed_dim
        self.batch_size = min(config.batch_size, self.num_items)
        self.image_preprocess = image_preprocess or _to_float
        check_network_settings(config, text_dim)

        c, k, e = self.num_classes, self.bits, self.embed_dim
        self.nets = {
            "lab": LabNet(c, k, e, hidden_dim=config.hidden_dim, hidden_activation=config.labnet_activation,
                          name="lab_net"),
            "img": ImgNet(trunk, c, k, e, name="img_net"),
            "txt": TxtNet(text_dim, c, k, e, hidden_dim=config.hidden_dim, windows=config.ms_windows,
                          fusion=config.ms_fusion, name="txt_net"),
        }
        dis_names = ["dis_img", "dis_txt"] + ([] if config.share_label_discriminators
                                              else ["dis_img_label", "dis_txt_label"])
        for name in dis_names:
            self.nets[name] = Discriminator(tuple(config.discriminator_hidden), config.discriminator_dropout,
                                            config.discriminator_activation, name=name)
        self.rng = tf.random.Generator.from_seed(seed)

        def buffer(name, width):
            return tf.Variable(self.rng.normal([self.num_items, width]), trainable=False, name=name)

        # The program starts the stored arrays as random normal.
        self.buffers = {name: buffer(name, k) for name in ("F", "G", "H")}
        self.buffers.update({name: buffer(name, e) for name in ("feat_I", "feat_T", "feat_L")})
        self.buffers.update({name: buffer(name, c) for name in ("pred_I", "pred_T", "pred_L")})
        self.unified_codes = tf.Variable(tf.zeros([self.num_items, k]), trainable=False, name="B")

        if config.shared_adam_counter:
            shared = TF1Adam(name="adam_generators")
            self.optimizers = {"lab": shared, "img": shared, "txt": shared}
        else:
            self.optimizers = {net: TF1Adam(name=f"adam_{net}") for net in ("lab", "img", "txt")}
        self.optimizers["dis"] = TF1Adam(name="adam_discriminators")
        # float16: one loss scale per step (their losses differ by orders of magnitude: sums over
        # n x batch vs means)
        self.loss_scales = ({step: DynamicLossScale(name=f"loss_scale_{step}") for step in STEP_NAMES}
                            if distribute.needs_loss_scaling(config.precision) else {})
        self._compiled = {}
        self._concrete = {}  # (step, input shapes and dtypes) -> its traced graph
        self.accumulators = {step: [] for step in STEP_NAMES}  # see step()

    # ----------------------------------------------------------------- building
    def build(self, image_shape):
        """Creates every variable (one dummy call per net) and the optimizers' slots."""
        with distribute.scope(self.strategy):
            self.nets["lab"](tf.zeros([1, self.num_classes]))
            self.nets["img"](tf.zeros((1,) + tuple(image_shape)))
            self.nets["txt"](tf.zeros([1, self.nets["txt"].text_dim]))
            for name in self.discriminator_names:
                self.nets[name](tf.zeros([1, self.embed_dim]))
            for step in ("lab", "img", "txt", "dis"):
                self.optimizers[step].build(self.step_variables(step))

    @property
    def discriminator_names(self):
        return [name for name in self.nets if name.startswith("dis_")]

    def label_discriminator(self, modality):
        """D_I' / D_T' (the program's separate label branch) or D_I / D_T when shared."""
        name = f"dis_{modality}_label"
        return self.nets[name] if name in self.nets else self.nets[f"dis_{modality}"]

    def step_variables(self, step):
        """The variables a step updates (its optimizer's var_list)."""
        if step == "dis":
            return [v for name in self.discriminator_names for v in self.nets[name].trainable_variables]
        variables = list(self.nets[step].trainable_variables)
        if step in ("img", "txt") and self.config.generator_steps_move_discriminators and self.config.delta:
            variables += self.nets[f"dis_{step}"].trainable_variables
        return variables

    # ----------------------------------------------------------------- losses
    def similarity(self, batch_labels):
        """n x batch slice of S: scale where the stored item shares a label with the batch item."""
        shared = tf.matmul(self.labels, batch_labels, transpose_b=True) > 0
        return tf.cast(shared, tf.float32) * self.config.similarity_scale

    def pairwise(self, stored, batch, similarity):
        fn = L.pairwise_squared if self.config.pairwise_loss == "squared" else L.pairwise_nll
        return fn(stored, batch, similarity)

    def _write(self, names, batch_index, values):
        """Stores a batch's rows; under a strategy, the whole global batch on every device."""
        batch_index, *values = distribute.all_gather([batch_index, *values])
        distribute.synchronized_updates([(self.buffers[name], _scatter_rows, (batch_index, value))
                                         for name, value in zip(names, values)])

    def _outputs(self, net, inputs):
        """(feature, hash, label prediction) of a net, in float32 (mixed precision computes in 16 bits)."""
        return tuple(_to_float(x) for x in self.nets[net](inputs, training=True))

    def _supervised_terms(self, feature, hashes, predicted, batch_labels, similarity):
        """The four terms every modality's loss shares (against the stored LABEL buffers)."""
        cfg = self.config
        return {
            "pair_feature": cfg.alpha * self.pairwise(self.buffers["feat_L"], feature, similarity),
            "pair_hash": cfg.gamma * self.pairwise(self.buffers["H"], hashes, similarity),
            "quantisation": cfg.beta * L.quantisation_loss(hashes),
            "label": cfg.eta * L.label_loss(batch_labels, predicted),
        }

    def _apply(self, step, tape, loss, learning_rate):
        """Gradient of the global batch's loss (each replica's loss is its share; the shares'
        gradients are summed) and the update; under mixed_float16, of scale * loss."""
        variables = self.step_variables(step)
        loss_scale = self.loss_scales.get(step)
        if loss_scale is None:
            gradients = distribute.all_reduce_sum(tape.gradient(loss, variables))
            self.optimizers[step].apply_gradients(zip(gradients, variables), learning_rate)
            return
        gradients = distribute.all_reduce_sum(tape.gradient(loss, variables, output_gradients=loss_scale.scale))
        gradients, finite = loss_scale.unscale(gradients)
        self.optimizers[step].apply_gradients(zip(gradients, variables), learning_rate, apply_if=finite)

    # ----------------------------------------------------------------- the four steps
    def lab_step_fn(self, batch_index, batch_labels, learning_rate):
        similarity = self.similarity(batch_labels)
        with tf.GradientTape() as tape:
            feature, hashes, predicted = self._outputs("lab", batch_labels)
            self._write(("feat_L", "H", "pred_L"), batch_index,
                        (tf.stop_gradient(feature), tf.stop_gradient(hashes), tf.stop_gradient(predicted)))
            terms = self._supervised_terms(feature, hashes, predicted, batch_labels, similarity)
            loss = tf.add_n(list(terms.values()))
        self._apply("lab", tape, loss, learning_rate)
        return {"loss": loss, **terms}

    def discriminator_logits(self, image_features, text_features, label_features):
        return (self.nets["dis_img"](image_features, training=True),
                self.nets["dis_txt"](text_features, training=True),
                self.label_discriminator("img")(label_features, training=True),
                self.label_discriminator("txt")(label_features, training=True))

    def dis_step_fn(self, batch_images, batch_texts, batch_labels, learning_rate):
        image_features = self.nets["img"](self.image_preprocess(batch_images))[0]
        text_features = self.nets["txt"](self.text_preprocess(batch_texts))[0]
        label_features = self.nets["lab"](batch_labels)[0]
        with tf.GradientTape() as tape:
            logits = self.discriminator_logits(image_features, text_features, label_features)
            loss = distribute.replica_share(L.discriminator_loss(*logits))  # a mean over the batch
        self._apply("dis", tape, loss, learning_rate)
        correct = [tf.cast(logits[0] < 0, tf.float32), tf.cast(logits[1] < 0, tf.float32),
                   tf.cast(logits[2] > 0, tf.float32), tf.cast(logits[3] > 0, tf.float32)]
        accuracy = distribute.replica_share(tf.reduce_mean(tf.concat(correct, axis=0)))
        return {"loss": loss, "accuracy": accuracy}

    def _modality_step(self, modality, batch_index, inputs, batch_labels, learning_rate):
        hash_name, feat_name, pred_name = {"img": ("F", "feat_I", "pred_I"),
                                           "txt": ("G", "feat_T", "pred_T")}[modality]
        similarity = self.similarity(batch_labels)
        with tf.GradientTape() as tape:
            feature, hashes, predicted = self._outputs(modality, inputs)
            self._write((feat_name, hash_name, pred_name), batch_index,
                        (tf.stop_gradient(feature), tf.stop_gradient(hashes), tf.stop_gradient(predicted)))
            terms = self._supervised_terms(feature, hashes, predicted, batch_labels, similarity)
            if self.config.adversarial_to_generators:
                fed = feature
            elif modality == "img":   # the program feeds all n stored image features ...
                fed = self.buffers[feat_name]
            else:                     # ... but only the batch's text features (before the update)
                fed = tf.stop_gradient(feature)
            # A mean over the batch rows, or over all n stored rows (the same on every replica):
            # either way each replica holds 1/replicas of it (the other terms are sums over rows).
            adversarial = L.adversarial_loss(self.nets[f"dis_{modality}"](fed, training=True), 1.0)
            terms["adversarial"] = self.config.delta * distribute.replica_share(adversarial)
            loss = tf.add_n(list(terms.values()))
        self._apply(modality, tape, loss, learning_rate)
        return {"loss": loss, **terms}

    def img_step_fn(self, batch_index, batch_images, batch_labels, learning_rate):
        return self._modality_step("img", batch_index, self.image_preprocess(batch_images), batch_labels,
                                   learning_rate)

    def txt_step_fn(self, batch_index, batch_texts, batch_labels, learning_rate):
        return self._modality_step("txt", batch_index, self.text_preprocess(batch_texts), batch_labels,
                                   learning_rate)

    def step(self, name, *args, learning_rate):
        """Runs one update of step `name` (lab, dis, img, txt) as a compiled tf.function and
        returns its losses as tensors: nothing is read to the host here. Each callable in
        `accumulators[name]` (registered before the step's first update) gets the losses inside
        the compiled step, e.g. to add them to device sums that the loop reads now and then.

        The learning rate goes in as a tensor, so changing it does not retrace.
        """
        if name not in self._compiled:
            self._compiled[name] = self._compile(name)
        args = [tf.convert_to_tensor(a) for a in args] + [tf.constant(learning_rate, tf.float32)]
        compiled = self._compiled[name]
        if not isinstance(compiled, tf.types.experimental.PolymorphicFunction):
            return compiled(*args)
        # The traced graph of these input shapes, called directly: a tf.function call would first
        # match its inputs against every captured variable of the step (hundreds) each update.
        key = (name,) + tuple((tuple(a.shape), a.dtype) for a in args)
        if key not in self._concrete:
            self._concrete[key] = compiled.get_concrete_function(*args)
        return self._concrete[key](*args)

    def _compile(self, name):
        """The update of step `name` with its accumulators. On one device without XLA, update and
        accumulators are traced as ONE tf.function (a nested compiled call costs ~0.5 ms a step)."""
        fn, adders = getattr(self, f"{name}_step_fn"), tuple(self.accumulators[name])
        one_graph = self.strategy is None and not self.config.jit
        update = fn if one_graph else distribute.replicated_step(self.strategy, fn, jit=self.config.jit)

        def update_and_accumulate(*step_args):
            losses = update(*step_args)
            for add in adders:
                add(losses)
            return losses
        if one_graph:
            return distribute.replicated_step(None, update_and_accumulate if adders else fn)
        if not adders:
            return update
        if self.strategy is None:
            return tf.function(update_and_accumulate, reduce_retracing=True, autograph=False)
        return update_and_accumulate  # the update splits its batch across replicas in Python: the sums follow eagerly

    # ----------------------------------------------------------------- monitoring
    def monitoring_loss(self, net, budget_bytes=L.MONITORING_BUDGET_BYTES):
        """The program's early-stop loss of `net` over all n stored items (float; the one read
        to the host per checked pass): LabNet's on (H, feat_L, pred_L); ImgNet's on codes sign(F)
        and the pair (F, H); TxtNet's on sign(G) and (H, G); all weights 1, as in the program.
        Its float64 temporaries take at most about budget_bytes (blocks of the n x n pairs)."""
        b, scale = self.buffers, self.config.similarity_scale
        if net == "lab":
            return float(L.monitoring_loss(b["H"], b["feat_L"], self.labels, b["pred_L"], scale,
                                         budget_bytes=budget_bytes))
        hashes, predicted = (b["F"], b["pred_I"]) if net == "img" else (b["G"], b["pred_T"])
        first, second = (hashes, b["H"]) if net == "img" else (b["H"], hashes)
        return float(L.modality_monitoring_loss(tf.sign(hashes), first, second, b["H"], predicted, self.labels,
                                                scale, budget_bytes=budget_bytes))

    def update_unified_codes(self):
        """B = sign(H + F + G), the program's unified code of the training set."""
        b = self.buffers
        self.unified_codes.assign(tf.sign(b["H"] + b["F"] + b["G"]))

    # ----------------------------------------------------------------- codes
    def hash_codes(self, modality, inputs, batch_size):
        """+-1 codes (sign of the tanh hash; 0 counts as +1) of `inputs` (array or lazy rows;
        lazy rows stream through tf.data)."""
        if isinstance(inputs, np.ndarray):
            batches = (inputs[start:start + batch_size] for start in range(0, len(inputs), batch_size))
        else:
            batches = (values for values, _ in pipeline.image_batches(inputs, np.arange(len(inputs)), batch_size))
        out = []
        for x in batches:
            x = tf.convert_to_tensor(x)
            out.append(self._codes_function(modality, x.shape[1:], x.dtype)(x).numpy())
        return np.where(np.concatenate(out) >= 0, 1.0, -1.0).astype(np.float32)

    def _codes_function(self, modality, item_shape, dtype):
        """The compiled hash of `modality` for inputs of any batch size: traced once per item
        shape and dtype (in-memory uint8 images, streamed float32 ones), not per batch size."""
        key = ("codes", modality, tuple(item_shape), dtype)
        if key not in self._compiled:
            net = self.nets[modality]
            prepare = self.image_preprocess if modality == "img" else self.text_preprocess

            def hashes(x):
                return net(prepare(x))[1]
            spec = tf.TensorSpec((None,) + tuple(item_shape), dtype)
            self._compiled[key] = tf.function(hashes, input_signature=[spec], autograph=False)
        return self._compiled[key]

    def variable_keys(self):
        """{id(variable): "NET/PATH"} for every variable of every net: PATH is the variable's path
        below the net, with the image trunk's own name (which Keras numbers per process: cnnf,
        cnnf_1, ...) written as "trunk", so that the keys are the same in every process."""
        keys = {}
        for name, net in self.nets.items():
            trunk = getattr(net, "trunk", None)
            for variable in net.variables:
                path = variable.path.removeprefix(net.name + "/")
                if trunk is not None and path.startswith(trunk.name + "/"):
                    path = "trunk/" + path[len(trunk.name) + 1:]
                keys[id(variable)] = f"{name}/{path}"
        if len(set(keys.values())) < len(keys):
            raise ValueError("two variables of one SSAH net share a path: give their layers distinct names")
        return keys

    def checkpoint_objects(self):
        """Every variable of the trainer for tf.train.Checkpoint. Keras 3 layers kept in Python
        lists or dicts (CNN-F's convolutions, the discriminators' hidden layers, TxtNet's
        multi-scale weights) are invisible to the checkpoint's object graph, so variables are
        listed explicitly by key (`variable_keys`): net_NAME: {PATH: variable};
        optimizer_NAME: {"iterations", "m/NAME/PATH", "v/NAME/PATH"} (the moment slots of the
        variables it updates); buffers, unified codes, the batch RNG and the loss scales as objects."""
        keys = self.variable_keys()
        objects = {f"net_{name}": {keys[id(v)].split("/", 1)[1]: v for v in net.variables}
                   for name, net in self.nets.items()}
        served = {}  # optimizer -> the variables it updates
        for step, optimizer in self.optimizers.items():
            served.setdefault(optimizer, {}).update({id(v): v for v in self.step_variables(step)})
        for optimizer, variables in served.items():
            entries = {"iterations": optimizer.iterations}
            for variable in variables.values():
                entries["m/" + keys[id(variable)]], entries["v/" + keys[id(variable)]] = optimizer.slots(variable)
            objects[f"optimizer_{optimizer.name}"] = entries
        objects.update({f"buffer_{name}": var for name, var in self.buffers.items()})
        objects["unified_codes"] = self.unified_codes
        objects["rng"] = self.rng
        for step, loss_scale in self.loss_scales.items():
            objects[f"loss_scale_{step}"] = loss_scale
        return objects


def checkpoint_variable_names(objects):
    """The names tf.train.Checkpoint(**objects) gives the variables held in its dicts."""
    def escape(name):
        return name.replace(".", "..").replace("/", ".S")
    return {f"{key}/{escape(inner)}/.ATTRIBUTES/VARIABLE_VALUE"
            for key, value in objects.items() if isinstance(value, dict) for inner in value}
