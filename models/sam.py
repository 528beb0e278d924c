"""Segment-Anything (SAM) secondary-particle segmentation from a local checkpoint.

Paper 000 segments secondary particles in low-magnification SEM images with SAM automatic
masks and excludes merged and overlapping masks. This module

* loads a SAM checkpoint the user has on disk (``.pth``/``.pt`` state dict read with the
  tensor-only unpickler, or ``.safetensors``), inferring the architecture from tensor shapes;
* turns ``SamAutomaticMaskGenerator`` output into a label image (:func:`resolve_overlaps`);
* wraps both in :class:`SamSegmenter`.

No weights are downloaded. :func:`build_tiny_sam` makes a small randomly initialised SAM for
tests. Border-touching, size and info-bar filters act downstream on the label image.
"""

from __future__ import annotations

import importlib.util
import math
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

__all__ = [
    "SamCheckpointError",
    "SamSegmenter",
    "build_sam_from_config",
    "build_tiny_sam",
    "infer_sam_config",
    "load_sam",
    "read_sam_state_dict",
    "resolve_overlaps",
    "save_sam_checkpoint",
]

#: Everything ``segment_anything.build_sam._build_sam`` fixes, shared by vit_b/l/h.
_STANDARD_COMMON: dict[str, Any] = {
    "image_size": 1024,
    "patch_size": 16,
    "window_size": 14,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "prompt_embed_dim": 256,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_mlp_dim": 2048,
    "decoder_num_heads": 8,
    "decoder_attention_downsample_rate": 2,
    "num_multimask_outputs": 3,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 256,
}
_STANDARD_ENCODERS: dict[str, dict[str, Any]] = {
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [7, 15, 23, 31]},
}
_FIX = ("Pass a Segment-Anything checkpoint such as Meta's sam_vit_b_01ec64.pth (a plain state "
        "dict), or one written by models.sam.save_sam_checkpoint.")


class SamCheckpointError(ValueError):
    """A SAM checkpoint is missing, unreadable, or not a SAM state dict."""


