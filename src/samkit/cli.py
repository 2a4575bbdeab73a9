"""The ``samkit`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, onnx_cli, train, volume_cli, weights
from .automatic import GENERATOR_OPTIONS, generator_options
from .errors import SamkitError


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{what} takes {' or '.join(map(str, counts))} comma-separated numbers, got {text!r}")
    return values


def _point(text: str) -> list[float]:
    values = _numbers(text, (2, 3), "--point X,Y[,LABEL]")
    return values if len(values) == 3 else [*values, 1.0]


def _box(text: str) -> list[float]:
    return _numbers(text, (4,), "--box X0,Y0,X1,Y1")


def _tile_shape(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile-shape takes 'auto' or ROWS COLS in pixels, got {text!r}") from None


def _tiling(args: argparse.Namespace) -> dict[str, Any]:
    """``tile_shape`` and ``halo`` for a Predictor or a generator, from --tile-shape and --halo."""
    tile, halo = getattr(args, "tile_shape", None), getattr(args, "halo", None)
    if tile is None:
        if halo is not None:
            raise SamkitError("--halo needs --tile-shape too: e.g. --tile-shape 768 768 --halo 128 128.")
        return {}
    if tile == ["auto"]:
        if halo is not None:
            raise SamkitError("--tile-shape auto picks its own halo: leave out --halo, or give --tile-shape ROWS COLS.")
        return {"tile_shape": "auto"}
    if len(tile) not in (1, 2) or "auto" in tile:
        raise SamkitError(f"--tile-shape takes 'auto' or ROWS [COLS] in pixels; got {' '.join(map(str, tile))}.")
    halo = None if halo is None else tuple(halo) * (2 if len(halo) == 1 else 1)
    return {"tile_shape": tuple(tile) * (2 if len(tile) == 1 else 1), "halo": halo}


def _predictor(args: argparse.Namespace):
    from .checkpoint import load_model
    from .predictor import Predictor

    tiling = _tiling(args)
    model = load_model(args.model, device=args.device)
    cache = not args.no_cache
    if cache and getattr(args, "cache_size", None) is not None:
        from .cache import EmbeddingCache

        cache = EmbeddingCache(max_bytes=int(args.cache_size * 2**30))
    return Predictor(model, precision=args.precision, cache=cache, **tiling)


def _read(path: str, args: argparse.Namespace) -> Any:
    """The image at ``path``: opened lazily when tiling (only the tiles in use are read), else in memory."""
    from .io import read_image
    from .tiles import open_image

    return open_image(path) if getattr(args, "tile_shape", None) is not None else read_image(path)


def _segment(args: argparse.Namespace) -> None:
    from .checkpoint import check_model_name
    from .io import check_output_folder, write_mask

    if not args.point and not args.box:
        raise SamkitError("Give a prompt: at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1.")
    check_output_folder(args.output)
    check_model_name(args.model)
    predictor = _predictor(args)
    image = _read(args.image, args)
    embeddings = None
    if args.embeddings:
        from .tiles import read_microsam_embeddings

        embeddings = read_microsam_embeddings(args.embeddings, predictor.model, image=image)
    predictor.set_image(image, embeddings=embeddings)
    points = np.array(args.point, dtype=np.float64) if args.point else None
    # One click is ambiguous: ask for three candidates and keep the best, as SAM advises.
    ambiguous = args.box is None and len(args.point) == 1
    found = predictor.predict_region(
        point_coords=None if points is None else points[:, :2],
        point_labels=None if points is None else points[:, 2].astype(np.int64),
        box=np.array(args.box) if args.box else None,
        multimask_output=args.multimask or ambiguous,
    )
    scores = found.iou_predictions
    best = int(np.argmax(scores))
    masks = found.masks.astype(np.uint8) if args.multimask else found.masks[best : best + 1]
    if Path(args.output).suffix.lower() == ".zarr":
        _write_zarr_mask(args.output, masks, found, predictor.original_size)
    else:
        _check_full_size(predictor.original_size, args.output)
        full = _full(masks, found, predictor.original_size)
        write_mask(args.output, full if args.multimask else full[0])
    if predictor.tile_grid is not None:
        rows, cols = found.rows, found.cols
        print(f"the mask covers rows {rows.start}-{rows.stop - 1}, columns {cols.start}-{cols.stop - 1}")
    for i, score in enumerate(scores):
        chosen = " (written)" if args.multimask or i == best else ""
        print(f"mask {i}: predicted IoU {score:.4f}{chosen}")
    print(f"wrote {args.output}")


def _full(masks: np.ndarray, found: Any, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros((len(masks), *shape), dtype=masks.dtype)
    out[:, found.rows, found.cols] = masks
    return out


def _check_full_size(shape: tuple[int, int], output: str) -> None:
    from .predictor import FULL_MASK_PIXELS

    if shape[0] * shape[1] > FULL_MASK_PIXELS:
        raise SamkitError(
            f"The image is {shape[1]} x {shape[0]} pixels: a full-size {Path(output).suffix} mask would not fit in "
            "memory. Write it to a .zarr output instead (-o mask.zarr), which stores only the chunks the mask covers."
        )


def _write_zarr_mask(path: str, masks: np.ndarray, found: Any, shape: tuple[int, int]) -> None:
    """The mask(s) as a chunked zarr array of the image's size, of which only the region's chunks are written."""
    import zarr

    target = Path(path)
    if target.exists():
        raise SamkitError(f"{target} exists: choose another output, or remove it first.")
    array = zarr.create_array(
        store=str(target), shape=(len(masks), *shape) if len(masks) > 1 else shape,
        chunks=(1, 1024, 1024) if len(masks) > 1 else (1024, 1024), dtype="uint8", fill_value=0,
    )
    if len(masks) > 1:
        array[:, found.rows, found.cols] = masks.astype(np.uint8)
    else:
        array[found.rows, found.cols] = masks[0].astype(np.uint8)


def _embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .batch import FileResult

    predictor = _predictor(args)
    failed = []
    for i, path in enumerate(args.images, 1):
        try:
            predictor.set_image(_read(path, args))
            if predictor.tile_grid is not None:
                with tqdm(total=len(predictor.tile_grid), unit="tile", leave=False) as bar:
                    computed = predictor.compute_all(progress=lambda done, total: bar.update(done - bar.n))
                print(f"[{i}/{len(args.images)}] {path}: {len(predictor.tile_grid)} tiles, {computed} embedded now")
                continue
        except (SamkitError, MemoryError) as exc:
            failed.append(FileResult(Path(path), None, failed=str(exc)))
            print(f"[{i}/{len(args.images)}] {path}: failed: {exc}")
        else:
            print(f"[{i}/{len(args.images)}] {path}: embedded")
    print(f"embeddings are in {predictor.cache.folder}")
    return _failures(failed, len(args.images))


def _models(args: argparse.Namespace) -> None:
    if args.action == "download":
        if not args.names:
            raise SamkitError("Name the models to download, e.g. `samkit models download sam_vit_b`.")
        for name in args.names:
            path = weights.download(name, progress=True)
            print(f"{name}: {path}")
        return
    if args.action == "verify":
        for name in args.names or [n for n in weights.REGISTRY if weights.is_downloaded(n)]:
            print(f"{name}: verified {weights.verify(name, force=True)}")
        return
    print(f"{'name':22s} {'arch':6s} {'size':>9s}  {'state':10s} description")
    for name, item in weights.REGISTRY.items():
        size = f"{item.size / 1e6:.0f} MB" if item.size else "?"
        state = "bundled" if item.bundled else "downloaded" if weights.is_downloaded(name) else "-"
        print(f"{name:22s} {item.architecture:6s} {size:>9s}  {state:10s} {item.description}")
    print(f"cache: {weights.cache_dir() / 'models'} (set SAMKIT_CACHE to move it)")


def _generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """Grid mode's parameters: as given, else the model card's quality filters (samkit_tiny), else SAM's defaults."""
    return generator_options(args.model, {name: getattr(args, name) for name in GENERATOR_OPTIONS})


