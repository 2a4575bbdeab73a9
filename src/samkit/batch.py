"""Segment everything in image files, writing labels, JSON and per-mask PNGs; resumable."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .automatic import AutomaticMaskGenerator, masks_to_labels
from .errors import Cancelled, SamkitError
from .io import atomic_output, read_image, write_mask
from .rle import decode, write_coco, write_sa1b

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
METADATA_HEADER = [
    "id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x", "point_input_y",
    "predicted_iou", "stability_score", "crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h",
]


class FileResult(NamedTuple):
    """What became of one image: the number of masks written, why it was skipped, or why it failed."""

    path: Path
    masks: int | None
    skipped: str | None = None
    failed: str | None = None


def image_files(source: str | os.PathLike) -> list[Path]:
    """The image files of a folder (sorted), or the one file given."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise SamkitError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) in {source}.")
        return files
    if not source.is_file():
        raise SamkitError(f"No image or folder at {source}: check the path.")
    return [source]


def outputs(image: Path, out_dir: Path) -> dict[str, Path]:
    """Where the results of ``image`` go; the JSON file is written last and marks it done."""
    return {
        "labels": out_dir / f"{image.stem}_labels.tif",
        "json": out_dir / f"{image.stem}.json",
        "png": out_dir / image.stem,
    }


def _write_pngs(folder: Path, records: list[dict[str, Any]]) -> None:
    """One 0/255 PNG per mask and ``metadata.csv``, as SAM's ``amg.py`` writes them."""
    folder.mkdir(exist_ok=True)
    rows = []
    for i, record in enumerate(records):
        write_mask(folder / f"{i}.png", decode(record["segmentation"]))
        rows.append([i, record["area"], *record["bbox"], *record["point_coords"][0], record["predicted_iou"],
                     record["stability_score"], *record["crop_box"]])
    with atomic_output(folder / "metadata.csv") as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(METADATA_HEADER)
        writer.writerows(rows)


def segment_files(
    files: list[Path],
    out_dir: str | os.PathLike,
    generator: AutomaticMaskGenerator,
    fmt: str = "sa1b",
    png: bool = False,
) -> Iterator[FileResult]:
    """Run ``generator`` on each file and yield what became of it.

    Files done before are skipped. A file that cannot be read or segmented (not an image, too
    small, out of memory, a result that cannot be written) fails with the reason in its result,
    and the run goes on with the next file.

    Per image: ``<stem>_labels.tif`` (one label per mask, smaller masks on top), ``<stem>.json``
    (SA-1B or COCO, ``fmt``) and with ``png`` a folder ``<stem>/`` of per-mask PNGs and
    ``metadata.csv``. Every file is written under a temporary name and renamed; the JSON
    comes last, so an interrupted run leaves no half-written result and a rerun redoes only
    the images without one.
    """
    if fmt not in ("sa1b", "coco"):
        raise SamkitError(f"Unknown format {fmt!r}: use 'sa1b' or 'coco'.")
    if generator.output_mode != "coco_rle":
        raise SamkitError("The generator must use output_mode='coco_rle' to write files.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        target = outputs(path, out_dir)
        if target["json"].exists():
            yield FileResult(path, None, "done before")
            continue
        try:
            yield FileResult(path, _segment_file(path, target, generator, fmt, png))
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - one image never stops a folder run; its error is reported
            reason = str(exc) if isinstance(exc, SamkitError) else f"{type(exc).__name__}: {exc}"
            yield FileResult(path, None, failed=reason)


def _segment_file(path: Path, target: dict[str, Path], generator: AutomaticMaskGenerator, fmt: str, png: bool) -> int:
    """Segment one image file and write its results; returns the number of masks."""
    image = read_image(path)
    records = generator.generate(image)
    shape = (int(image.shape[0]), int(image.shape[1]))
    labels, _ = masks_to_labels(records, shape=shape)
    write_mask(target["labels"], labels)
    if png:
        _write_pngs(target["png"], records)
    writer = write_sa1b if fmt == "sa1b" else write_coco
    writer(target["json"], records, file_name=path.name, image_size=shape)
    return len(records)
