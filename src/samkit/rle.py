"""Masks as run-length encodings, SA-1B / COCO annotation files, and CSV files of RLE strings.

Encodings of a 2D mask (the encoders take any 2D bool or numeric array; non-zero is inside):

- COCO RLE, compressed: ``{"size": [h, w], "counts": str}``, JSON-ready, byte for byte what
  ``pycocotools.mask.encode`` writes (its ``counts`` are bytes; ours are the same characters as str).
- COCO RLE, uncompressed: ``{"size": [h, w], "counts": [int, ...]}``, the run lengths over the
  pixels in column-major order, starting with a run of 0s (of length 0 when the first pixel is
  inside); the output of ``segment_anything.utils.amg.mask_to_rle_pytorch``.
- The 'start length' string of Kaggle-style competitions: pairs of a 1-indexed pixel position and
  the length of a run of 1s, pixels numbered in row-major order; ``""`` is the empty mask.

A *record* is one object: a dict with ``"id"`` (a positive int, the object's value in a label
image), ``"segmentation"`` (a compressed COCO RLE) and any other annotation fields.

Stacks (z-stacks, time series: label images (..., H, W)) go to COCO files, one COCO image per
plane (see :func:`write_coco`). SA-1B files and CSV files of strings hold one image each and
refuse a stack.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .errors import FormatError
from .io import atomic_output

RLE = dict[str, Any]
Record = dict[str, Any]

_SA1B_HINT = 'an SA-1B per-image file is {"image": {...}, "annotations": [...]}; for a COCO file use read_coco'
_COCO_HINT = 'a COCO instance file is {"images": [...], "annotations": [...], "categories": [...]}'
_JSON_NAMES = {dict: "an object", list: "an array", int: "an integer", object: "a value"}


# The largest mask (pixels) and object id samkit reads: pycocotools counts pixels in 32 bits, and
# label images hold ids in int64 at most.
MAX_PIXELS = 2**31 - 1
MAX_ID = int(np.iinfo(np.int64).max)


# ---------------------------------------------------------------------------------------------
# Validation helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_mask(mask: Any, where: str = "mask") -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2 or array.size == 0:
        raise FormatError(
            f"{where}: expected a 2D (H, W) array with at least one pixel; got shape {array.shape}. "
            "For a stack, encode one slice at a time."
        )
    if array.dtype.kind not in "biuf":
        raise FormatError(f"{where}: expected a bool or numeric array; got dtype {array.dtype}.")
    return array != 0


def _as_labels(labels: Any, where: str = "label image") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2 or array.size == 0:
        raise FormatError(f"{where}: expected a 2D (H, W) array with at least one pixel; got shape {array.shape}.")
    if array.dtype.kind not in "biu":
        raise FormatError(
            f"{where}: expected integer labels; got dtype {array.dtype}. Cast it first, e.g. labels.astype(int)."
        )
    if array.dtype.kind == "i" and array.min() < 0:
        raise FormatError(f"{where}: labels must be >= 0 (0 is background); found {array.min()}.")
    return array


def _shape(shape: Any, where: str) -> tuple[int, int]:
    if not isinstance(shape, (list, tuple)) or len(shape) != 2 or not all(_is_int(n) and n > 0 for n in shape):
        raise FormatError(f"{where}: expected [height, width], two positive integers; got {_brief(shape)}.")
    h, w = int(shape[0]), int(shape[1])
    if h * w > MAX_PIXELS:
        raise FormatError(
            f"{where}: a {h}x{w} mask has {h * w} pixels; samkit reads masks of at most {MAX_PIXELS} pixels "
            "(2^31 - 1). The size is likely damaged; a larger image must be split into tiles."
        )
    return h, w


def _size(rle: Any, where: str) -> tuple[int, int]:
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise FormatError(f"{where}: an RLE is a dict with 'size' [h, w] and 'counts'; got {_brief(rle)}.")
    return _shape(rle["size"], f"{where}: RLE 'size'")


def _parse_counts(text: str, where: str) -> list[int]:
    """Run lengths of a compressed COCO counts string.

    Each number is written in 5-bit groups, least significant first, as characters from '0'
    (value 0) on; 0x20 marks that another group follows, 0x10 in the last group is the sign.
    From the fourth number on, the value is the difference to the number two places back.
    """
    runs: list[int] = []
    value = shift = 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise FormatError(f"{where}: {char!r} cannot appear in compressed RLE counts; the RLE is damaged.")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise FormatError(f"{where}: compressed RLE counts decode to a negative run ({value}); the RLE is damaged.")
        runs.append(value)
        value = shift = 0
    if shift:
        raise FormatError(f"{where}: compressed RLE counts end in the middle of a number; the RLE is truncated.")
    return runs


def _runs(rle: Any, where: str) -> tuple[int, int, list[int]]:
    """(h, w, run lengths) of an RLE in either form, checked to cover exactly h*w pixels."""
    h, w = _size(rle, where)
    counts = rle["counts"]
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"{where}: compressed RLE counts must be ASCII; the RLE is damaged.") from None
    if isinstance(counts, str):
        runs = _parse_counts(counts, where)
    elif isinstance(counts, (list, tuple, np.ndarray)) and all(_is_int(c) and c >= 0 for c in counts):
        runs = [int(c) for c in counts]
    else:
        raise FormatError(
            f"{where}: RLE 'counts' must be a string (compressed) or a list of integers >= 0 "
            f"(uncompressed); got {_brief(counts)}."
        )
    if sum(runs) != h * w:
        raise FormatError(
            f"{where}: RLE counts add up to {sum(runs)} pixels, but its size {h}x{w} has {h * w}; "
            "the RLE is damaged or belongs to a different image size."
        )
    return h, w, runs


def _pycoco(rle: Any, where: str = "RLE") -> dict[str, Any]:
    """A checked RLE in pycocotools' own form (compressed, bytes counts)."""
    h, w, runs = _runs(rle, where)
    return mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)


