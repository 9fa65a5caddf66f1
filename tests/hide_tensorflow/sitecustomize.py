"""Put this folder first on PYTHONPATH and Python starts as if TensorFlow were not installed:
`import tensorflow` (and TensorBoard, tf_keras) raises ModuleNotFoundError and
`importlib.util.find_spec` finds nothing, as on a machine without them. The tests of the JAX
backend run the toolkit this way, so a TensorFlow import anywhere on their path fails."""

import sys

# None in sys.modules is Python's own "not importable" marker.
for name in ("tensorflow", "tf_keras", "tensorboard"):
    sys.modules[name] = None
