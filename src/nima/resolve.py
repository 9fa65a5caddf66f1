"""Model references: what `--model`, `--init-model` and `nima.load()` accept, resolved into
one model file, how its input pixels are made, and what is known about it.

A reference is one of
  - None: the default model, `aesthetic`;
  - the name of a model shipped in models/ (`aesthetic`, `technical`; `names()` lists them);
  - a model or training-job directory: its best.keras, else its model.keras;
  - a `.keras` file;
  - weights and the training config that builds their network (`config_file`, or the
    config.json beside them): Keras 3 `.weights.h5`, or Keras 2 `.hdf5`/`.h5` files of
    idealo's and other Keras NIMA repositories.

A path wins over a name: `--model aesthetic` means the shipped model unless ./aesthetic exists.

This module imports neither NumPy nor Keras until a model is loaded: the Docker launcher
(which has only the docker SDK) uses `model_file` and `names`, and `nima predict` with a
cached TFLite conversion never builds the Keras model at all.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nima.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT = "aesthetic"
MODEL_FILES = ("best.keras", "model.keras")  # a job's best epoch first, then its last
CONFIG_FILE = "config.json"       # the training config, beside a model or in a job dir
METADATA_FILE = "metadata.json"   # what a shipped model is: description, task, provenance


def models_dir() -> Path:
    """The repository's models/ folder (or $NIMA_MODELS_DIR, as set in the Docker images)."""
    env = os.environ.get("NIMA_MODELS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models"


def names() -> list[str]:
    """The shipped models: folders of models/ holding a model.keras (not the config folders)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if (d / "model.keras").is_file())


def _is_name(source: str) -> bool:
    return bool(source) and "/" not in source and os.sep not in source and "." not in source


def model_file(source: str | os.PathLike | None) -> tuple[Path, str | None]:
    """(the model file a reference names, the shipped model's name or None).

    Raises ModelError with one sentence for a missing file, an empty directory or an
    unknown name (listing the known ones).
    """
    text = DEFAULT if source is None else os.fspath(source)
    path, name = Path(text), None
    if not path.exists() and _is_name(text):
        if source is None and text not in names():
            raise ModelError(f"the default model is missing ({models_dir() / text}); pass "
                             "--model (or set NIMA_MODELS_DIR)")
        if text not in names():
            known = ", ".join(names()) or f"none: {models_dir()} has no models"
            raise ModelError(f"unknown model {text!r}: not a file or folder, and not a shipped "
                             f"model ({known})")
        path, name = models_dir() / text, text
    if path.is_dir():
        for candidate in MODEL_FILES:
            if (path / candidate).is_file():
                return path / candidate, name
        raise ModelError(f"no {' or '.join(MODEL_FILES)} in {path}")
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if not path.is_file():
        raise ModelError(f"model is not a regular file: {path}")
    return path, name


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference. `load()` builds the Keras model (safe mode)."""

    path: Path                   # the .keras or weights file
    kind: str                    # "keras" | "weights" (Keras 3) | "keras2" (Keras 2 HDF5)
    resize: str                  # nima.config.RESIZES: how its input pixels are made
    config_file: Path | None     # the config that builds a weights file's network
    name: str | None = None      # the shipped model's name, when named
    info: dict = field(default_factory=dict)  # metadata.json beside it, task, name, resize

    @property
    def files(self) -> list[Path]:
        """The files that define the model (a cache of conversions is keyed by their bytes)."""
        return [self.path] if self.config_file is None else [self.config_file, self.path]

    @property
    def label(self) -> str:
        """A short name for results that hold several models' scores."""
        return self.name or self.info.get("name") or self.info.get("task") or self.path.stem

    def training_config(self) -> dict:
        """The training config beside the model (or given), as data; {} when there is none.

        Raw keys rather than a validated Config: a model copied with a config of an older
        version, or with a partial one, must still score; callers fall back to Config's
        defaults (`config_default`)."""
        path = self.config_file or self.path.parent / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self):
        """The Keras model: a `.keras` file as saved, weights into the network their config
        builds (Keras 2 files through nima.legacy)."""
        if self.kind == "keras":
            from nima.model import load_model

            return load_model(self.path)
        from nima.config import Config

        config = Config.load(self.config_file).replace(base_weights=None,
                                                      resize_method=self.resize)
        if self.kind == "keras2":
            from nima import legacy

            return legacy.load_keras2_weights(self.path, config)
        from nima.model import build_model

        model = build_model(config)
        try:
            model.load_weights(self.path)
        except Exception as e:
            raise ModelError(f"cannot load weights {self.path}: {str(e).splitlines()[0]}") from None
        return model


def config_default(key: str) -> Any:
    """Config's default for `key` (the one place defaults are written down)."""
    from nima.config import Config

    return Config.__dataclass_fields__[key].default


def resolve(source: str | os.PathLike | None = None,
            config_file: str | os.PathLike | None = None) -> ModelRef:
    """Resolve a model reference (see the module docstring) without loading the model."""
    path, name = model_file(source)
    info: dict = {"model": str(path)}
    meta = path.parent / METADATA_FILE
    if meta.is_file():
        try:
            data = json.loads(meta.read_text())
            info.update(data if isinstance(data, dict) else {})
        except (OSError, ValueError):
            log.warning("ignoring unreadable %s", meta)
    if name:
        info["name"] = name
    kind, resize, config = _kind(path, config_file)
    ref = ModelRef(path, kind, resize, config, name, info)
    if "task" not in info:  # a training job records it in its config
        task = ref.training_config().get("task")
        if isinstance(task, str):
            info["task"] = task
    info["resize"] = resize
    return ref


def _kind(path: Path, config_file: str | os.PathLike | None) -> tuple[str, str, Path | None]:
    """(kind, resize, config file) of a model file, from its bytes and name."""
    if zipfile.is_zipfile(path):
        return "keras", keras_file_resize(path), None
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise ModelError(f"{path} is not a model file: expected a .keras model (a zip archive), "
                         "a model or job directory, or .h5/.hdf5 weights with --config-file")
    config = Path(config_file) if config_file else path.parent / CONFIG_FILE
    if not config.is_file():
        raise ModelError(f"weights file {path} needs its training config (--config-file; for "
                         "Keras 2 weights, any config of the same base model)")
    from nima import legacy

    if legacy.is_keras2_weights(path):
        # Keras 2 NIMA models learned on `load_img(target_size=...)` pixels: NEAREST.
        return "keras2", "nearest", config
    if not _is_hdf5(path):
        raise ModelError(f"{path} is not an HDF5 weights file")
    from nima.config import Config

    return "weights", Config.load(config).resize_method, config


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def keras_file_resize(path: Path) -> str:
    """The resize recorded in a `.keras` file's Preprocess layer, read from the archive's JSON
    (no Keras needed); "bilinear" for files saved before the record existed."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ModelError(f"{path} is not a readable .keras model: {e}") from None
    found = _find_preprocess(config)
    return found.get("resize", "bilinear") if found is not None else "bilinear"


def _find_preprocess(node: Any) -> dict | None:
    if isinstance(node, dict):
        if node.get("class_name") == "Preprocess" and isinstance(node.get("config"), dict):
            return node["config"]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_preprocess(child)
        if found is not None:
            return found
    return None
