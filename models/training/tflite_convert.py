"""TFLite conversion with litert-torch, run inside the separate `.venv-tflite` environment.

    python -m models.training.tflite_convert --spec '{"architecture": ...}' --weights W.pt \\
        --calibration C.npy --int8 model.tflite --float model_float.tflite

Why litert-torch and not onnx2tf: it converts the trained torch module directly (no ONNX to
TensorFlow graph rewriting, no TensorFlow install), and quantizes with PyTorch's PT2E flow
(symmetric per-channel INT8 weights, INT8 activations calibrated on real training windows,
float input and output), so the edge feeds both runtimes the same float features.
`W.pt` is a state dict this same training run wrote a moment ago (weights_only loading).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models.training.nets import build


def convert(
    model: torch.nn.Module, calibration: np.ndarray, int8_path: Path, float_path: Path
) -> None:
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = (torch.from_numpy(calibration[:1, None]),)
    litert_torch.convert(model, example).export(str(float_path))
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    graph = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        for window in calibration:
            graph(torch.from_numpy(window[None, None]))
    graph = convert_pt2e(graph, fold_quantize=False)
    litert_torch.convert(graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(int8_path)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--spec", required=True, help="the network's spec, as JSON")
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--float", dest="float_path", type=Path, required=True)
    args = parser.parse_args()
    model = build(json.loads(args.spec))
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    convert(model.eval(), np.load(args.calibration), args.int8, args.float_path)


if __name__ == "__main__":
    main()
