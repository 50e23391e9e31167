"""The distributed epoch: one epoch under a ``tf.distribute`` strategy (``--strategy mirrored|multiworker``).

The model is built, loaded and compiled in the strategy's scope and each epoch runs a distributed step
(``strategy.run``) instead of ``model.fit``: Keras 3.15's ``fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585: it reduces whole batches and scalar metrics with ``axis=0``), and under ``MirroredStrategy``
it iterates the first batch of a dataset to build itself and then restarts the iterator, which reshuffles a seeded
dataset. The step computes the same loss as ``fit`` (the mean over the global batch, class weights included), so a
2-replica epoch matches a 1-device one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..configs import TrainOptions
from ..progress import Bar
from .guard import check_finite
from .optim import make_loss

if TYPE_CHECKING:
    import tensorflow as tf


class DistributedEpoch:
    """One stage's compiled train and eval steps under a ``tf.distribute`` strategy (traced once per stage).

    Every replica computes ``sum(loss_i * class_weight_i) / global_batch`` on its share of the global batch; the
    optimizer sums the replicas' gradients, so the update is the one ``model.fit`` makes on the whole batch.
    """

    def __init__(self, model, strategy, options: TrainOptions, class_weight: dict | None) -> None:
        from .._tf import tf

        self.model, self.strategy = model, strategy
        loss_fn = make_loss(options, reduction=None)
        classes = int(model.output_shape[-1])
        weights = None if not class_weight else tf.constant(
            [float(class_weight.get(i, 1.0)) for i in range(classes)], tf.float32)
        with strategy.scope():
            if not model.optimizer.built:  # its slots must exist before the first step (created in scope)
                model.optimizer.build(model.trainable_variables)

        def sums(y, probs, per_example):
            correct = tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(y, -1)), tf.float32)
            return tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.cast(tf.shape(y)[0], tf.float32)

        def train_replica(x, y):
            context = tf.distribute.get_replica_context()
            global_n = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = loss_fn(y, probs)
                if weights is not None:
                    per_example = per_example * tf.gather(weights, tf.argmax(y, -1))
                loss = tf.reduce_sum(per_example) / tf.maximum(global_n, 1.0)
                scaled = model.optimizer.scale_loss(loss)
            variables = model.trainable_variables
            model.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            return sums(y, probs, per_example)

        def eval_replica(x, y):
            probs = model(x, training=False)
            return sums(y, probs, loss_fn(y, probs))

        def reduced(replica_fn):
            def step(batch):
                out = strategy.run(replica_fn, args=batch)
                return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out]

            return step

        self._steps = {"train": reduced(train_replica), "eval": reduced(eval_replica)}
        self.train_step = self.eval_step = None  # traced at the first batch, for the datasets' element spec

    def _traced(self, kind: str, data) -> object:
        """The ``kind`` step as a ``tf.function`` with the distributed dataset's element spec as its signature (batch
        size unknown): traced once per stage. Traced for the first batch's shape instead, a last partial batch (and
        the first val batch) traced the whole model's step again."""
        from .._tf import tf

        name = f"{kind}_step"
        if getattr(self, name) is None:
            setattr(self, name, tf.function(self._steps[kind], input_signature=[data.element_spec]))
        return getattr(self, name)

    def _distributed(self, ds):
        """A dataset batched by the global batch, split by the strategy; a distributed dataset (each worker's own
        share, see :meth:`tltool.supervised.KerasTrainingRun.pipelines`) as it is."""
        from .._tf import tf

        return self.strategy.experimental_distribute_dataset(ds) if isinstance(ds, tf.data.Dataset) else ds

    def run(self, train: tf.data.Dataset | tf.distribute.DistributedDataset,
            val: tf.data.Dataset | tf.distribute.DistributedDataset | None, bar: Bar, lr: float) -> dict:
        """Train one epoch on ``train`` and evaluate on ``val``; Keras-style logs."""
        totals, train = np.zeros(3), self._distributed(train)
        train_step = self._traced("train", train)
        for batch, data in enumerate(train):
            step = np.array([float(v) for v in train_step(data)])
            check_finite(step[0] / max(step[2], 1.0), batch, lr)
            totals += step
            bar.update(1)
        logs = {"loss": totals[0] / max(totals[2], 1.0), "accuracy": totals[1] / max(totals[2], 1.0)}
        if val is not None:
            totals, val = np.zeros(3), self._distributed(val)
            eval_step = self._traced("eval", val)
            for data in val:
                totals += np.array([float(v) for v in eval_step(data)])
            logs.update(val_loss=totals[0] / max(totals[2], 1.0), val_accuracy=totals[1] / max(totals[2], 1.0))
        return {k: [v] for k, v in logs.items()}