def _jsonable(coco: Mapping[str, Any]) -> RLE:
    """A pycocotools RLE with the counts as str, ready for JSON."""
    return {"size": [int(n) for n in coco["size"]], "counts": coco["counts"].decode("ascii")}


def _compressed(rle: Any, where: str) -> RLE:
    return _jsonable(_pycoco(rle, where))


def _decode(rle: Any, where: str) -> np.ndarray:
    return np.ascontiguousarray(mask_utils.decode(_pycoco(rle, where)), dtype=bool)


def _measured(rle: Any, where: str) -> Record:
    """Compressed segmentation, area and bbox of a checked RLE."""
    coco = _pycoco(rle, where)
    return {
        "segmentation": _jsonable(coco),
        "area": int(mask_utils.area(coco)),
        "bbox": [int(v) for v in mask_utils.toBbox(coco)],
    }


# ---------------------------------------------------------------------------------------------
# COCO RLE


def encode(mask: np.ndarray) -> RLE:
    """Compressed COCO RLE ``{"size": [h, w], "counts": str}`` of a 2D mask, via pycocotools."""
    return _jsonable(mask_utils.encode(np.asfortranarray(_as_mask(mask), dtype=np.uint8)))


def encode_uncompressed(mask: np.ndarray) -> RLE:
    """Uncompressed COCO RLE ``{"size": [h, w], "counts": [int, ...]}`` (column-major runs, 0s first)."""
    array = _as_mask(mask)
    flat = array.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": list(array.shape), "counts": counts}


def encode_uncompressed_at(mask: np.ndarray, offset: Sequence[int], shape: Sequence[int]) -> RLE:
    """:func:`encode_uncompressed` of a mask placed at ``offset`` (row, col) in an image of ``shape``
    (H, W) that is background elsewhere, without building that image (a crop of a huge image)."""
    crop = np.asarray(mask, dtype=bool)
    height, width = (int(n) for n in shape)
    row0, col0 = (int(n) for n in offset)
    h, w = crop.shape if crop.ndim == 2 else (-1, -1)
    if min(h, w, row0, col0) < 0 or row0 + h > height or col0 + w > width:
        raise FormatError(
            f"A {crop.shape} mask at offset {(row0, col0)} does not lie inside a {height} x {width} image: "
            "give a 2D mask and an offset that keeps it inside."
        )
    # Each column of the crop, framed by background above and below, in column-major order.
    framed = np.zeros((h + 2, w), dtype=np.int8)
    framed[1:-1] = crop
    steps = np.diff(framed.ravel(order="F"))
    starts, ends = np.flatnonzero(steps == 1) + 1, np.flatnonzero(steps == -1) + 1

    def placed(flat: np.ndarray) -> np.ndarray:
        col, row = np.divmod(flat, h + 2)
        return (col0 + col).astype(np.int64) * height + row0 + row - 1

    starts, ends = placed(starts), placed(ends)
    # A run that ends at the bottom of a full-height column goes on at the top of the next.
    if len(starts):
        joined = ends[:-1] == starts[1:]
        starts, ends = starts[np.concatenate(([True], ~joined))], ends[np.concatenate((~joined, [True]))]
    edges = np.concatenate(([0], np.stack([starts, ends], axis=1).ravel(), [height * width]))
    counts = np.diff(edges).tolist()
    if len(counts) > 1 and counts[-1] == 0:
        counts.pop()
    return {"size": [height, width], "counts": counts}


