"""The trainer's distribution strategy: several machines, several GPUs, or one device.

Several machines: set ``TF_CONFIG`` on each (the same ``cluster`` of two or more workers, its own ``task``
index; worker 0 is the chief) and run the same ``python -m train`` command on every one. Training then runs in
lockstep under ``tf.distribute.MultiWorkerMirroredStrategy``: each step's batch (``--batch-size`` is the global
batch) is shared out over all the replicas, gradients are summed across machines, and every worker ends with
the same weights. Each worker evaluates and writes its own run folder; publish the chief's.

The strategy is made once per process, before TensorFlow runs any operation: a multi-worker strategy can only
be set up at the start (TensorFlow refuses to configure collective operations later).
"""

import functools
import json
import os

__all__ = ["ClusterConfigError", "cluster_workers", "training_strategy"]

TF_CONFIG_ENV = "TF_CONFIG"
CLUSTER_ROLES = ("chief", "worker")


class ClusterConfigError(ValueError):
    """``TF_CONFIG`` is set but unusable; the message says why."""


def cluster_workers(environ=os.environ) -> int:
    """How many machines (chief and workers) ``TF_CONFIG`` names: 0 when it is unset or empty;
    ``ClusterConfigError`` when it is malformed or its task is not in its cluster."""
    text = environ.get(TF_CONFIG_ENV, "").strip()
    if not text:
        return 0
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        members = {kind: cluster.get(kind) or [] for kind in CLUSTER_ROLES}
        role, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ClusterConfigError(
            f"{TF_CONFIG_ENV} must be JSON with cluster.worker (a list of host:port) and task (type and index): {error}"
        ) from error
    if not members["worker"] or not all(isinstance(names, list) for names in members.values()):
        raise ClusterConfigError(f"{TF_CONFIG_ENV}'s cluster.worker must be a non-empty list of host:port.")
    if role not in CLUSTER_ROLES or not 0 <= index < len(members[role]):
        raise ClusterConfigError(
            f"{TF_CONFIG_ENV}'s task must name a {' or '.join(CLUSTER_ROLES)} of the cluster "
            f"by its index (got {role} {index})."
        )
    return sum(len(names) for names in members.values())


@functools.cache
def training_strategy(gpus: int = 0):
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names two or more workers, ``MirroredStrategy`` on a
    machine with several GPUs, else TensorFlow's default strategy. Made once per process (see the module
    docstring); ``gpus`` is the local GPU count."""
    import tensorflow as tf

    if cluster_workers() > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _fit_keras_to_multi_worker()
        return strategy
    if gpus > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _fit_keras_to_multi_worker() -> None:
    """Two fixes to Keras 3.15's multi-worker path, without which ``Model.fit`` fails before its first step.

    1. Before the first step, ``fit`` and ``evaluate`` take one distributed batch and reduce the whole
       (x, y, weights) tuple across replicas only to learn its shapes; across machines TensorFlow cannot reduce
       a tuple ("Attempt to convert a value (PerReplica...) to a Tensor"). This worker's first replica has the
       same shapes and needs no communication: the build is given that.
    2. Each step's logs (scalar loss and metrics) are averaged across machines with ``axis=0``, which a scalar
       does not have ("Invalid reduction dimension 0"); they are averaged across replicas (``axis=None``).

    Guarded by tests/test_distributed.py, which trains on two worker processes."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer.reduce_per_replica, "multi_worker_fixed", False):
        return
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def local(value):
        return value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value

    def build_from_local_batch(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local, next(batches))
                break
            iterator = None
        return build(self, iterator=iterator, data_batch=data_batch)

    def reduce_scalars_across_workers(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return reduce(values, strategy, reduction)

    reduce_scalars_across_workers.multi_worker_fixed = True
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    trainer.reduce_per_replica = reduce_scalars_across_workers
