"""Put this folder first on PYTHONPATH and Python starts as if TensorFlow were not installed:
`import tensorflow` (and TensorBoard, tf_keras) raises ModuleNotFoundError,
`importlib.util.find_spec` finds nothing and the names are absent from sys.modules, as on a
machine without them. The tests of the JAX backend run the toolkit this way, so a TensorFlow
import anywhere on their path fails.

Every finder on sys.meta_path is wrapped so that it does not see these packages. (A `None`
in sys.modules, Python's own "not importable" marker, is not the same: Keras asks
`"tensorflow" in sys.modules` before calling TensorFlow, so its preprocessing layers would
fail here and work on a real machine without TensorFlow.)"""

import sys

HIDDEN = frozenset({"tensorflow", "tf_keras", "tensorboard"})


class _Hiding:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