def compress(rle: Mapping[str, Any]) -> RLE:
    """The compressed form (str counts) of an RLE given in either form."""
    return _compressed(rle, "RLE")


def uncompress(rle: Mapping[str, Any]) -> RLE:
    """The uncompressed form (list counts) of an RLE given in either form, without decoding the mask."""
    h, w, runs = _runs(rle, "RLE")
    return {"size": [h, w], "counts": runs}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """The bool (H, W) mask of an RLE: compressed (str or bytes counts) or uncompressed (list counts)."""
    return _decode(rle, "RLE")


def area(rle: Mapping[str, Any]) -> int:
    """Number of pixels inside the mask of an RLE (either form)."""
    return int(mask_utils.area(_pycoco(rle)))


def bbox(rle: Mapping[str, Any]) -> list[int]:
    """Pixel extent ``[x, y, w, h]`` of the mask of an RLE, as pycocotools' toBbox; zeros when empty."""
    return [int(v) for v in mask_utils.toBbox(_pycoco(rle))]


# ---------------------------------------------------------------------------------------------
# 'start length' strings


def encode_string(mask: np.ndarray) -> str:
    """'start length' pairs of the runs of 1s; positions 1-indexed in row-major order; "" if empty."""
    flat = _as_mask(mask).ravel().astype(np.int8)
    edges = np.diff(np.concatenate(([0], flat, [0])))
    starts = np.flatnonzero(edges == 1)
    lengths = np.flatnonzero(edges == -1) - starts
    return " ".join(f"{start + 1} {length}" for start, length in zip(starts.tolist(), lengths.tolist(), strict=True))


def decode_string(text: str, shape: tuple[int, int]) -> np.ndarray:
    """The bool mask of the given (H, W) shape from a 'start length' string (see `encode_string`).

    Pairs may come in any order but must not overlap.
    """
    h, w = _shape(shape, "shape")
    where = "start-length string"
    try:
        numbers = [int(token) for token in text.split()]
    except ValueError:
        raise FormatError(f"{where}: expected whitespace-separated integers; got {_brief(text)}.") from None
    if len(numbers) % 2:
        raise FormatError(f"{where}: holds {len(numbers)} numbers; it must be pairs of 'start length'.")
    flat = np.zeros(h * w, dtype=bool)
    end = 0
    for start, length in sorted(zip(numbers[0::2], numbers[1::2], strict=True)):
        if start < 1 or length < 1:
            raise FormatError(f"{where}: the pair '{start} {length}' is invalid; starts and lengths must be >= 1.")
        if start - 1 < end:
            raise FormatError(f"{where}: the run starting at {start} overlaps the run before it.")
        end = start - 1 + length
        if end > h * w:
            raise FormatError(
                f"{where}: the run '{start} {length}' ends at pixel {end}, past the {h}x{w} mask "
                f"({h * w} pixels); check the shape."
            )
        flat[start - 1 : end] = True
    return flat.reshape(h, w)


# ---------------------------------------------------------------------------------------------
# Label images and records


def _one_image(objects: Any, kind: str) -> None:
    """Refuse a stack of label images for a format that holds one image."""
    if isinstance(objects, np.ndarray) and objects.ndim > 2:
        raise FormatError(
            f"{kind} holds one image, but these labels are a stack of shape {objects.shape}: write the stack as "
            "COCO JSON (write_coco holds every plane), or write one plane, e.g. labels[z]."
        )


