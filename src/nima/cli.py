"""The `nima` command: subcommands and their arguments, nothing else.

Each subcommand imports its module lazily, so `nima --help` and the TensorFlow-free commands
start in a fraction of a second. Errors the user can fix are printed as one line (no stack
trace; `--debug` shows it). Exit codes: 0 success, 1 error, 2 usage error, 3 partial (some
images could not be scored), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from nima import options
from nima.data import commands as data_commands
from nima.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL
from nima.options import UsageError


log = logging.getLogger("nima")



@options.command("train", help="train a NIMA model (two phases, EMD loss)")
def _train(p: argparse.ArgumentParser) -> options.Run:
    """Train a NIMA model: phase 1 trains the head on a frozen base, phase 2 fine-tunes all
    layers. Results go to a job directory.

    Runs on the Keras backend KERAS_BACKEND names: tensorflow (the default), jax or torch
    (docs/backends.md).
    """
    options.add_options(p, options.TRAIN)

    def run(a: argparse.Namespace) -> int:
        options.check_train(a)  # before importing TensorFlow: a usage error is instant
        from nima.config import Config

        config = None if a.resume else Config.load(a.config_file)  # errors before TF's import
        from nima import train

        if a.resume:
            train.resume(a.resume, a.image_dir)
            return EXIT_OK
        train.train(config, a.samples_file, a.image_dir, a.job_dir, init_model=a.init_model)
        return EXIT_OK

    return run


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-file", "--model", dest="model", type=Path, metavar="MODEL",
                   help=options.MODEL_HELP + "; default: aesthetic")
    p.add_argument("--config-file", type=Path, help="training config for a weights file")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")


@options.command("predict", help="score an image file or folder")
def _predict(p: argparse.ArgumentParser) -> options.Run:
    """Score images: one JSON object per image with the 10-bin distribution, mean and standard
    deviation. Exit code 3 if any image could not be scored (each such image gets an
    'error' entry). See docs/predict.md.
    """
    options.add_options(p, options.PREDICT)

    def run(a: argparse.Namespace) -> int:
        from nima.predict import predict

        if a.predictions_file == Path("-"):
            a.predictions_file = None  # stdout, as without the option
        _, failed = predict(a.image_source, a.model or None, also=a.also,
                            config_file=a.config_file,
                            predictions_file=a.predictions_file, fmt=a.format,
                            batch_size=a.batch_size, backend=a.backend,
                            num_shards=a.num_shards, shard_index=a.shard_index,
                            resume=a.resume, normalize=a.normalize,
                            norm_range=a.norm_range and tuple(a.norm_range),
                            workers=a.workers)
        return EXIT_PARTIAL if failed else EXIT_OK

    return run


@options.command("merge", help="join predictions files (e.g. shards) into one")
def _merge(p: argparse.ArgumentParser) -> options.Run:
    """Join predictions files of any format into OUT (format from its suffix .json/.jsonl/.csv,
    or --format), de-duplicated by image path, every record validated.
    """
    p.add_argument("output", type=Path, metavar="OUT", help="the merged predictions file")
    p.add_argument("parts", type=Path, nargs="+", metavar="PARTS",
                   help="predictions files of `nima predict` (json, jsonl or csv, any mix)")
    p.add_argument("--format", choices=("json", "jsonl", "csv"),
                   help="format of OUT (default: from its suffix, else json)")

    def run(a: argparse.Namespace) -> int:
        from nima.results import merge

        merge(a.output, a.parts, a.format)
        return EXIT_OK

    return run


@options.command("evaluate", help="measure a model on a label file")
def _evaluate(p: argparse.ArgumentParser) -> options.Run:
    """EMD (r=1, r=2), SRCC/PLCC of the mean, SRCC of the sd, accuracy at threshold 5 and MAE,
    as a table and as JSON.
    """
    p.add_argument("--samples-file", type=Path, required=True,
                   help='label JSON: [{"image_id": ..., "label": [10 numbers]}, ...]')
    p.add_argument("--image-dir", type=Path, help="folder with <image_id>.<ext> files "
                   "(not needed for --baseline prior)")
    _add_model_args(p)
    p.add_argument("--baseline", choices=("prior",),
                   help="evaluate a baseline instead of a model: 'prior' predicts the mean "
                   "label distribution for every image")
    p.add_argument("--prior-samples-file", type=Path,
                   help="label file the prior is computed from (default: --samples-file)")
    p.add_argument("--output-file", type=Path, help="write the metrics as JSON here")
    p.add_argument("--predictions-file", type=Path,
                   help="write per-image labels and predictions as JSON here")
    p.add_argument("--report-dir", type=Path, help="write report.html and PNG plots here "
                   "(scatter, histograms, EMD, confusion matrix)")

    def run(a: argparse.Namespace) -> int:
        from nima.evaluate import evaluate, format_table

        if a.baseline is None and a.image_dir is None:
            raise UsageError("evaluate needs --image-dir (or --baseline prior)")
        result = evaluate(a.samples_file, image_dir=a.image_dir, model=a.model,
                          config_file=a.config_file, baseline=a.baseline,
                          prior_samples_file=a.prior_samples_file, batch_size=a.batch_size,
                          output_file=a.output_file, predictions_file=a.predictions_file)
        if a.report_dir:
            from nima.evaluation_report import write_evaluation_report  # matplotlib only now

            write_evaluation_report(a.report_dir, result.ids, result.y_true, result.y_pred,
                                    dict(result), image_dir=a.image_dir)
        print(f"{result['model']} on {a.samples_file}")
        print(format_table(result))
        return EXIT_OK

    return run


@options.command("report", help="HTML gallery (or PNG sheet) of scored images")
def _report(p: argparse.ArgumentParser) -> options.Run:
    """Browse `nima predict` results: one self-contained HTML page (works offline) with
    thumbnails sorted by mean score, each with its score distribution, a score filter
    and the files that failed.
    """
    p.add_argument("predictions", type=Path, metavar="PREDICTIONS",
                   help="output of `nima predict` (JSON, JSONL or CSV)")
    p.add_argument("--image-source", type=Path, required=True, metavar="DIR",
                   help="the --image-source that was scored (image paths are relative to it)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="gallery.html or sheet.png")
    p.add_argument("--format", choices=("html", "png"),
                   help="html page or png contact sheet (default: from the -o suffix)")
    p.add_argument("--top", type=int, metavar="N", help="only the N best-scored images")
    p.add_argument("--bottom", type=int, metavar="N", help="only the N worst-scored images")
    p.add_argument("--limit", type=int, metavar="N",
                   help="read only the first N entries of PREDICTIONS")
    p.add_argument("--thumb-size", type=int, default=160, metavar="PX",
                   help="thumbnail size in pixels (default 160)")
    p.add_argument("--title", help="page title")

    def run(a: argparse.Namespace) -> int:
        from nima.report import gallery

        gallery(a.predictions, a.image_source, a.output, fmt=a.format, top=a.top,
                bottom=a.bottom, limit=a.limit, title=a.title, thumb_size=a.thumb_size)
        return EXIT_OK

    return run


@options.command("calibrate", help="re-estimate a model's BatchNorm statistics (precise BN)")
def _calibrate(p: argparse.ArgumentParser) -> options.Run:
    """Re-estimate every BatchNormalization's moving mean and variance as the average batch
    statistics over random training images, weights unchanged. Fixes models trained from
    random init whose inference-mode scores lag behind training mode (see
    docs/technical-model.md).
    """
    p.add_argument("--model", type=Path, required=True,
                   help="a .keras model, a job or model directory, or a shipped model's name")
    p.add_argument("--samples-file", type=Path, required=True, help="training label file")
    p.add_argument("--image-dir", type=Path, required=True,
                   help="folder with <image_id>.<ext> files")
    p.add_argument("--output-file", type=Path, required=True, help="the calibrated .keras model")
    p.add_argument("--batches", type=int, default=64, help="batches to average (default 64)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")

    def run(a: argparse.Namespace) -> int:
        from nima.calibrate import calibrate_file

        if a.batches < 1 or a.batch_size < 2:
            raise UsageError("--batches must be >= 1 and --batch-size >= 2")
        n = calibrate_file(a.model, a.samples_file, a.image_dir, a.output_file,
                           batches=a.batches, batch_size=a.batch_size, seed=a.seed)
        print(f"BatchNorm statistics re-estimated from {n} batches; model in {a.output_file}")
        return EXIT_OK

    return run


@options.command("export", help="write a serving artefact: SavedModel, TFLite or ONNX")
def _export(p: argparse.ArgumentParser) -> options.Run:
    """Export a model for serving. Every format outputs predictions (10 bins),
    mean_score_prediction and sd_score_prediction. The SavedModel's serving_default
    takes encoded image bytes (TF Serving), serving_float and the other formats take
    float32 RGB 0..255 at the model's input size. See docs/export.md.
    """
    p.add_argument("--weights-file", "--model", dest="model", type=Path, metavar="MODEL",
                   help=options.MODEL_HELP + "; default: aesthetic")
    p.add_argument("--config-file", type=Path, help="training config for a weights file")
    p.add_argument("--format", choices=("savedmodel", "tflite", "onnx"), required=True,
                   help="savedmodel (a directory, for TF Serving), tflite or onnx (a file)")
    p.add_argument("--quantize", choices=("fp16", "int8"),
                   help="tflite: float16 weights, or int8 (dynamic range; full integer "
                   "with --representative-images); onnx: int8 (dynamic)")
    p.add_argument("--representative-images", type=Path, metavar="SOURCE",
                   help="image file or folder to calibrate full int8 quantization "
                   "(first 200 images)")
    p.add_argument("--output", type=Path, required=True,
                   help="output file (.tflite, .onnx) or SavedModel directory, e.g. "
                   "serving/nima/1 for TF Serving (must not exist or be empty)")

    def run(a: argparse.Namespace) -> int:
        from nima import kerasbackend

        kerasbackend.require_tensorflow("nima export")  # before export's TensorFlow import
        from nima.export import check_options, export
        from nima.predict import Predictor

        check_options(a.format, a.quantize, a.representative_images, a.output)
        predictor = Predictor.load(a.model, a.config_file)
        path = export(predictor.model, a.format, a.output, a.quantize, a.representative_images)
        log.info("wrote %s %s", a.format, path)
        print(path)
        return EXIT_OK

    return run


@options.command("import-keras2",
                 help="turn Keras 2 NIMA weights (idealo's .hdf5) into a .keras model")
def _import_keras2(p: argparse.ArgumentParser) -> options.Run:
    """Read the HDF5 weights of a NIMA model trained with Keras 2 (idealo's image-quality-
    assessment, e.g. weights_mobilenet_aesthetic_0.07.hdf5, and other Keras NIMA
    repositories: base CNN, Dropout, Dense(10, softmax)) into this toolkit's model, and
    save it as a .keras file that predict, evaluate, export and nima.load() take. Every
    array's shape is checked against the base model.
    """
    p.add_argument("--weights-file", type=Path, required=True, help="Keras 2 .hdf5/.h5 file")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--base-model-name", help="keras.applications name, e.g. MobileNet "
                     "(default arguments and input size)")
    how.add_argument("--config-file", type=Path,
                     help="a config naming the base model, its arguments and input size")
    p.add_argument("--output-file", type=Path, required=True, help="the .keras model to write")
    p.add_argument("--resize", choices=("nearest", "bilinear"), default="nearest",
                   help="how the model's input pixels are made, recorded in the model: "
                   "nearest (default) is Keras 2 load_img's, what these models were trained "
                   "on; bilinear only for a model trained on bilinear resizes")

    def run(a: argparse.Namespace) -> int:
        from nima import files, legacy
        from nima.config import Config

        if a.output_file.suffix != ".keras":
            raise UsageError("--output-file must end in .keras")
        config = (Config.load(a.config_file) if a.config_file
                  else Config(base_model_name=a.base_model_name))
        model = legacy.load_keras2_weights(a.weights_file, config.replace(resize_method=a.resize))
        files.save_keras(model, a.output_file)
        print(a.output_file)
        return EXIT_OK

    return run


# Subcommands in help order; other modules' commands are added here.
COMMANDS: list[Callable] = [
    _train, _predict, _evaluate, data_commands.add, _report, _export, _calibrate, _merge,
    _import_keras2]


def build_parser() -> argparse.ArgumentParser:
    from nima import __version__

    parser = argparse.ArgumentParser(
        prog="nima", description="NIMA (Neural Image Assessment): train, score and evaluate "
        "image-quality models on keras.applications backbones.")
    parser.add_argument("--version", action="version", version=f"nima {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show stack traces on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        if hasattr(add, "command"):
            options.install(sub, add)
        else:
            add(sub)  # a group of its own (nima data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # TensorFlow's C++ start-up chatter is not for users; keep warnings and errors. JAX logs
    # at INFO each accelerator plugin it does not find (libtpu on every machine).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    from nima import kerasbackend
    from nima.errors import NimaError

    # "nima data check: error: ..." names the nested tool too.
    command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    try:
        kerasbackend.check()
        if kerasbackend.is_tensorflow():
            kerasbackend.quiet_tensorflow_start()
        return args.run(args)
    except UsageError as e:
        # the subcommand's own usage line and prog ("nima train: error: ..."), not nima's
        sub = parser
        for name in command.split():
            sub = next(a for a in sub._actions
                       if isinstance(a, argparse._SubParsersAction)).choices[name]
        sub.error(str(e))
    except NimaError as e:
        if args.debug:
            raise
        print(f"nima {command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"nima {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error worth a stack trace.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
