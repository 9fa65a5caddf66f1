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

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

log = logging.getLogger("nima")


def _train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a NIMA model (two phases, EMD loss)",
                       description="Train a NIMA model: phase 1 trains the head on a frozen "
                       "base, phase 2 fine-tunes all layers. Results go to a job directory.")
    p.add_argument("--config-file", type=Path, help="JSON config, e.g. "
                   "models/MobileNet/config_aesthetic_cpu.json")
    p.add_argument("--samples-file", type=Path, help="label JSON: "
                   '[{"image_id": ..., "label": [10 numbers]}, ...]')
    p.add_argument("--image-dir", type=Path, help="folder with <image_id>.<ext> files")
    p.add_argument("--job-dir", type=Path, help="output folder (default: train_jobs/<timestamp>)")
    p.add_argument("--resume", type=Path, metavar="JOB_DIR",
                   help="continue a stopped job from its last completed epoch")

    def run(a: argparse.Namespace) -> int:
        from nima import train
        from nima.config import Config

        if a.resume:
            train.resume(a.resume, a.image_dir)
            return EXIT_OK
        missing = [f"--{n.replace('_', '-')}" for n in ("config_file", "samples_file", "image_dir")
                   if getattr(a, n) is None]
        if missing:
            raise UsageError(f"train needs {', '.join(missing)} (or --resume JOB_DIR)")
        train.train(Config.load(a.config_file), a.samples_file, a.image_dir, a.job_dir)
        return EXIT_OK

    p.set_defaults(run=run)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-file", "--model", dest="model", type=Path, metavar="MODEL",
                   help="a .keras model, a job or model directory, or a .weights.h5 file "
                   "(with --config-file); default: the shipped technical-quality model")
    p.add_argument("--config-file", type=Path, help="training config for a .weights.h5 file")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")


def _predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score an image file or folder",
                       description="Score images: one JSON object per image with the 10-bin "
                       "distribution, mean and standard deviation. Exit code 3 if any image "
                       "could not be scored (each such image gets an 'error' entry). "
                       "See docs/predict.md.")
    p.add_argument("--image-source", type=Path, required=True,
                   help="an image file, or a folder walked recursively")
    p.add_argument("--weights-file", "--model", dest="model", type=Path, metavar="MODEL",
                   action="append",
                   help="a .keras model, a job or model directory, or a .weights.h5 file "
                   "(with --config-file); repeat to average several models (an ensemble); "
                   "default: the shipped technical-quality model")
    p.add_argument("--config-file", type=Path, help="training config for a .weights.h5 file")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--predictions-file", type=Path,
                   help="write results here (atomically; partial results beside it in "
                   "FILE.partial while running; run metadata in FILE.meta.json)")
    p.add_argument("--format", choices=("json", "jsonl", "csv"), default="json")
    p.add_argument("--backend", choices=("auto", "keras", "tflite"), default="auto",
                   help="auto (default): Keras on a GPU, TFLite/XNNPACK on CPU")
    p.add_argument("--workers", type=int, help="decoding threads (default: all CPUs)")
    p.add_argument("--num-shards", type=int, default=1,
                   help="split the folder into N deterministic shards (by relative path)")
    p.add_argument("--shard-index", type=int, default=0, help="which shard to score (0..N-1)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from FILE.partial")
    p.add_argument("--normalize", choices=("minmax",),
                   help="rescale this run's mean scores to --range (default 1 10)")
    p.add_argument("--range", dest="norm_range", type=float, nargs=2, metavar=("LO", "HI"),
                   default=(1.0, 10.0))

    def run(a: argparse.Namespace) -> int:
        from nima.predict import predict

        _, failed = predict(a.image_source, a.model or None, config_file=a.config_file,
                            predictions_file=a.predictions_file, fmt=a.format,
                            batch_size=a.batch_size, backend=a.backend,
                            num_shards=a.num_shards, shard_index=a.shard_index,
                            resume=a.resume, normalize=a.normalize,
                            norm_range=tuple(a.norm_range), workers=a.workers)
        return EXIT_PARTIAL if failed else EXIT_OK

    p.set_defaults(run=run)


def _merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="join predictions files (e.g. shards) into one",
                       description="Join predictions files of any format into OUT (format "
                       "from its suffix .json/.jsonl/.csv, or --format), de-duplicated by "
                       "image path, every record validated.")
    p.add_argument("output", type=Path, metavar="OUT")
    p.add_argument("parts", type=Path, nargs="+", metavar="PARTS")
    p.add_argument("--format", choices=("json", "jsonl", "csv"))

    def run(a: argparse.Namespace) -> int:
        from nima.predict import merge

        merge(a.output, a.parts, a.format)
        return EXIT_OK

    p.set_defaults(run=run)


def _evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure a model on a label file",
                       description="EMD (r=1, r=2), SRCC/PLCC of the mean, SRCC of the sd, "
                       "accuracy at threshold 5 and MAE, as a table and as JSON.")
    p.add_argument("--samples-file", type=Path, required=True)
    p.add_argument("--image-dir", type=Path)
    _add_model_args(p)
    p.add_argument("--baseline", choices=("prior",),
                   help="evaluate a baseline instead of a model: 'prior' predicts the mean "
                   "label distribution for every image")
    p.add_argument("--prior-samples-file", type=Path,
                   help="label file the prior is computed from (default: --samples-file)")
    p.add_argument("--output-file", type=Path, help="write the metrics as JSON here")
    p.add_argument("--predictions-file", type=Path,
                   help="write per-image labels and predictions as JSON here")

    def run(a: argparse.Namespace) -> int:
        from nima.evaluate import evaluate, format_table

        if a.baseline is None and a.image_dir is None:
            raise UsageError("evaluate needs --image-dir (or --baseline prior)")
        result = evaluate(a.samples_file, image_dir=a.image_dir, model=a.model,
                          config_file=a.config_file, baseline=a.baseline,
                          prior_samples_file=a.prior_samples_file, batch_size=a.batch_size,
                          output_file=a.output_file, predictions_file=a.predictions_file)
        print(f"{result['model']} on {a.samples_file}")
        print(format_table(result))
        return EXIT_OK

    p.set_defaults(run=run)


# Subcommands in help order; other modules' commands are added here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_train, _predict, _evaluate,
                                                                 _merge]


class UsageError(Exception):
    pass


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
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # TensorFlow's C++ start-up chatter is not for users; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from nima.errors import NimaError

    try:
        return args.run(args)
    except UsageError as e:
        parser.error(str(e))
    except NimaError as e:
        if args.debug:
            raise
        print(f"nima {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"nima {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error worth a stack trace.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
