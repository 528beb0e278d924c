"""``flows.surrogate_flow``: what the training flow records about its training conditions."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from flows.surrogate_data import render_condition_tiles
from flows.surrogate_flow import describe_training_conditions
from models.surrogate.descriptors import tile_textures
from models.surrogate.training import TileSet
from simulators.conditions import DEFAULT_CONDITIONS

PIXEL_SIZE_UM = {"low": 0.2, "high": 0.01}


def test_a_condition_without_a_measurable_texture_tile_reads_nan_without_a_warning():
    tiles, _, _ = render_condition_tiles(dict(DEFAULT_CONDITIONS), sample_seed=3, n_tiles=2)
    blank = np.full_like(tiles["high"], 0.5)  # no texture ROI qualifies on a flat tile
    stacked = np.concatenate([tiles["low"], tiles["high"], tiles["low"], blank]).astype(np.float32)
    mags = ["low"] * 2 + ["high"] * 2 + ["low"] * 2 + ["high"] * 2
    table = pd.DataFrame({"condition_id": [0] * 4 + [1] * 4, "magnification": mags,
                          "cond_ph": DEFAULT_CONDITIONS["ph"], "true_d50_um": 3.0})
    data = TileSet(stacked, [dict(DEFAULT_CONDITIONS)] * 8, mags)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rows = describe_training_conditions(data, table, PIXEL_SIZE_UM)
    assert list(rows["condition_id"]) == [0, 1]
    expected = tile_textures(tiles["high"], PIXEL_SIZE_UM["high"])
    assert np.isfinite(expected).any()
    assert rows["tile_texture"].iloc[0] == np.nanmean(expected)
    assert np.isnan(rows["tile_texture"].iloc[1])
    assert np.isfinite(rows["tile_d50_um"]).all() and (rows["true_d50_um"] == 3.0).all()
