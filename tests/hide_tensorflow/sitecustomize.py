"""Put this folder first on PYTHONPATH and Python starts as if TensorFlow were not installed:
`import tensorflow` (and TensorBoard, tf_keras) raises ModuleNotFoundError. The tests of the
JAX backend run the toolkit this way, so a TensorFlow import anywhere on their path fails."""

import sys

HIDDEN = ("tensorflow", "tf_keras", "tensorboard")


class HideTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests)", name=name)
        return None


sys.meta_path.insert(0, HideTensorFlow())
