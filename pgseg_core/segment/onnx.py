"""ONNX export of the image encoder and an ONNX Runtime encoder for ``pgseg segment --backend onnx``.

The exported graph is the class-independent half of inference (``encode_image(dense=True)``):

    input   images      [B,3,H,W] float32, ImageNet-normalised, H and W multiples of 16 (dynamic B, H, W)
    outputs group_emb   [B,S,D]   final group tokens through the image projector (not normalised)
            image_emb   [B,D]     image embedding (not normalised)
            assign_0..  [B,S_i,N_i] per grouping stage, softmax-over-groups assignment (stage 0: N_0 = h·w)

Text embeddings are not in the graph: ``segment`` still embeds the class names with the checkpoint's text
tower (or reads them from the text cache), and the scoring rule (:func:`pgseg_core.inference.select_rule`)
runs in torch on the ONNX outputs, so the masks equal the torch backend's.

A JSON sidecar ``<model>.json`` records the model config, logit_scale, the export size, the output names and
the checkpoint's identity (``checkpoint_digest``: the first 16 hex digits of
:func:`pgseg_core.checkpoint.checkpoint_sha256`); ``segment`` checks that the ONNX file belongs to the
``--checkpoint`` it is given.
The exporter is torch's TorchScript-based ``torch.onnx.export(dynamo=False)`` with dynamic batch and spatial
axes (the pos-embed is resized bicubically inside the graph for every input size).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, DependencyError
from ..utils.io import atomic_write, atomic_write_json, check_writable_file, output_error, remove_stale_temps
from ..inference import TOKEN_STRIDE, CropFeatures, group_probabilities

__all__ = ["export_onnx", "export_checkpoint", "OnnxEncoder", "ONNX_FORMAT", "onnx_sidecar_path"]

logger = logging.getLogger("pgseg.segment")

ONNX_FORMAT = "pgseg-onnx-image-encoder"
OPSET = 17


def onnx_sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


class _EncoderGraph(torch.nn.Module):
    """``encode_image(dense=True)`` with tensor outputs only (what the exporter traces)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.encode_image(images, dense=True)
        return (out.group_emb, out.image_emb, *out.assign_soft)


