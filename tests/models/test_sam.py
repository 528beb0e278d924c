"""Tests for models.sam: checkpoint loading, architecture inference, overlap rules, segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry

from models.sam import (
    SamCheckpointError,
    SamSegmenter,
    build_tiny_sam,
    infer_sam_config,
    load_sam,
    resolve_overlaps,
    save_sam_checkpoint,
)

SHAPE = (100, 100)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple:
    sam = build_tiny_sam(seed=0)
    path = save_sam_checkpoint(sam, tmp_path_factory.mktemp("sam") / "tiny.pth")
    return sam, path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tiny_sam_round_trip(tmp_path, suffix):
    sam = build_tiny_sam(seed=1)
    path = save_sam_checkpoint(sam, tmp_path / f"tiny{suffix}")
    loaded = load_sam(path)
    saved, got = sam.state_dict(), loaded.state_dict()
    assert saved.keys() == got.keys()
    assert all(torch.equal(saved[k], got[k]) for k in saved)
    assert not loaded.training
    cfg = loaded.sam_config
    assert cfg["model_type"] == "custom"
    assert (cfg["encoder_embed_dim"], cfg["encoder_depth"], cfg["encoder_num_heads"]) == (64, 2, 2)
    assert cfg["encoder_global_attn_indexes"] == [1]
    assert (cfg["image_size"], cfg["window_size"], cfg["prompt_embed_dim"]) == (256, 8, 64)
    assert loaded.image_encoder.img_size == 256


def test_tiny_sam_seed_changes_weights():
    a, b = build_tiny_sam(seed=0).state_dict(), build_tiny_sam(seed=1).state_dict()
    assert not torch.equal(a["image_encoder.pos_embed"], b["image_encoder.pos_embed"])
    assert torch.equal(a["image_encoder.pos_embed"], build_tiny_sam(seed=0).state_dict()["image_encoder.pos_embed"])


def test_vit_b_takes_registry_path(tmp_path):
    torch.manual_seed(0)
    reference = sam_model_registry["vit_b"]()
    path = save_sam_checkpoint(reference, tmp_path / "sam_vit_b.pth")
    loaded = load_sam(path)
    assert loaded.sam_config["model_type"] == "vit_b"
    assert loaded.sam_config["encoder_global_attn_indexes"] == [2, 5, 8, 11]
    key = "image_encoder.blocks.11.mlp.lin2.weight"
    assert torch.equal(loaded.state_dict()[key], reference.state_dict()[key])


@pytest.mark.parametrize(("name", "dim", "depth", "heads", "globals_"), [
    ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
    ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
])
def test_infer_config_of_large_registry_models(name, dim, depth, heads, globals_):
    with torch.device("meta"):  # shapes only, no memory
        state_dict = sam_model_registry[name]().state_dict()
    cfg = infer_sam_config(state_dict)
    assert cfg["model_type"] == name
    assert (cfg["encoder_embed_dim"], cfg["encoder_depth"], cfg["encoder_num_heads"]) == (dim, depth, heads)
    assert cfg["encoder_global_attn_indexes"] == globals_
    assert cfg["image_size"] == 1024


def test_missing_checkpoint_error(tmp_path):
    with pytest.raises(SamCheckpointError, match="not found.*sam_vit_b_01ec64.pth"):
        load_sam(tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_text_file_error(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(SamCheckpointError, match="cannot read SAM checkpoint"):
        load_sam(path)


def test_other_model_state_dict_error(tmp_path):
    path = tmp_path / "resnet_like.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict(), path)
    with pytest.raises(SamCheckpointError, match="not a SAM state dict.*image_encoder"):
        load_sam(path)


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled object, not a state dict
    with pytest.raises(SamCheckpointError, match="re-save model.state_dict"):
        load_sam(path)


def test_truncated_sam_checkpoint_error(tmp_path, tiny_checkpoint):
    sam, _ = tiny_checkpoint
    state_dict = sam.state_dict()
    del state_dict["mask_decoder.iou_token.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state_dict, path)
    with pytest.raises(SamCheckpointError, match="does not fit the inferred SAM"):
        load_sam(path)


# --------------------------------------------------------------------------- resolve_overlaps
def disc(cy: float, cx: float, r: float, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def record(seg: np.ndarray, iou: float = 0.9) -> dict:
    return {"segmentation": seg, "area": int(seg.sum()), "predicted_iou": iou, "stability_score": 0.95}


def regions(labels: np.ndarray) -> list[np.ndarray]:
    return [labels == k for k in range(1, labels.max() + 1)]


def test_separate_discs_kept():
    a, b = disc(25, 25, 10), disc(70, 70, 12)
    labels = resolve_overlaps([record(a), record(b)], SHAPE)
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    assert labels.max() == 2
    assert np.array_equal(labels == 1, a) and np.array_equal(labels == 2, b)


def test_agglomerate_dropped_parts_kept():
    a, b = disc(40, 35, 10), disc(40, 60, 10)
    merged = disc(40, 35, 11) | disc(40, 60, 11)
    labels = resolve_overlaps([record(merged, 0.99), record(a), record(b)], SHAPE)
    assert labels.max() == 2
    found = regions(labels)
    assert any(np.array_equal(r, a) for r in found) and any(np.array_equal(r, b) for r in found)


def test_particle_with_one_small_feature_is_not_an_agglomerate():
    particle, feature = disc(50, 50, 15), disc(50, 50, 3)
    labels = resolve_overlaps([record(particle, 0.95), record(feature, 0.8)], SHAPE)
    assert labels.max() == 1 and np.array_equal(labels == 1, particle)


def test_duplicate_keeps_higher_iou():
    tight, loose = disc(50, 50, 12), disc(50, 50, 13)
    for masks, expected in [([record(tight, 0.95), record(loose, 0.90)], tight),
                            ([record(tight, 0.90), record(loose, 0.95)], loose)]:
        labels = resolve_overlaps(masks, SHAPE)
        assert labels.max() == 1 and np.array_equal(labels == 1, expected)


def test_partial_overlap_drops_both():
    a, b, c = disc(30, 30, 12), disc(30, 48, 12), disc(80, 80, 8)  # a and b share ~25%
    labels = resolve_overlaps([record(a), record(b), record(c)], SHAPE)
    assert labels.max() == 1 and np.array_equal(labels == 1, c)


def test_small_overlap_kept_without_shared_pixels():
    a, b = disc(30, 30, 12), disc(30, 54, 12.5)  # touch by a few pixels (< 10 % of either)
    assert 0 < (a & b).sum() < 0.1 * a.sum()
    labels = resolve_overlaps([record(a), record(b)], SHAPE)
    assert labels.max() == 2
    assert not labels[a & b].any()


def test_background_mask_dropped():
    particle = disc(50, 50, 10)
    background = ~particle  # > 25 % of the image
    labels = resolve_overlaps([record(background, 0.99), record(particle)], SHAPE)
    assert labels.max() == 1 and np.array_equal(labels == 1, particle)


def test_empty_and_bad_shape():
    assert not resolve_overlaps([], SHAPE).any()
    with pytest.raises(ValueError, match="differs from image shape"):
        resolve_overlaps([record(disc(5, 5, 3, shape=(20, 20)))], SHAPE)


# --------------------------------------------------------------------------- segmenter
def test_segmenter_contract(tiny_checkpoint):
    _, path = tiny_checkpoint
    image = np.full((128, 128), 0.2)
    for cy, cx in [(35, 35), (40, 90), (95, 60)]:
        image[disc(cy, cx, 16, shape=image.shape)] = 0.9
    # Random weights: lower the quality thresholds so that masks reach resolve_overlaps.
    segmenter = SamSegmenter(path, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    masks = segmenter.generate_masks(image)
    assert masks and all(m["segmentation"].shape == image.shape for m in masks)
    labels = segmenter.segment(image)
    assert labels.dtype == np.int32 and labels.shape == image.shape
    assert labels.min() >= 0 and set(np.unique(labels)) == set(range(labels.max() + 1))
    with pytest.raises(ValueError, match="grayscale"):
        segmenter.segment(np.zeros((8, 8, 3)))


def test_to_rgb_uint8():
    rgb = SamSegmenter.to_rgb_uint8(np.array([[0.0, 0.5], [1.0, 2.0]]))
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].tolist() == [[0, 128], [255, 255]]
    assert (rgb[..., 0] == rgb[..., 2]).all()