def _default_text(name: str, default: float) -> str:
    if name in weights.GRID_FILTERS:
        return f"default {default:g}, or the model card's for a model that ships with samkit (or fine-tuned from one)"
    return f"default {default:g}"


def _auto(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .automatic import AutomaticMaskGenerator
    from .batch import image_files, segment_files
    from .cache import EmbeddingCache
    from .checkpoint import check_model_name, load_model
    from .tiles import open_image

    tiling = _tiling(args)
    labels_out = args.output.lower().endswith(".zarr")
    if labels_out:
        tiling = tiling or {"tile_shape": "auto"}
    if labels_out and (args.png or args.format != "sa1b"):
        raise SamkitError("An output ending .zarr is one label image: --png and --format are for a folder output.")
    files = [Path(args.source)] if labels_out else image_files(args.source)
    check_model_name(args.model)
    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="point", leave=False))
        bars[0].update(done - bars[0].n)

    generator = AutomaticMaskGenerator(
        load_model(args.model, device=args.device),
        **_generator_options(args),
        output_mode="coco_rle",
        precision=args.precision,
        progress=progress,
        **tiling,
        cache=labels_out and not args.no_cache and (
            EmbeddingCache(max_bytes=int(args.cache_size * 2**30)) if args.cache_size else True
        ),
    )
    if labels_out:
        labels = generator.generate_labels(open_image(args.source), args.output)
        if bars:
            bars.pop().close()
        objects = labels.attrs.get("samkit", {}).get("objects")
        print(f"{Path(args.source).name}: {objects} masks; labels ({labels.shape[0]} x {labels.shape[1]}, "
              f"{labels.dtype}) in {args.output}")
        return 0
    failed = []
    for i, result in enumerate(segment_files(files, args.output, generator, args.format, args.png), 1):
        if bars:
            bars.pop().close()
        if result.failed:
            failed.append(result)
            state = f"failed: {result.failed}"
        else:
            state = f"skipped: {result.skipped}" if result.skipped else f"{result.masks} masks"
        print(f"[{i}/{len(files)}] {result.path.name}: {state}")
    print(f"results in {args.output}")
    return _failures(failed, len(files))