def _trace_size(model: Any, size: int) -> tuple[int, int]:
    """(H, W) of the tracing example: ``size × size`` unless that is the pos-embed's own grid."""
    # trace at a grid other than the pos-embed's own, so its bicubic resize (identity at the native grid) is
    # in the graph and follows the input size; at the native grid the eager model skips it and the export
    # would hard-code the native token count
    native = tuple(int(g) for g in model.img_encoder.grid)
    if (size // TOKEN_STRIDE, size // TOKEN_STRIDE) != native:
        return (size, size)
    return (size, size + TOKEN_STRIDE)


def _onnx_writer(
    graph: torch.nn.Module, example: torch.Tensor, outputs: list[str], n_stages: int, onnx: Any
) -> Any:
    """``write(tmp_path)``: trace ``graph`` on ``example`` to ONNX with dynamic axes, then check the file."""
    dynamic = {
        "images": {0: "batch", 2: "height", 3: "width"},
        "group_emb": {0: "batch"},
        "image_emb": {0: "batch"},
    }
    for i in range(n_stages):
        dynamic[f"assign_{i}"] = {0: "batch"} if i else {0: "batch", 2: "tokens"}

    def write(tmp: str) -> None:
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about Python-side shape arithmetic
            torch.onnx.export(
                graph,
                (example,),
                tmp,
                dynamo=False,
                input_names=["images"],
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
            )
        onnx.checker.check_model(tmp)

    return write


def export_onnx(
    model: Any,
    out_path: str | Path,
    *,
    size: int = 448,
    config: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    checkpoint_digest: str | None = None,
) -> dict[str, Any]:
    """Export the image encoder of ``model`` to ONNX (dynamic batch / height / width) with a JSON sidecar.

    Args:
        model: a PGSeg model (CPU, eval mode is set here).
        out_path: the ``.onnx`` file to write (atomically); the sidecar goes beside it as ``.json``.
        size: side of the square example input used for tracing, pixels (multiple of 16); when that is the
            pos-embed's own grid, the trace uses ``size × (size + 16)`` instead. Any multiple of 16 works at
            run time.
        config: the run config dict to record in the sidecar.
        checkpoint / checkpoint_digest: where the weights came from (recorded; checked by ``segment``).

    Returns:
        The sidecar dict (``format``, ``onnx``, ``opset``, ``input_size``, ``inputs``, ``outputs``,
        ``logit_scale``, ``num_stages``, ``config``, ``checkpoint``, ``checkpoint_digest``, versions).

    Both files are written atomically: a failed write (a full disk) leaves an old export as it was; the old
    sidecar is removed only once the new graph is complete, just before it replaces the old one, so a run
    killed at any point leaves at worst a graph without a sidecar, which the ONNX backend refuses (export
    again), never a graph beside the sidecar of another checkpoint.

    Raises:
        DependencyError: the ``onnx`` extra is not installed. OutputError: a file cannot be written (the
        message names it: no permission, a full disk). ConfigError-free: a bad ``size`` raises
        ValueError (the CLI validates it).
    """
    if size <= 0 or size % TOKEN_STRIDE:
        raise ValueError(f"export size must be a positive multiple of {TOKEN_STRIDE}, got {size}")
    try:
        import onnx
    except ImportError as e:
        raise DependencyError("ONNX export needs the onnx package: pip install 'pgseg[onnx]'") from e
    out_path = Path(out_path)
    model = model.cpu().eval()
    hw = _trace_size(model, size)
    example = torch.zeros(1, 3, *hw)
    with torch.no_grad():
        n_stages = len(model.encode_image(example, dense=True).assign_soft)
    outputs = ["group_emb", "image_emb"] + [f"assign_{i}" for i in range(n_stages)]
    write = _onnx_writer(_EncoderGraph(model).eval(), example, outputs, n_stages, onnx)
    sidecar = onnx_sidecar_path(out_path)

    def write_graph(tmp: str) -> None:
        write(tmp)
        sidecar.unlink(missing_ok=True)  # never a new graph beside an old sidecar (another checkpoint's)

    try:
        atomic_write(out_path, write_graph)
    except OSError as e:
        raise output_error(sidecar if str(e.filename) == str(sidecar) else out_path, e) from e
    meta = {
        "format": ONNX_FORMAT,
        "onnx": out_path.name,
        "opset": OPSET,
        "input_size": list(hw),
        "inputs": {"images": "[B,3,H,W] float32 ImageNet-normalised, H and W multiples of 16"},
        "outputs": outputs,
        "token_stride": TOKEN_STRIDE,
        "num_stages": n_stages,
        "logit_scale": float(model.logit_scale_value()),
        "config": config or {},
        "checkpoint": checkpoint,
        "checkpoint_digest": checkpoint_digest,
        "torch_version": str(torch.__version__),
        "onnx_version": str(onnx.__version__),
    }
    try:
        atomic_write_json(sidecar, meta)
    except OSError as e:
        raise output_error(sidecar, e) from e
    logger.info("exported the image encoder to %s (%d grouping stages)", out_path, n_stages)
    return meta


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, size: int = 448) -> dict[str, Any]:
    """Export a checkpoint's image encoder to ONNX (``pgseg export-onnx``), with a ``.json`` sidecar.

    Args:
        checkpoint: any checkpoint :func:`pgseg_core.models.factory.load_checkpoint` reads.
        out: the ``.onnx`` file.
        size: square tracing size in pixels, a multiple of 16 (inputs of any multiple of 16 work later).

    Returns:
        The sidecar dict (:func:`export_onnx`) plus ``"path"`` and ``"sidecar"``.

    Raises:
        ConfigError: a bad size or a file name without ``.onnx``. CheckpointError, DependencyError: an
        unreadable checkpoint, onnx missing. OutputError: ``out`` or its sidecar is a folder, is under a
        file or in a folder that cannot be created or written (checked before the checkpoint is read), or
        a write fails (:func:`export_onnx`).
    """
    from ..checkpoint import load_checkpoint

    if size <= 0 or size % TOKEN_STRIDE:
        raise ConfigError(f"size must be a positive multiple of {TOKEN_STRIDE} pixels, got {size}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"the output must be a .onnx file, got {out}")
    for path in (out, onnx_sidecar_path(out)):
        check_writable_file(path)
    remove_stale_temps(out.parent)
    model, info = load_checkpoint(checkpoint, "cpu")
    meta = export_onnx(
        model,
        out,
        size=size,
        config=info.config.to_dict(),
        checkpoint=str(info.path),
        checkpoint_digest=info.sha256[:16],
    )
    return {**meta, "path": str(out), "sidecar": str(onnx_sidecar_path(out))}


class OnnxEncoder:
    """Image encoder run by ONNX Runtime on the CPU; returns the same :class:`CropFeatures` as torch.

    Args:
        onnx_path: a file written by :func:`export_onnx` (with its ``.json`` sidecar).
        checkpoint_digest: identity of the checkpoint used for the text side (the first 16 hex digits of
            :func:`pgseg_core.checkpoint.checkpoint_sha256`); must match the sidecar's (None skips the check).
        threads: intra-op threads (0 = ONNX Runtime's default).

    Raises:
        DependencyError: onnxruntime is not installed.
        CheckpointError: missing / unreadable file or sidecar, or an export of another checkpoint.
    """

    def __init__(self, onnx_path: str | Path, checkpoint_digest: str | None = None, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise DependencyError("the onnx backend needs onnxruntime: pip install 'pgseg[onnx]'") from e
        path = Path(onnx_path)
        if not path.is_file():
            raise CheckpointError(f"ONNX model not found: {path}; create it with 'pgseg export-onnx'")
        side = onnx_sidecar_path(path)
        try:
            self.meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(
                f"cannot read the sidecar {side} of {path} ({e}); re-export with 'pgseg export-onnx'"
            ) from None
        if self.meta.get("format") != ONNX_FORMAT:
            raise CheckpointError(f"{side} is not a pgseg ONNX sidecar; re-export with 'pgseg export-onnx'")
        stored = self.meta.get("checkpoint_digest")
        if checkpoint_digest is not None and stored is not None and stored != checkpoint_digest:
            raise CheckpointError(
                f"{path} was exported from another checkpoint ({self.meta.get('checkpoint')}); "
                "export it again from the checkpoint you segment with"
            )
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise CheckpointError(f"cannot load ONNX model {path}: {str(e).splitlines()[0]}") from None
        self.outputs = list(self.meta["outputs"])
        self.calls = 0

    def __call__(self, crops: torch.Tensor) -> CropFeatures:
        """crops [B,3,H,W] normalised (H, W multiples of 16) -> :class:`CropFeatures` (float32, CPU)."""
        self.calls += 1
        x = crops.detach().float().cpu().contiguous().numpy()
        values = dict(zip(self.outputs, self.session.run(self.outputs, {"images": x})))
        group_emb = torch.from_numpy(values["group_emb"])
        image_emb = torch.from_numpy(values["image_emb"])
        assign = [torch.from_numpy(values[f"assign_{i}"]) for i in range(int(self.meta["num_stages"]))]
        grid = (crops.shape[-2] // TOKEN_STRIDE, crops.shape[-1] // TOKEN_STRIDE)
        # the post-processing of pgseg_core.inference.extract_features
        return CropFeatures(
            group_emb=F.normalize(group_emb.float(), dim=-1),
            image_emb=F.normalize(image_emb.float(), dim=-1),
            group_probs=group_probabilities([a.float() for a in assign], grid),
        )