# --------------------------------------------------------------------------- loading
def read_sam_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict without unpickling arbitrary objects.

    Parameters
    ----------
    checkpoint : str or Path
        ``.safetensors`` file, or a ``.pth``/``.pt`` torch state dict (read with
        ``torch.load(..., weights_only=True)``). A ``{"model": state_dict}`` or
        ``{"state_dict": state_dict}`` wrapper is unwrapped.

    Returns
    -------
    dict of str to torch.Tensor
        Tensors on the CPU.

    Raises
    ------
    SamCheckpointError
        If the file is missing, unreadable, or holds something else than tensors.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint not found: {path}. No weights are downloaded; {_FIX}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, text file, pickled module, ...
        raise SamCheckpointError(
            f"cannot read SAM checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}). "
            "Expected a tensors-only torch state dict (.pth/.pt) or a .safetensors file; if the file "
            "is a pickled model object, re-save model.state_dict(). " + _FIX
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise SamCheckpointError(f"{path} does not hold a state dict (name -> tensor). {_FIX}")
    return obj


def _shape(state_dict: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        found = ", ".join(sorted(state_dict)[:3])
        raise SamCheckpointError(
            f"not a SAM state dict: key {key!r} is missing (found keys like {found}). {_FIX}"
        )
    return tuple(state_dict[key].shape)


def _indexes(state_dict: dict[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state_dict if (m := pattern.match(k))})


def infer_sam_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Infer the SAM architecture from the tensor shapes of a state dict.

    Parameters
    ----------
    state_dict : dict of str to torch.Tensor
        SAM weights (only the shapes are read, so ``meta`` tensors work).

    Returns
    -------
    dict
        ``model_type`` ('vit_b', 'vit_l', 'vit_h' when every parameter equals that
        ``segment_anything.sam_model_registry`` entry, else 'custom') and the build
        parameters: ``encoder_embed_dim``, ``encoder_depth``, ``encoder_num_heads``,
        ``encoder_global_attn_indexes``, ``image_size``, ``patch_size``, ``window_size``,
        ``mlp_ratio``, ``qkv_bias``, ``prompt_embed_dim``, ``mask_in_chans``, ``decoder_depth``,
        ``decoder_mlp_dim``, ``decoder_num_heads``, ``decoder_attention_downsample_rate``,
        ``num_multimask_outputs``, ``iou_head_depth``, ``iou_head_hidden_dim``.

    Raises
    ------
    SamCheckpointError
        If a key SAM needs is missing or the shapes are inconsistent.

    Notes
    -----
    Global-attention blocks have ``2 * image_size / patch_size - 1`` rows of ``rel_pos_h``,
    windowed blocks ``2 * window_size - 1``; its columns are the head dim. The decoder's head
    count leaves no trace in the shapes: SAM's 8 is used (or the largest divisor of the
    attention width below 8).
    """
    sd = state_dict
    embed_dim, in_chans, patch, _ = _shape(sd, "image_encoder.patch_embed.proj.weight")
    grid = _shape(sd, "image_encoder.pos_embed")[1]
    depth = len(_indexes(sd, "image_encoder.blocks."))
    if depth == 0 or in_chans != 3:
        raise SamCheckpointError(f"not a SAM state dict: no RGB ViT image encoder blocks. {_FIX}")
    rows, head_dims = [], set()
    for i in range(depth):
        n_rows, head_dim = _shape(sd, f"image_encoder.blocks.{i}.attn.rel_pos_h")
        rows.append(n_rows)
        head_dims.add(head_dim)
    global_rows = 2 * grid - 1
    window_rows = {r for r in rows if r != global_rows}
    if len(head_dims) != 1 or len(window_rows) > 1 or embed_dim % next(iter(head_dims)):
        raise SamCheckpointError(f"inconsistent SAM image encoder attention shapes. {_FIX}")
    prompt_dim = _shape(sd, "prompt_encoder.point_embeddings.0.weight")[1]
    if _shape(sd, "image_encoder.neck.0.weight")[0] != prompt_dim:
        raise SamCheckpointError(f"SAM neck and prompt encoder widths differ. {_FIX}")
    dec = "mask_decoder.transformer."
    attn_width = _shape(sd, dec + "final_attn_token_to_image.q_proj.weight")[0]
    config: dict[str, Any] = {
        "encoder_embed_dim": embed_dim,
        "encoder_depth": depth,
        "encoder_num_heads": embed_dim // next(iter(head_dims)),
        "encoder_global_attn_indexes": [i for i, r in enumerate(rows) if r == global_rows],
        "image_size": grid * patch,
        "patch_size": patch,
        "window_size": (window_rows.pop() + 1) // 2 if window_rows else grid,
        "mlp_ratio": _shape(sd, "image_encoder.blocks.0.mlp.lin1.weight")[0] / embed_dim,
        "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in sd,
        "prompt_embed_dim": prompt_dim,
        "mask_in_chans": _shape(sd, "prompt_encoder.mask_downscaling.3.weight")[0],
        "decoder_depth": len(_indexes(sd, dec + "layers.")),
        "decoder_mlp_dim": _shape(sd, dec + "layers.0.mlp.lin1.weight")[0],
        "decoder_num_heads": math.gcd(attn_width, 8),
        "decoder_attention_downsample_rate": prompt_dim // attn_width,
        "num_multimask_outputs": _shape(sd, "mask_decoder.mask_tokens.weight")[0] - 1,
        "iou_head_depth": len(_indexes(sd, "mask_decoder.iou_prediction_head.layers.")),
        "iou_head_hidden_dim": _shape(sd, "mask_decoder.iou_prediction_head.layers.0.weight")[0],
    }
    config["model_type"] = "custom"
    for name, encoder in _STANDARD_ENCODERS.items():
        if all(config[k] == v for k, v in {**_STANDARD_COMMON, **encoder}.items()):
            config["model_type"] = name
    return config


def build_sam_from_config(config: dict[str, Any]) -> Sam:
    """Build a randomly initialised SAM from :func:`infer_sam_config` output.

    Standard configs go through ``segment_anything.sam_model_registry[model_type]``; others
    are built as ``segment_anything.build_sam._build_sam`` does, with the given parameters.
    """
    if config.get("model_type") in _STANDARD_ENCODERS:
        return sam_model_registry[config["model_type"]](checkpoint=None)
    c = config
    grid = c["image_size"] // c["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=c["encoder_depth"], embed_dim=c["encoder_embed_dim"], img_size=c["image_size"],
            mlp_ratio=c["mlp_ratio"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["encoder_num_heads"], patch_size=c["patch_size"], qkv_bias=c["qkv_bias"],
            use_rel_pos=True, global_attn_indexes=tuple(c["encoder_global_attn_indexes"]),
            window_size=c["window_size"], out_chans=c["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"], image_embedding_size=(grid, grid),
            input_image_size=(c["image_size"], c["image_size"]), mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=c["num_multimask_outputs"],
            transformer=TwoWayTransformer(
                depth=c["decoder_depth"], embedding_dim=c["prompt_embed_dim"],
                mlp_dim=c["decoder_mlp_dim"], num_heads=c["decoder_num_heads"],
                attention_downsample_rate=c["decoder_attention_downsample_rate"],
            ),
            transformer_dim=c["prompt_embed_dim"], iou_head_depth=c["iou_head_depth"],
            iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(checkpoint: str | Path, device: str = "cpu") -> Sam:
    """Load a SAM model from a local checkpoint, inferring its architecture.

    Parameters
    ----------
    checkpoint : str or Path
        ``.pth``/``.pt`` state dict or ``.safetensors`` file (see :func:`read_sam_state_dict`).
    device : str
        Torch device for the model.

    Returns
    -------
    segment_anything.modeling.Sam
        In eval mode on ``device``; ``model.sam_config`` holds :func:`infer_sam_config` output.

    Raises
    ------
    SamCheckpointError
        If the file is missing or unreadable, or its tensors do not fit a SAM.
    """
    state_dict = read_sam_state_dict(checkpoint)
    config = infer_sam_config(state_dict)
    sam = build_sam_from_config(config)
    try:
        sam.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise SamCheckpointError(
            f"{checkpoint} does not fit the inferred SAM ({config['model_type']}): {str(exc)[:300]}. {_FIX}"
        ) from exc
    sam.sam_config = config
    return sam.eval().to(device)


def build_tiny_sam(seed: int = 0) -> Sam:
    """Build a small randomly initialised SAM (about 0.4 M parameters) for tests and demos.

    Encoder: embed 64, depth 2, 2 heads, image 256, window 8, global attention in block 1.
    Decoder: width 64, MLP 256. Zero-initialised tensors (positional embeddings) are filled
    with small noise so that a save/load round trip is a real check.
    """
    generator = torch.Generator().manual_seed(seed)
    config = {
        **_STANDARD_COMMON,
        "model_type": "custom", "encoder_embed_dim": 64, "encoder_depth": 2, "encoder_num_heads": 2,
        "encoder_global_attn_indexes": [1], "image_size": 256, "window_size": 8,
        "prompt_embed_dim": 64, "decoder_mlp_dim": 256, "iou_head_hidden_dim": 64,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam_from_config(config)
    with torch.no_grad():
        for tensor in sam.state_dict().values():
            if tensor.is_floating_point() and not tensor.any():
                tensor.normal_(0.0, 0.02, generator=generator)
    sam.sam_config = config
    return sam.eval()


def save_sam_checkpoint(sam: Sam, path: str | Path) -> Path:
    """Write ``sam``'s state dict: ``.safetensors`` by suffix, else ``torch.save`` (tensors only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)
    return path


# --------------------------------------------------------------------------- masks -> labels
def resolve_overlaps(
    masks: list[dict[str, Any]],
    shape: tuple[int, int],
    *,
    max_area_fraction: float = 0.25,
    contain_frac: float = 0.8,
    overlap_frac: float = 0.1,
    min_part_coverage: float = 0.5,
) -> np.ndarray:
    """Turn SAM automatic masks into a label image of unambiguous particles.

    Rules, applied in order (``inter`` = pixels shared by two masks, ``small`` = area of the
    smaller one; ``A`` contains ``B`` when ``inter >= contain_frac * area(B)`` and B is not larger):

    1. **Background**: drop empty masks and masks covering more than ``max_area_fraction`` of
       the image (field/background masks).
    2. **Agglomerates**: a mask containing at least two distinct other masks (distinct: they
       overlap each other by at most ``overlap_frac`` of the smaller; chosen smallest first)
       whose union covers at least ``min_part_coverage`` of it is a merged mask: drop it, keep
       its parts.
    3. **Duplicates**: of masks nested one-to-one (the same particle twice), keep the one with
       the higher ``predicted_iou`` (ties: ``stability_score``, then area).
    4. **Partial overlap**: two survivors with ``inter > overlap_frac * small`` have an
       ambiguous boundary: drop both (paper 000 excludes overlapping particles). Pixels of
       smaller overlaps are set to background, so labels never share pixels.

    Parameters
    ----------
    masks : list of dict
        ``SamAutomaticMaskGenerator.generate`` output (``output_mode="binary_mask"``): each has
        ``segmentation`` (bool, H x W) and ``predicted_iou``; ``stability_score`` is optional.
    shape : tuple of int
        Image shape ``(H, W)``.
    max_area_fraction, contain_frac, overlap_frac, min_part_coverage : float
        Thresholds of the rules above.

    Returns
    -------
    np.ndarray
        int32 label image, H x W, 0 = background, survivors labelled 1..n in input order.
    """
    h, w = int(shape[0]), int(shape[1])
    labels = np.zeros((h, w), dtype=np.int32)
    flat = []
    for m in masks:
        seg = np.asarray(m["segmentation"])
        if seg.shape != (h, w):
            raise ValueError(f"mask shape {seg.shape} differs from image shape {(h, w)}; "
                             "use output_mode='binary_mask'")
        flat.append(np.flatnonzero(seg))
    area = np.array([f.size for f in flat], dtype=np.int64)
    alive = (area > 0) & (area <= max_area_fraction * h * w)  # rule 1
    idx = np.flatnonzero(alive)
    if idx.size == 0:
        return labels
    rows = np.repeat(np.arange(idx.size), area[idx])
    pix = sparse.csr_matrix((np.ones(rows.size, np.int32), (rows, np.concatenate([flat[i] for i in idx]))),
                            shape=(idx.size, h * w))
    inter = (pix @ pix.T).toarray()
    a = area[idx].astype(np.float64)
    small = np.minimum.outer(a, a)
    contains = (inter >= contain_frac * a[None, :]) & (a[None, :] <= a[:, None])
    np.fill_diagonal(contains, False)
    distinct = inter <= overlap_frac * small
    keep = np.ones(idx.size, dtype=bool)

    for i in range(idx.size):  # rule 2
        parts: list[int] = []
        for j in sorted(np.flatnonzero(contains[i]), key=lambda j: a[j]):
            if all(distinct[j, p] for p in parts):
                parts.append(j)
        if len(parts) >= 2 and pix[parts].max(axis=0).sum() >= min_part_coverage * a[i]:
            keep[i] = False

    def score(i: int) -> tuple[float, float, float]:
        m = masks[idx[i]]
        return (float(m.get("predicted_iou", 0.0)), float(m.get("stability_score", 0.0)), a[i])

    nested = contains | contains.T
    kept: list[int] = []
    for i in sorted(np.flatnonzero(keep), key=score, reverse=True):  # rule 3
        if any(nested[i, k] for k in kept):
            keep[i] = False
        else:
            kept.append(i)

    partial_overlap = (inter > overlap_frac * small) & keep[:, None] & keep[None, :]  # rule 4
    np.fill_diagonal(partial_overlap, False)
    keep &= ~partial_overlap.any(axis=1)

    count = np.zeros(h * w, dtype=np.int32)
    out = labels.reshape(-1)
    for label, i in enumerate(np.flatnonzero(keep), start=1):
        out[flat[idx[i]]] = label
        count[flat[idx[i]]] += 1
    out[count > 1] = 0
    return labels


# --------------------------------------------------------------------------- segmenter
class SamSegmenter:
    """SAM automatic-mask segmentation of secondary particles in a grayscale SEM image.

    Parameters
    ----------
    checkpoint : str or Path
        Local SAM checkpoint (see :func:`load_sam`).
    points_per_side, pred_iou_thresh, stability_score_thresh, min_mask_region_area
        ``segment_anything.SamAutomaticMaskGenerator`` settings (``min_mask_region_area > 0``
        needs OpenCV).
    device : str
        Torch device.
    **generator_kwargs
        Further ``SamAutomaticMaskGenerator`` arguments (``output_mode`` is fixed to
        ``"binary_mask"``); ``resolve_overlaps`` thresholds go to :meth:`segment`.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        points_per_side: int = 32,
        pred_iou_thresh: float = 0.86,
        stability_score_thresh: float = 0.92,
        min_mask_region_area: int = 0,
        device: str = "cpu",
        **generator_kwargs: Any,
    ) -> None:
        if generator_kwargs.pop("output_mode", "binary_mask") != "binary_mask":
            raise ValueError("SamSegmenter needs output_mode='binary_mask'")
        if min_mask_region_area > 0 and importlib.util.find_spec("cv2") is None:
            raise ImportError("min_mask_region_area > 0 needs OpenCV (pip install opencv-python-headless)")
        self.model = load_sam(checkpoint, device=device)
        self.generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=points_per_side,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            min_mask_region_area=min_mask_region_area,
            output_mode="binary_mask",
            **generator_kwargs,
        )

    @staticmethod
    def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
        """Convert a float grayscale image in [0, 1] (H x W) to uint8 RGB (H x W x 3)."""
        image = np.asarray(image, dtype=np.float64)
        if image.ndim != 2 or not np.isfinite(image).all():
            raise ValueError(f"expected a finite grayscale H x W image, got shape {image.shape}")
        gray = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)

    def generate_masks(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Raw ``SamAutomaticMaskGenerator`` records for a float grayscale image in [0, 1]."""
        with torch.no_grad():
            return self.generator.generate(self.to_rgb_uint8(image))

    def segment(self, image: np.ndarray, **resolve_kwargs: Any) -> np.ndarray:
        """Label secondary particles of a float grayscale image in [0, 1] (H x W).

        Returns
        -------
        np.ndarray
            int32 labels, H x W, 0 = background (see :func:`resolve_overlaps`).
        """
        masks = self.generate_masks(image)
        return resolve_overlaps(masks, np.shape(image), **resolve_kwargs)