def _label_dtype(max_id: int) -> type[np.signedinteger]:
    return np.int32 if max_id <= np.iinfo(np.int32).max else np.int64


def _checked_id(object_id: Any, where: str) -> int:
    if not _is_int(object_id) or not 1 <= object_id <= MAX_ID:
        raise FormatError(
            f"{where}: 'id' must be a positive integer, at most {MAX_ID} (0 is background); got {_brief(object_id)}."
        )
    return int(object_id)


def _checked_record(record: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(record, Mapping) or "segmentation" not in record:
        raise FormatError(f"{where}: expected a dict with a 'segmentation'; got {_brief(record)}.")
    return record


def _segmentation_mask(segmentation: Any, where: str) -> np.ndarray:
    if isinstance(segmentation, np.ndarray):
        return _as_mask(segmentation, where)
    return _decode(segmentation, where)


def labels_to_records(labels: np.ndarray) -> list[Record]:
    """One record per non-zero label, in increasing label order.

    Each is ``{"id": label, "segmentation": compressed RLE, "area": int, "bbox": [x, y, w, h]}``.
    """
    array = _as_labels(labels)
    ids = np.unique(array)
    return [_mask_record(int(i), array == i) for i in ids[ids != 0]]


def _mask_record(object_id: int, mask: np.ndarray) -> Record:
    return {"id": object_id, **_measured(encode(mask), f"label {object_id}")}


def records_to_labels(
    records: Sequence[Mapping[str, Any]], shape: tuple[int, int] | None = None, *, overwrite: bool = False
) -> np.ndarray:
    """Paint records (each with "id" and "segmentation") into a label image, in list order.

    Where masks overlap, a pixel keeps the id of the first record that covers it; with
    ``overwrite=True`` the last one wins instead. ``shape`` is needed only when there are no
    records; otherwise every mask must have it. The dtype is int32 (int64 if an id needs it).
    """
    ids = [_checked_id(_checked_record(r, f"record {i}").get("id"), f"record {i}") for i, r in enumerate(records)]
    dtype = _label_dtype(max(ids, default=0))
    labels = None if shape is None else np.zeros(_shape(shape, "shape"), dtype=dtype)
    for i, (object_id, record) in enumerate(zip(ids, records, strict=True)):
        mask = _segmentation_mask(record["segmentation"], f"record {i}")
        if labels is None:
            labels = np.zeros(mask.shape, dtype=dtype)
        if mask.shape != labels.shape:
            raise FormatError(f"record {i}: its mask is {mask.shape}, but the label image is {labels.shape}.")
        labels[mask if overwrite else mask & (labels == 0)] = object_id
    if labels is None:
        raise FormatError("records_to_labels: there are no records, so pass shape=(height, width).")
    return labels


# ---------------------------------------------------------------------------------------------
# Writing SA-1B and COCO files


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write a {type(value).__name__} to JSON")


def _write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (see :func:`samkit.io.atomic_output`)."""
    path = Path(path)
    with atomic_output(path) as temporary, open(temporary, "x", encoding="utf-8") as file:
        json.dump(data, file, default=_json_value)
    return path


def _prepared_record(record: Any, index: int) -> Record:
    where = f"object {index}"
    segmentation = _checked_record(record, where)["segmentation"]
    if isinstance(segmentation, np.ndarray):
        segmentation = encode(_as_mask(segmentation, where))
    return {**record, "id": _checked_id(record.get("id", index + 1), where), **_measured(segmentation, where)}


def _prepare(
    objects: np.ndarray | Sequence[Mapping[str, Any]], image_size: tuple[int, int] | None
) -> tuple[list[Record], tuple[int, int]]:
    """Records with checked ids and compressed RLEs, and the (height, width) they share."""
    if isinstance(objects, np.ndarray):
        records = labels_to_records(objects)
        sizes = {objects.shape}
    else:
        records = [_prepared_record(record, i) for i, record in enumerate(objects)]
        sizes = {tuple(r["segmentation"]["size"]) for r in records}
    if image_size is not None:
        sizes.add(_shape(image_size, "image_size"))
    if not sizes:
        raise FormatError("There are no objects to write, so pass image_size=(height, width).")
    if len(sizes) > 1:
        raise FormatError(
            f"The masks and image_size disagree on the image size: {sorted(sizes)} (height, width). "
            "All objects of one file must belong to one image."
        )
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise FormatError("Object ids must be unique in a file; drop the 'id' fields to number objects 1, 2, ...")
    return records, sizes.pop()


def _inside_point(rle: RLE) -> list[list[float]]:
    rows, cols = np.nonzero(decode(rle))
    if rows.size == 0:
        return []
    middle = rows.size // 2
    return [[float(cols[middle]), float(rows[middle])]]


def _with_extras(annotation: dict[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    annotation.update((key, value) for key, value in record.items() if key not in annotation)
    return annotation


def _sa1b_annotation(record: Record, height: int, width: int) -> dict[str, Any]:
    annotation = {key: record[key] for key in ("id", "segmentation", "bbox", "area")}
    annotation["predicted_iou"] = record.get("predicted_iou", 1.0)
    annotation["stability_score"] = record.get("stability_score", 1.0)
    annotation["crop_box"] = record.get("crop_box", [0, 0, width, height])
    if "point_coords" in record:
        annotation["point_coords"] = record["point_coords"]
    else:
        annotation["point_coords"] = _inside_point(record["segmentation"])
    return _with_extras(annotation, record)


def write_sa1b(
    path: str | os.PathLike,
    objects: np.ndarray | Sequence[Mapping[str, Any]],
    *,
    image_id: int = 1,
    file_name: str = "",
    image_size: tuple[int, int] | None = None,
) -> Path:
    """Write an SA-1B per-image JSON file of a label image or of records; returns the path.

    Records may be ``SamAutomaticMaskGenerator`` output in any output mode: "segmentation" is a
    bool mask or an RLE in either form. "id" defaults to the position in the list, counting from 1.
    "area" and "bbox" are always recomputed from the mask (bbox = the pixel extent, as
    pycocotools' toBbox; SAM's own generator reports w and h one pixel smaller). Fields unknown for
    hand-made masks default to: predicted_iou = stability_score = 1.0 (taken as certain),
    crop_box = the whole image, point_coords = [[x, y]] of one pixel inside the mask ([] if empty).
    Other fields are kept. ``image_size`` (height, width) is needed only for an empty list.
    """
    _one_image(objects, "An SA-1B file")
    records, (height, width) = _prepare(objects, image_size)
    data = {
        "image": {"image_id": image_id, "width": width, "height": height, "file_name": file_name},
        "annotations": [_sa1b_annotation(record, height, width) for record in records],
    }
    return _write_json(path, data)


def _coco_annotation(record: Record, image_id: int, categories: Mapping[int, str]) -> dict[str, Any]:
    category_id = record.get("category_id", next(iter(categories)))
    if category_id not in categories:
        raise FormatError(
            f"Object {record['id']} has category_id {category_id!r}, which is not among the categories "
            f"{dict(categories)}; add it to categories."
        )
    annotation = {
        "id": record["id"],
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": record["segmentation"],
        "area": record["area"],
        "bbox": record["bbox"],
        "iscrowd": record.get("iscrowd", 0),
    }
    return _with_extras(annotation, record)


def write_coco(
    path: str | os.PathLike,
    objects: np.ndarray | Sequence[Mapping[str, Any]],
    *,
    image_id: int = 1,
    file_name: str = "",
    image_size: tuple[int, int] | None = None,
    categories: Mapping[int, str] | None = None,
) -> Path:
    """Write a COCO instance file of a label image, a stack of them, or records; returns the path.

    Records are taken as in `write_sa1b`. Each annotation has its mask as compressed COCO RLE,
    "area" and "bbox" recomputed from the mask, and "iscrowd" 0 (each mask is one object) unless
    the record says otherwise. ``categories`` maps id -> name (default ``{1: "object"}``); objects
    without a "category_id" get the first one.

    A stack of label images (..., H, W), e.g. (Z, H, W), is written whole: one COCO image per
    plane (ids from ``image_id`` on, in C order, empty planes included), each with ``"plane"``,
    its index along the leading axes (``[z]``). Its annotations are numbered 1, 2, ... through
    the file and carry the object's label as ``"object_id"``; `read_coco` reads the stack back.
    """
    categories = {1: "object"} if categories is None else dict(categories)
    if not categories:
        raise FormatError("categories is empty; give at least one, e.g. {1: 'object'}.")
    if isinstance(objects, np.ndarray) and objects.ndim > 2:
        images, annotations = _coco_stack(objects, image_id, file_name, categories)
    else:
        records, (height, width) = _prepare(objects, image_size)
        images = [{"id": image_id, "width": width, "height": height, "file_name": file_name}]
        annotations = [_coco_annotation(record, image_id, categories) for record in records]
    data = {
        "info": {"description": "instance masks written by samkit"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in categories.items()],
    }
    return _write_json(path, data)


def _coco_stack(
    labels: np.ndarray, image_id: int, file_name: str, categories: Mapping[int, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO images (one per plane of a label stack) and their annotations."""
    if labels.size == 0:
        raise FormatError(f"The label stack is empty (shape {labels.shape}): there is nothing to write.")
    height, width = labels.shape[-2:]
    images, annotations = [], []
    for k, plane in enumerate(np.ndindex(labels.shape[:-2])):
        images.append({
            "id": image_id + k, "width": width, "height": height, "file_name": file_name, "plane": list(plane)
        })
        for record in labels_to_records(_as_labels(labels[plane], f"plane {list(plane)}")):
            numbered = {**record, "id": len(annotations) + 1, "object_id": record["id"]}
            annotations.append(_coco_annotation(numbered, image_id + k, categories))
    return images, annotations


# ---------------------------------------------------------------------------------------------
# Reading SA-1B and COCO files


def _read_json(path: str | os.PathLike, hint: str) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FormatError(f"{path} is not a JSON file ({error}); {hint}.") from None


def _field(container: Any, key: str, kind: type, where: str, hint: str) -> Any:
    """``container[key]``, checked to be a JSON object holding that key with a value of ``kind``."""
    if not isinstance(container, dict):
        raise FormatError(f"{where}: expected a JSON object; got {_brief(container)}; {hint}.")
    if key not in container:
        raise FormatError(f"{where}: the key '{key}' is missing; {hint}.")
    value = container[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"{where}: '{key}' must be {_JSON_NAMES[kind]}; got {_brief(value)}; {hint}.")
    return value


def _image_size(image: Any, where: str, hint: str) -> tuple[int, int]:
    height = _field(image, "height", int, where, hint)
    width = _field(image, "width", int, where, hint)
    if height < 1 or width < 1:
        raise FormatError(f"{where}: width and height must be positive; got {width}x{height}.")
    return height, width


def _polygon_rle(polygons: list, height: int, width: int, where: str) -> RLE:
    def valid(polygon: Any) -> bool:
        return (
            isinstance(polygon, list)
            and len(polygon) >= 6
            and len(polygon) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon)
        )

    if not polygons or not all(valid(polygon) for polygon in polygons):
        raise FormatError(
            f"{where}: a polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists of at least "
            "three points each."
        )
    return _jsonable(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))


