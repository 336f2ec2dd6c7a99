"""``pgseg export-onnx`` of MVP-SEG checkpoints and the baseline: the frozen dense image tower
(docs/MVP_SEG.md §6).

The graph maps ``images`` [B, 3, S, S] (ImageNet-normalised, S = ``--size``, a multiple of the stride) to
``dense`` [B, D, S/stride, S/stride] (L2-normalised), dynamic in B only: the TorchScript exporter fixes
the token count inside open_clip's attention reshapes, so the spatial size is the traced one (recorded as
``input_size``; resize or pad inputs to it). The sidecar ``.json`` records the
method, the backbone reference, the checkpoint's sha256 and, for MVP-SEG, τ1, τ2, γ and whether GPR gates:
with class embeddings from the checkpoint (the text side is not exported) the masks follow
docs/MVP_SEG.md §2.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DependencyError
from ..utils.io import atomic_write, atomic_write_json, check_writable_file
from .checkpoint import load_predictor

__all__ = ["export_method_onnx", "MVP_ONNX_FORMAT"]

MVP_ONNX_FORMAT = "pgseg-onnx-dense-backbone"
OPSET = 17


class _DenseGraph(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.dense(images)


def export_method_onnx(reference: str, out: str | Path, *, size: int = 448) -> dict[str, Any]:
    """Export the dense tower of ``baseline:BACKBONE`` or an MVP-SEG checkpoint to ``out`` (+ ``.json``).

    Raises:
        ConfigError: ``out`` not ``.onnx`` or a size not a multiple of the stride. DependencyError: onnx
            missing. OutputError: unwritable outputs. CheckpointError from loading.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"the output must be a .onnx file, got {out}")
    sidecar = out.with_suffix(".json")
    for path in (out, sidecar):
        check_writable_file(path)
    try:
        import onnx
    except ImportError as e:
        raise DependencyError("ONNX export needs onnx: pip install 'pgseg[onnx]'") from e
    loaded = load_predictor(reference, "cpu")
    backbone = loaded.predictor.backbone
    stride = backbone.stride
    if size <= 0 or size % stride:
        raise ConfigError(f"size must be a positive multiple of the backbone stride {stride}, got {size}")
    example = torch.zeros(1, 3, size, size)

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _DenseGraph(backbone).eval(),
                (example,),
                tmp,
                dynamo=False,
                input_names=["images"],
                output_names=["dense"],
                dynamic_axes={
                    "images": {0: "batch", 2: "height", 3: "width"},
                    "dense": {0: "batch", 2: "h", 3: "w"},
                },
                opset_version=OPSET,
                do_constant_folding=True,
            )
        onnx.checker.check_model(tmp)

    atomic_write(out, write)
    meta: dict[str, Any] = {
        "format": MVP_ONNX_FORMAT,
        "onnx": out.name,
        "opset": OPSET,
        "method": loaded.method,
        "backbone": backbone.reference,
        "stride": stride,
        "input_size": [size, size],
        "inputs": ["images"],
        "outputs": ["dense"],
        "checkpoint": loaded.path,
        "checkpoint_sha256": loaded.sha256,
    }
    if loaded.method == "mvp-seg":
        model = loaded.predictor.model
        meta.update(tau1=float(model.log_tau1.detach().exp()), tau2=float(model.log_tau2.detach().exp()))
        meta["gamma"] = model.cfg.gamma
        meta["gpr"] = bool(model.cfg.gpr)
    atomic_write_json(sidecar, meta)
    return {**meta, "path": str(out), "sidecar": str(sidecar)}
