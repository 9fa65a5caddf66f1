"""NIMA (Neural Image Assessment, Talebi & Milanfar 2018) on TensorFlow 2 / Keras 3.

    import nima
    model = nima.load()                      # or nima.load("path/to/job-dir-or-model")
    results = model.predict(images="photos/")

`load` and `NimaModel` live in `nima.api`; they are imported on first use, so `import nima`
stays fast and TensorFlow-free (the CLI and the dataset tools rely on that).
"""

__version__ = "0.1.0"

_API = ("load", "NimaModel")


def __getattr__(name: str):
    if name in _API:
        from nima import api

        return getattr(api, name)
    raise AttributeError(f"module 'nima' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