def _read_annotation(annotation: Any, where: str, height: int, width: int, hint: str) -> Record:
    segmentation = _field(annotation, "segmentation", object, where, hint)
    _checked_id(annotation.get("id"), where)
    if isinstance(segmentation, list):
        rle = _polygon_rle(segmentation, height, width, where)
    else:
        mask_height, mask_width = _size(segmentation, where)
        if (mask_height, mask_width) != (height, width):
            raise FormatError(
                f"{where}: the mask is {mask_height}x{mask_width} (height x width) but the image is "
                f"{height}x{width}; the annotation belongs to another image or the image size is wrong."
            )
        rle = _compressed(segmentation, where)
    return {**annotation, "segmentation": rle}


def _checked_unique(records: list[Record], where: str) -> list[Record]:
    duplicates = sorted(i for i, n in Counter(record["id"] for record in records).items() if n > 1)
    if duplicates:
        raise FormatError(f"{where}: annotation ids must be unique; repeated: {duplicates[:10]}.")
    return records


def read_sa1b(path: str | os.PathLike) -> tuple[np.ndarray, list[Record]]:
    """Read an SA-1B per-image JSON file: (label image, records).

    The records are the file's annotations in file order, each with "segmentation" as a compressed
    RLE (str counts). The label image paints them by `records_to_labels` (the first annotation
    covering a pixel keeps it: SA-1B masks overlap, the records keep every mask).
    """
    where = str(path)
    data = _read_json(path, _SA1B_HINT)
    image = _field(data, "image", dict, where, _SA1B_HINT)
    height, width = _image_size(image, f"{where}: image", _SA1B_HINT)
    annotations = _field(data, "annotations", list, where, _SA1B_HINT)
    records = [
        _read_annotation(annotation, f"{where}: annotation {i}", height, width, _SA1B_HINT)
        for i, annotation in enumerate(annotations)
    ]
    return records_to_labels(_checked_unique(records, where), (height, width)), records