def _failures(failed: list[Any], total: int) -> int:
    """List the files that failed (each with ``path`` and ``failed``); the exit code: 1 if any did."""
    if failed:
        print(f"{len(failed)} of {total} images failed:")
        for result in failed:
            print(f"  {result.path}: {result.failed}")
    return 1 if failed else 0


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .batch import FileResult
    from .checkpoint import check_model_name
    from .evaluate import evaluate_automatic, evaluate_interactive, pair_files
    from .io import check_output_folder, read_image

    found = pair_files(args.images, args.labels)
    if args.output:
        check_output_folder(args.output)
    check_model_name(args.model)
    pairs, images, labels, failed = [], [], [], []
    for image, label in found:
        try:
            pixels, truth = read_image(image), read_image(label)
        except SamkitError as exc:
            failed.append(FileResult(image, None, failed=str(exc)))
            print(f"{image.name}: failed: {exc}")
        else:
            pairs.append((image, label))
            images.append(pixels)
            labels.append(truth)
    if not pairs:
        _failures(failed, len(found))
        raise SamkitError("None of the images and their labels could be read: nothing to evaluate.")
    predictor = _predictor(args)
    bars: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="object", leave=False))
        bars[0].update(done - bars[0].n)

    result = evaluate_interactive(predictor, images, labels, n_points=args.points, boxes=not args.box_off,
                                  progress=progress, min_area=args.min_area, names=[image.name for image, _ in pairs])
    if bars:
        bars.pop().close()
    summary = result.summary()
    skipped = f" ({result.skipped} smaller than {args.min_area} pixels skipped)" if result.skipped else ""
    print(f"{len(result)} objects in {len(pairs)} images{skipped}")
    for k in (1, 3, 5):
        if f"miou_{k}" in summary:
            print(f"mIoU, {k} point{'s' if k > 1 else ''}: {summary[f'miou_{k}']:.4f}")
    if not args.box_off:
        print(f"mIoU, box: {summary['miou_box']:.4f}")
    if args.output:
        result.to_csv(args.output)
        print(f"wrote {args.output}")
    if args.automatic:
        from .automatic import AutomaticMaskGenerator

        generator = AutomaticMaskGenerator(predictor.model, **_generator_options(args), precision=args.precision)
        metrics = evaluate_automatic(
            generator, images, labels,
            progress=lambda done, total: print(f"[{done}/{total}] {pairs[done - 1][0].name}: grid mode done"),
        )
        print(f"grid mode, IoU >= 0.5: TP {metrics['tp']}, FP {metrics['fp']}, FN {metrics['fn']}; precision "
              f"{metrics['precision']:.4f}, recall {metrics['recall']:.4f}, F1 {metrics['f1']:.4f}")
        print(f"grid mode: AP50 {metrics['ap50']:.4f}, AP75 {metrics['ap75']:.4f}, "
              f"mean accuracy over IoU 0.5:0.95 {metrics['mean_accuracy']:.4f}")
    return _failures(failed, len(found))


