"""``samkit export-onnx --model M -o decoder.onnx [--encoder encoder.onnx]``: ONNX files of a model.

The decoder file has the interface of SAM's official ONNX export (the one its web demo runs);
see :mod:`samkit.onnx_export`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .errors import ParameterError
from .onnx_export import DEFAULT_OPSET, ENCODER_MIN_OPSET, MIN_OPSET, check_opset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``export-onnx`` command's arguments (the model options come from the main parser)."""
    parser.add_argument("-o", "--output", required=True,
                        help="ONNX file to write: prompt encoder + mask decoder, SAM's official ONNX interface")
    parser.add_argument("--encoder", help="also write the image encoder to this ONNX file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; the encoder needs {ENCODER_MIN_OPSET} or later)")
    parser.add_argument("--return-single-mask", action="store_true",
                        help="return only the best mask instead of all four (faster for large images)")
    parser.add_argument("--use-stability-score", action="store_true",
                        help="report the stability score of each mask instead of the predicted IoU")
    parser.add_argument("--return-extra-metrics", action="store_true",
                        help="also return stability scores and mask areas (five outputs)")


def run_from_args(args: argparse.Namespace, out: Callable[[str], None] = print) -> None:
    """Run the ``export-onnx`` command from parsed arguments (including --model and --device)."""
    from .checkpoint import check_model_name, load_model
    from .io import check_output_folder
    from .onnx_export import export_decoder, export_encoder

    check_output_folder(args.output)
    check_opset(args.opset, MIN_OPSET)
    if args.encoder:
        check_output_folder(args.encoder)
        check_opset(args.opset, ENCODER_MIN_OPSET)
        if Path(args.encoder).resolve() == Path(args.output).resolve():
            raise ParameterError("--encoder and -o name the same file: give the encoder its own file.")
    check_model_name(args.model)
    model = load_model(args.model, device=args.device)
    path = export_decoder(
        model,
        args.output,
        opset=args.opset,
        return_single_mask=args.return_single_mask,
        use_stability_score=args.use_stability_score,
        return_extra_metrics=args.return_extra_metrics,
    )
    out(f"wrote {path} (prompt encoder and mask decoder)")
    if args.encoder:
        out(f"wrote {export_encoder(model, args.encoder, opset=args.opset)} (image encoder)")