def _pick_image(images: list, image_id: int | None, where: str) -> dict[str, Any]:
    ids = [_field(image, "id", int, f"{where}: image {i}", _COCO_HINT) for i, image in enumerate(images)]
    if image_id is None:
        if len(images) != 1:
            raise FormatError(
                f"{where}: the file holds {len(images)} images (ids {ids[:10]}); pass image_id= to choose one."
            )
        return images[0]
    if image_id not in ids:
        raise FormatError(f"{where}: there is no image with id {image_id}; the file has ids {ids[:10]}.")
    return images[ids.index(image_id)]


def read_coco(path: str | os.PathLike, image_id: int | None = None) -> tuple[np.ndarray, list[Record]]:
    """Read one image's instances from a COCO file: (label image, records).

    ``image_id`` may be left out when the file holds one image. Segmentations may be RLE (either
    form) or polygons; the records are that image's annotations in file order, each with
    "segmentation" as a compressed RLE (str counts). The label image is painted as in `read_sa1b`.

    A file written from a stack (every image has a ``"plane"``, see `write_coco`) is read whole
    when ``image_id`` is left out: labels (..., H, W) and every annotation as a record with its
    ``"plane"``. A record's "id" is the object's label: its ``"object_id"`` where the annotation has
    one (the annotation's own id is then kept as ``"annotation_id"``).
    """
    where = str(path)
    data = _read_json(path, _COCO_HINT)
    images = _field(data, "images", list, where, _COCO_HINT)
    annotations = _field(data, "annotations", list, where, _COCO_HINT)
    if image_id is None and images and all(isinstance(image, dict) and "plane" in image for image in images):
        return _read_coco_stack(where, images, annotations)
    image = _pick_image(images, image_id, where)
    height, width = _image_size(image, f"{where}: image {image['id']}", _COCO_HINT)
    records = []
    for i, annotation in enumerate(annotations):
        if _field(annotation, "image_id", int, f"{where}: annotation {i}", _COCO_HINT) == image["id"]:
            record = _read_annotation(annotation, f"{where}: annotation {i}", height, width, _COCO_HINT)
            records.append(_object_record(record, f"{where}: annotation {i}"))
    return records_to_labels(_checked_unique(records, where), (height, width)), records