def _export(args: argparse.Namespace) -> None:
    from . import rle
    from .io import check_output_folder, read_image

    check_output_folder(args.output)
    labels = read_image(args.labels)
    tiff_stack = labels.ndim > 2 and Path(args.labels).suffix.lower() in (".tif", ".tiff")
    if (labels.ndim != 2 and not tiff_stack) or labels.dtype.kind not in "biu":
        raise SamkitError(
            f"{args.labels} is not a label image: expected 2D integers (or a TIFF stack of them), "
            f"got {labels.dtype} {labels.shape}."
        )
    if tiff_stack and args.format != "coco":
        raise SamkitError(
            f"{args.labels} is a stack of shape {labels.shape}, and {args.format} files hold one image: "
            "use --format coco, which writes every slice."
        )
    if args.format == "csv":
        rle.write_strings_csv(args.output, labels)
    else:
        writer = rle.write_sa1b if args.format == "sa1b" else rle.write_coco
        writer(args.output, labels, file_name=Path(args.labels).name)
    print(f"wrote {args.output}")


def _import(args: argparse.Namespace) -> None:
    import json

    from . import rle
    from .io import check_output_folder, write_mask

    check_output_folder(args.output)
    if Path(args.input).suffix.lower() == ".csv":
        labels = rle.read_strings_csv(args.input)
        write_mask(args.output, labels)
        print(f"{np.count_nonzero(np.unique(labels))} objects; wrote {args.output}")
        return
    try:
        data = json.loads(Path(args.input).read_text())
    except (OSError, ValueError) as exc:
        raise SamkitError(f"Cannot read {args.input} as JSON ({exc}).") from exc
    reader = rle.read_coco if isinstance(data, dict) and "images" in data else rle.read_sa1b
    labels, records = reader(args.input)
    write_mask(args.output, labels)
    print(f"{len(records)} objects; wrote {args.output}")


def _sample(args: argparse.Namespace) -> None:
    from . import synthetic
    from .io import write_mask

    make = synthetic.nuclei if args.name == "nuclei" else synthetic.cells
    image, labels = make((args.size, args.size), seed=args.seed)
    write_mask(args.output, image)
    print(f"{args.output}: {image.shape[1]}x{image.shape[0]} {args.name}, {image.dtype}, {labels.max()} objects")
    if args.labels:
        write_mask(args.labels, labels)
        print(f"{args.labels}: their true labels")