def _object_record(record: Record, where: str) -> Record:
    """An annotation of a stack's plane as the record of its object: "id" is its "object_id"."""
    if "object_id" not in record:
        return record
    object_id = _checked_id(record["object_id"], f"{where}: object_id")
    return {**record, "id": object_id, "annotation_id": record["id"]}


def _plane(image: dict[str, Any], where: str) -> tuple[int, ...]:
    plane = image["plane"]
    if not isinstance(plane, list) or not plane or not all(_is_int(i) and i >= 0 for i in plane):
        raise FormatError(f"{where}: 'plane' must be a list of indices >= 0 (e.g. [z]); got {_brief(plane)}.")
    return tuple(plane)


def _read_coco_stack(where: str, images: list, annotations: list) -> tuple[np.ndarray, list[Record]]:
    """The label stack of a COCO file with one image per plane, and its records."""
    planes: dict[int, tuple[int, ...]] = {}
    sizes = set()
    for i, image in enumerate(images):
        image_where = f"{where}: image {i}"
        planes[_field(image, "id", int, image_where, _COCO_HINT)] = _plane(image, image_where)
        sizes.add(_image_size(image, image_where, _COCO_HINT))
    if len(planes) != len(images) or len({len(p) for p in planes.values()}) > 1 or len(sizes) > 1:
        raise FormatError(
            f"{where}: the images of a stack need unique ids, 'plane' indices of one length and one size; "
            f"got sizes {sorted(sizes)}."
        )
    depth = tuple(max(axis) + 1 for axis in zip(*planes.values()))
    if len(set(planes.values())) != len(planes) or len(planes) != math.prod(depth):
        raise FormatError(f"{where}: the images' 'plane' indices do not fill a stack of {depth} planes, each once.")
    height, width = sizes.pop()
    records = []
    for i, annotation in enumerate(annotations):
        annotation_where = f"{where}: annotation {i}"
        owner = _field(annotation, "image_id", int, annotation_where, _COCO_HINT)
        if owner not in planes:
            raise FormatError(f"{annotation_where}: its image_id {owner} is not one of the file's images.")
        record = _read_annotation(annotation, annotation_where, height, width, _COCO_HINT)
        records.append({**_object_record(record, annotation_where), "plane": list(planes[owner])})
    _checked_unique([{"id": r.get("annotation_id", r["id"])} for r in records], where)
    labels = np.zeros((*depth, height, width), dtype=_label_dtype(max((r["id"] for r in records), default=0)))
    for plane in np.ndindex(depth):
        here = [r for r in records if tuple(r["plane"]) == plane]
        labels[plane] = records_to_labels(_checked_unique(here, f"{where}: plane {list(plane)}"), (height, width))
    return labels, records


_CSV_COLUMNS = ("id", "height", "width", "rle")
_CSV_HINT = "a CSV of RLE strings has the columns id, height, width, rle (as write_strings_csv writes)"


def write_strings_csv(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write one 'start length' string per object of a label image: CSV columns id, height, width, rle.

    An image without objects gets one row of id 0 and an empty string, which keeps its size.
    """
    _one_image(np.asarray(labels), "A CSV file of RLE strings")
    labels = _as_labels(labels)
    path = Path(path)
    height, width = labels.shape
    ids = np.unique(labels[labels > 0])
    with atomic_output(path) as temporary, open(temporary, "x", encoding="utf-8") as file:
        file.write(",".join(_CSV_COLUMNS) + "\n")
        if len(ids) == 0:
            file.write(f"0,{height},{width},\n")
        file.writelines(f"{label},{height},{width},{encode_string(labels == label)}\n" for label in ids)
    return path


def read_strings_csv(path: str | os.PathLike) -> np.ndarray:
    """The label image of a CSV of 'start length' strings (see `write_strings_csv`).

    Rows of id 0 only give the image size. Where masks overlap, the first row covering a pixel
    keeps it (`records_to_labels`).
    """
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FormatError(f"{where}: cannot be read as a CSV file ({exc}).") from exc
    missing = [name for name in _CSV_COLUMNS if name not in columns]
    if missing:
        raise FormatError(f"{where}: the columns {missing} are missing; {_CSV_HINT}.")
    if not rows:
        raise FormatError(f"{where}: holds no rows, so the image size is unknown; {_CSV_HINT}.")
    parsed = []
    for i, row in enumerate(rows, start=2):
        try:
            object_id, height, width = int(row["id"]), int(row["height"]), int(row["width"])
        except (TypeError, ValueError):
            raise FormatError(f"{where}: line {i}: id, height and width must be whole numbers.") from None
        if object_id < 0:
            raise FormatError(f"{where}: line {i}: the id {object_id} is negative; ids are 0 (size only) or more.")
        if object_id:
            _checked_id(object_id, f"{where}: line {i}")
        parsed.append((i, object_id, _shape([height, width], f"{where}: line {i}: height, width"), row["rle"] or ""))
    sizes = {shape for _, _, shape, _ in parsed}
    if len(sizes) > 1:
        raise FormatError(f"{where}: the rows give different image sizes {sorted(sizes)}; one file holds one image.")
    shape = sizes.pop()
    records = []
    for line, object_id, _, text in parsed:
        if object_id:
            try:
                records.append({"id": object_id, "segmentation": decode_string(text, shape)})
            except FormatError as exc:
                raise FormatError(f"{where}: line {line}: {exc}") from None
    return records_to_labels(_checked_unique(records, where), shape)