def _info(args: argparse.Namespace) -> None:
    import torch

    from .device import native_bf16, resolve_device

    device = resolve_device("auto")
    print(f"samkit {__version__}, torch {torch.__version__}")
    print(f"device: {device}; native bfloat16: {native_bf16(device)}; threads: {torch.get_num_threads()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samkit", description="Segment Anything for microscopy and medical images.")
    parser.add_argument("--version", action="version", version=f"samkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    model_options = argparse.ArgumentParser(add_help=False)
    model_options.add_argument("--model",
                               help="a model name (see `samkit models`) or a SAM-format checkpoint file (default: "
                                    "the first downloaded of the usual models, else one that ships with samkit, "
                                    "else sam_vit_b)")
    model_options.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    model_options.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                               help="image encoder precision (auto: bfloat16 where the hardware has it)")
    model_options.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    tile_options = argparse.ArgumentParser(add_help=False)
    tile_options.add_argument("--tile-shape", nargs="+", type=_tile_shape, metavar="ROWS COLS",
                              help="embed large images as tiles of this size, read lazily ('auto': tile only "
                                   "images larger than the model's input, at their own resolution)")
    tile_options.add_argument("--halo", nargs="+", type=int, metavar="ROWS COLS",
                              help="overlap added around each tile (default an eighth of the tile)")
    tile_options.add_argument("--cache-size", type=float, metavar="GIB",
                              help="the embedding cache's size limit in GiB (default 2): all tiles of a slide "
                                   "with ViT-B take about 4 MB each")

    segment = commands.add_parser("segment", parents=[model_options, tile_options],
                                  help="segment one object from point and box prompts")
    segment.add_argument("image", help="image file (PNG, JPEG, TIFF incl. 16-bit)")
    segment.add_argument("--point", type=_point, action="append", default=[],
                         help="X,Y[,LABEL] in pixels; LABEL 1 positive (default) or 0 negative; repeatable")
    segment.add_argument("--box", type=_box, help="X0,Y0,X1,Y1 in pixels")
    segment.add_argument("-o", "--output", required=True,
                         help="mask file to write (.tif or .png; .zarr for an image too large for one file)")
    segment.add_argument("--embeddings", metavar="ZARR",
                         help="embeddings micro-sam saved for this image (its .zarr), used instead of computing them")
    segment.add_argument("--multimask", action="store_true",
                         help="write all three candidate masks (a 3-page stack) instead of the single best")
    segment.set_defaults(run=_segment)

    embed = commands.add_parser("embed", parents=[model_options, tile_options],
                                help="precompute image embeddings into the cache")
    embed.add_argument("images", nargs="+", help="image files")
    embed.set_defaults(run=_embed)

    volume = commands.add_parser("volume", parents=[model_options],
                                 help="segment objects on a few slices of a stack and follow them through it")
    volume_cli.add_arguments(volume)
    volume.set_defaults(run=volume_cli.run_from_args)

    export_onnx = commands.add_parser("export-onnx", parents=[model_options],
                                      help="write the model as ONNX: SAM's decoder interface, optionally the encoder")
    onnx_cli.add_arguments(export_onnx)
    export_onnx.set_defaults(run=onnx_cli.run_from_args)

    trainer = commands.add_parser("train", parents=[model_options],
                                  help="fine-tune a model on images with instance labels")
    train.add_arguments(trainer)
    trainer.set_defaults(run=train.run_from_args)

    auto = commands.add_parser("auto", parents=[model_options, tile_options],
                               help="segment everything in an image or a folder of images (grid of prompts)")
    auto.add_argument("source", help="an image file or a folder of images (a .zarr array for a .zarr output)")
    auto.add_argument("-o", "--output", required=True,
                      help="output folder; or a path ending .zarr: the label image of one (large) image, written "
                           "block by block, its tiles read lazily from a TIFF or zarr source (tiled: --tile-shape, "
                           "default auto; tiles kept in the embedding cache unless --no-cache, so a run resumes)")
    auto.add_argument("--format", choices=("sa1b", "coco"), default="sa1b", help="JSON format (default sa1b)")
    auto.add_argument("--png", action="store_true", help="also write one PNG per mask and metadata.csv")
    for name, (kind, default, text) in GENERATOR_OPTIONS.items():
        auto.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} ({_default_text(name, default)})")
    auto.set_defaults(run=_auto)

    evaluate = commands.add_parser("evaluate", parents=[model_options],
                                   help="score a model on labelled images (simulated clicks and boxes; grid mode)")
    evaluate.add_argument("--images", nargs="+", required=True, help="image files or folders")
    evaluate.add_argument("--labels", nargs="+", required=True,
                          help="label image files or folders, named like the images (optionally with _labels)")
    evaluate.add_argument("--points", type=int, default=5, help="simulated clicks per object (default 5)")
    evaluate.add_argument("--no-box", dest="box_off", action="store_true", help="do not prompt with bounding boxes")
    evaluate.add_argument("--min-area", type=int, default=4, help="skip objects smaller than this (pixels, default 4)")
    evaluate.add_argument("--automatic", action="store_true",
                          help="also run grid mode and report instance metrics (precision, recall, F1, AP)")
    evaluate.add_argument("-o", "--output", help="CSV file of per-object IoUs to write")
    for name, (kind, default, text) in GENERATOR_OPTIONS.items():
        evaluate.add_argument(f"--{name.replace('_', '-')}", type=kind,
                              help=f"with --automatic: {text} ({_default_text(name, default)})")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser(
        "export", help="label image (TIFF) to SA-1B / COCO RLE JSON or RLE strings (CSV); a TIFF stack to COCO"
    )
    export.add_argument("labels", help="label image (TIFF)")
    export.add_argument("-o", "--output", required=True, help="output file (.json, or .csv with --format csv)")
    export.add_argument("--format", choices=("sa1b", "coco", "csv"), default="sa1b")
    export.set_defaults(run=_export)

    importer = commands.add_parser("import", help="SA-1B or COCO RLE JSON, or RLE strings (CSV), to a label image (TIFF)")
    importer.add_argument("input", help="JSON file (SA-1B per-image or COCO instances) or CSV of RLE strings")
    importer.add_argument("-o", "--output", required=True, help="label image to write (.tif)")
    importer.set_defaults(run=_import)

    models = commands.add_parser("models", help="list, download or verify named models")
    models.add_argument("action", nargs="?", choices=("list", "download", "verify"), default="list")
    models.add_argument("names", nargs="*", help="model names (download: required; verify: default all downloaded)")
    models.set_defaults(run=_models)

    sample = commands.add_parser("sample", help="write a generated sample image (fluorescent nuclei or stained cells)")
    sample.add_argument("name", choices=("nuclei", "cells"))
    sample.add_argument("-o", "--output", required=True, help="image file to write (.tif or .png)")
    sample.add_argument("--labels", help="also write the true labels to this file")
    sample.add_argument("--size", type=int, default=384, help="side in pixels (default 384, as napari's sample)")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(run=_sample)

    info = commands.add_parser("info", help="show the version, device and precision samkit would use")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samkit`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "model", "") is None:
            args.model, note = weights.default_model()
            print(f"samkit: {note}", file=sys.stderr)
        return args.run(args) or 0
    except SamkitError as exc:
        print(f"samkit: error: {exc}", file=sys.stderr)
    except MemoryError as exc:
        print(f"samkit: error: not enough memory ({exc}). Try a smaller image, or close other programs.",
              file=sys.stderr)
    except OSError as exc:
        print(f"samkit: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
