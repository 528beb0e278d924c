"""End-to-end tests of ``morphloop describe`` (flows.cli): JSON contract, bad inputs, tags, CSV, overlays,
texture frames and the SAM path through the same checkpoint loader."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from simulators.fields import make_particle_field, make_platelet_network, write_sem_tiff

JSON_KEYS = ["image", "pixel_size_um", "n_particles", "d50_um", "d50_volume_um", "d10_um", "d90_um",
             "sphericity_mean", "sphericity_std", "texture", "texture_energy"]
PARTICLE_KEYS = ["n_particles", "d50_um", "d50_volume_um", "d10_um", "d90_um", "sphericity_mean",
                 "sphericity_std"]
ROOT = Path(__file__).resolve().parents[2]


def make_runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout (click < 8.2 needs mix_stderr=False; 8.2+ always does)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


RUNNER = make_runner()


def run_cli(*args: str):
    result = RUNNER.invoke(app, ["describe", *map(str, args)])
    # a crash inside the command would show here as an exception other than SystemExit
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name} on stdout")


def json_records(stdout: str) -> list[dict]:
    """Every stdout line must be one strict JSON object (no NaN/Infinity, nothing else)."""
    lines = stdout.splitlines()
    records = [json.loads(line, parse_constant=_reject_constant) for line in lines]
    assert all(isinstance(r, dict) for r in records)
    return records


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory, lazily_sized_png) -> dict:
    """Every image kind the tests need, written once (512 x 512 particle frames)."""
    d = tmp_path_factory.mktemp("describe")
    rng = np.random.default_rng(0)
    field = make_particle_field(0, shape=(512, 512), n_particles=20, d50_px=40)
    other = make_particle_field(1, shape=(512, 512), n_particles=20, d50_px=30)
    g8 = np.round(field.image * 255).astype(np.uint8)
    f = {"dir": d, "field": field, "other_field": other}
    f["tif8"] = write_sem_tiff(d / "field8.tif", field.image, field.pixel_size_um, bits=8)
    f["tif16"] = write_sem_tiff(d / "field16.tif", field.image, field.pixel_size_um, bits=16)
    f["top_bar"] = write_sem_tiff(d / "top_bar.tif", field.image[::-1], field.pixel_size_um)
    f["other"] = write_sem_tiff(d / "other.tif", other.image, other.pixel_size_um)
    Image.fromarray(g8).save(d / "gray.png")
    Image.fromarray(np.stack([g8] * 3, axis=-1)).save(d / "rgb.png")
    f["gray_png"], f["rgb_png"] = d / "gray.png", d / "rgb.png"
    tifffile.imwrite(d / "cm_only.tif", g8, resolution=(1e4 / 0.1, 1e4 / 0.1), resolutionunit="CENTIMETER")
    f["cm_only"] = d / "cm_only.tif"
    f["texture"] = write_sem_tiff(d / "platelets.tif", make_platelet_network(3, width_px=6, shape=(512, 512)),
                                  0.01, magnification=50000)
    # bad inputs
    (d / "x.png").write_text("not an image\n")
    (d / "x.tif").write_text("not an image either\n")
    f["text_png"], f["text_tif"] = d / "x.png", d / "x.tif"
    f["missing"] = d / "missing.tif"
    f["constant"] = write_sem_tiff(d / "constant.tif", np.full((256, 256), 0.4), 0.1)
    f["noise"] = write_sem_tiff(d / "noise.tif", rng.random((512, 512)), 0.1)
    f["dark"] = write_sem_tiff(d / "dark.tif", np.clip(0.05 + 0.02 * rng.standard_normal((512, 512)), 0, 1), 0.1)
    f["huge"] = lazily_sized_png(d / "huge.png", 20000, 20000)
    for name, value in (("nan_meta", float("nan")), ("neg_meta", -0.1)):
        f[name] = d / f"{name}.tif"
        tifffile.imwrite(f[name], g8, description=json.dumps({"pixel_size_um": value}), metadata=None)
    f["directory"] = d / "a_folder"
    f["directory"].mkdir()
    return f


@pytest.fixture(scope="module")
def good_record(files) -> dict:
    result = run_cli(files["tif8"], "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_records(result.stdout)
    return record


# ------------------------------------------------------------------------------------------ the contract
def test_json_record_keys_and_values_match_truth(files, good_record):
    truth = files["field"].summary()
    assert list(good_record) == JSON_KEYS
    assert good_record["image"] == str(files["tif8"])
    assert good_record["pixel_size_um"] == pytest.approx(files["field"].pixel_size_um)  # from the tags
    assert abs(good_record["n_particles"] - truth["n_particles"]) <= 2
    for key in ("d50_um", "d50_volume_um", "d10_um", "d90_um"):
        assert good_record[key] == pytest.approx(truth[key], rel=0.06), key
    assert good_record["d10_um"] <= good_record["d50_um"] <= good_record["d90_um"]
    assert good_record["sphericity_mean"] == pytest.approx(truth["sphericity_mean"], abs=0.03)
    assert 0 <= good_record["sphericity_std"] < 0.2
    assert good_record["texture"] is None and good_record["texture_energy"] is None


def test_16bit_tiff_and_rgb_png_give_the_8bit_gray_descriptors(files, good_record):
    result = run_cli(files["tif16"], files["gray_png"], files["rgb_png"], "--pixel-size-um", "0.1", "--json")
    assert result.exit_code == 0, result.stderr
    records = json_records(result.stdout)
    assert [r["image"] for r in records] == [str(files[k]) for k in ("tif16", "gray_png", "rgb_png")]
    for record in records:
        assert "error" not in record
        assert record["n_particles"] == good_record["n_particles"], record["image"]
        for key in PARTICLE_KEYS[1:]:
            assert record[key] == pytest.approx(good_record[key], rel=0.01, abs=1e-3), (record["image"], key)


def test_pixel_size_flag_overrides_tags_and_scales_sizes(files, good_record):
    result = run_cli(files["tif8"], "--pixel-size-um", "0.2", "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_records(result.stdout)
    assert record["pixel_size_um"] == 0.2
    assert record["n_particles"] == good_record["n_particles"]
    assert record["d50_um"] == pytest.approx(2 * good_record["d50_um"], rel=1e-9)
    assert record["sphericity_mean"] == pytest.approx(good_record["sphericity_mean"], rel=1e-9)


def test_info_bar_at_the_top_is_cropped_too(files, good_record):
    """The same frame upside down (instrument bar at the top) gives the same descriptors."""
    result = run_cli(files["top_bar"], "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_records(result.stdout)
    assert record["n_particles"] == good_record["n_particles"]
    for key in PARTICLE_KEYS[1:]:
        assert record[key] == pytest.approx(good_record[key], rel=0.01, abs=1e-3), key


def test_pixel_size_from_centimetre_resolution_tags(files, good_record):
    result = run_cli(files["cm_only"], "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_records(result.stdout)
    assert record["pixel_size_um"] == pytest.approx(0.1)
    assert record["d50_um"] == pytest.approx(good_record["d50_um"], rel=0.01)


def test_no_pixel_size_anywhere_is_a_clear_error(files):
    result = run_cli(files["gray_png"], "--json")
    assert result.exit_code == 1
    (record,) = json_records(result.stdout)
    assert "no pixel size" in record["error"] and "--pixel-size-um" in record["error"]
    assert all(record[k] is None for k in PARTICLE_KEYS)
    assert "gray.png: no pixel size" in result.stderr


def test_human_output_without_json(files):
    result = run_cli(files["tif8"], files["texture"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{files['tif8']}: n=") and "D50=" in lines[0] and "sphericity=" in lines[0]
    assert lines[1].startswith(f"{files['texture']}: texture=")


# ------------------------------------------------------------------------------------------ bad input
BAD_INPUTS = [
    pytest.param("missing", r"missing\.tif: file not found", id="missing"),
    pytest.param("directory", r"a_folder: is a directory", id="directory"),
    pytest.param("text_png", r"x\.png: cannot be read as an image", id="text-as-png"),
    pytest.param("text_tif", r"x\.tif: cannot be read as an image", id="text-as-tif"),
    pytest.param("constant", r"constant\.tif: image is constant", id="constant"),
    pytest.param("huge", r"huge\.png: image is 20000x20000 .*above the 100 Mpx limit", id="too-large"),
    pytest.param("nan_meta", r"nan_meta\.tif: pixel size in the file's metadata must be a positive finite number",
                 id="nan-pixel-size-tag"),
    pytest.param("neg_meta", r"neg_meta\.tif: pixel size in the file's metadata must be a positive finite number",
                 id="negative-pixel-size-tag"),
    pytest.param("gray_png", r"gray\.png: no pixel size", id="no-pixel-size"),
    pytest.param("noise", r"noise\.tif: .*no .*particle", id="pure-noise"),
    pytest.param("dark", r"dark\.tif: .*no .*particle", id="dark-noisy-frame"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUTS)
def test_bad_image_is_reported_and_the_others_still_described(files, good_record, bad, message):
    result = run_cli(files[bad], files["tif8"], "--json")
    assert result.exit_code == 1
    records = json_records(result.stdout)
    assert [r["image"] for r in records] == [str(files[bad]), str(files["tif8"])]
    failed, good = records
    assert re.search(message, failed["error"]), failed["error"]
    assert list(failed)[: len(JSON_KEYS)] == JSON_KEYS and all(failed[k] is None for k in PARTICLE_KEYS)
    assert "error" not in good and good["d50_um"] == pytest.approx(good_record["d50_um"], rel=1e-9)
    assert re.search("error: .*" + message, result.stderr), result.stderr
    assert "1 of 2 image(s) could not be described" in result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr


def test_large_image_limit_follows_max_megapixels(files, monkeypatch):
    import models.imageio

    monkeypatch.setattr(models.imageio, "MAX_MEGAPIXELS", 0.2)  # 512 x 512 = 0.26 Mpx
    result = run_cli(files["tif8"], files["constant"], "--json")  # constant.tif is 256 x 256
    assert result.exit_code == 1
    big, small = json_records(result.stdout)
    assert "above the 0.2 Mpx limit; crop or tile" in big["error"]
    assert "image is constant" in small["error"]  # under the limit: read, then refused for its own reason


@pytest.mark.parametrize("value", ["-1", "0", "nan", "NaN", "inf", "-0.5"])
def test_bad_pixel_size_flag_exits_2(files, value):
    result = run_cli(files["tif8"], files["other"], "--pixel-size-um", value, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "--pixel-size-um must be a positive finite number" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--pixel-size-um", "abc"], "Invalid value"),
    (["--kind", "grains"], "Invalid value"),
    (["--segmenter", "sam"], "needs a local checkpoint"),
    (["--sam-checkpoint", "no_such_file.pth"], "--sam-checkpoint: no_such_file.pth is not a file"),
])
def test_bad_flags_exit_2(files, args, message):
    result = run_cli(files["tif8"], "--json", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr


# ------------------------------------------------------------------------------------------ outputs
def test_csv_per_particle_table_with_image_column(files, tmp_path):
    import pandas as pd

    out = tmp_path / "sub" / "particles.csv"
    result = run_cli(files["tif8"], files["other"], files["text_png"], "--json", "--csv", out)
    assert result.exit_code == 1  # x.png fails, the table is still written for the others
    records = json_records(result.stdout)
    table = pd.read_csv(out)
    assert table.columns[0] == "image"
    assert {"particle_id", "eq_diameter_um", "sphericity", "area_um2"} <= set(table.columns)
    counts = table.groupby("image").size().to_dict()
    assert counts == {r["image"]: r["n_particles"] for r in records if "error" not in r}
    for record in records[:2]:
        rows = table[table["image"] == record["image"]]
        assert rows["eq_diameter_um"].median() == pytest.approx(record["d50_um"], rel=1e-6)
        assert rows["sphericity"].mean() == pytest.approx(record["sphericity_mean"], rel=1e-6)
    assert f"per-particle table: {out} ({len(table)} particles)" in result.stderr


def test_overlay_png_per_image(files, tmp_path):
    out = tmp_path / "overlays"
    result = run_cli(files["tif8"], files["texture"], files["text_png"], "--json", "--overlay", out)
    assert result.exit_code == 1
    written = sorted(p.name for p in out.iterdir())
    assert written == ["field8_overlay.png", "platelets_overlay.png"]  # none for the failed image
    for name in written:
        with Image.open(out / name) as im:
            rgb = np.asarray(im.convert("RGB")).astype(int)
        assert min(rgb.shape[:2]) > 300
        # coloured outlines / ROI boxes over a gray micrograph: some pixels are not gray
        assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 60).sum() > 200, name


def test_overlay_failure_reported_without_stopping_the_batch(files, tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("")
    result = run_cli(files["tif8"], files["other"], "--json", "--overlay", not_a_dir)
    assert result.exit_code == 1
    records = json_records(result.stdout)
    assert len(records) == 2 and all("error" not in r and r["n_particles"] > 0 for r in records)
    assert result.stderr.count("overlay not written") == 2


def test_non_finite_descriptor_written_as_null(files, monkeypatch):
    import models.describe

    real = models.describe.size_statistics

    def with_nan(table):
        return {**real(table), "sphericity_std": float("nan"), "d90_um": np.float32("inf")}

    monkeypatch.setattr(models.describe, "size_statistics", with_nan)
    result = run_cli(files["tif8"], "--json")
    assert result.exit_code == 0, result.stderr
    (record,) = json_records(result.stdout)  # strict parse: a bare NaN would fail here
    assert record["sphericity_std"] is None and record["d90_um"] is None
    assert record["d50_um"] is not None


# ------------------------------------------------------------------------------------------ texture
def test_kind_texture_on_high_magnification_frame(files):
    forced = run_cli(files["texture"], "--kind", "texture", "--json")
    auto = run_cli(files["texture"], "--json")  # 0.01 µm/px from the tags: auto picks texture
    assert forced.exit_code == 0 and auto.exit_code == 0, forced.stderr + auto.stderr
    (record,) = json_records(forced.stdout)
    assert record["pixel_size_um"] == pytest.approx(0.01)
    assert 0.0 <= record["texture"] <= 1.0 and math.isfinite(record["texture"])
    assert record["texture_energy"] is not None and record["texture_energy"] > 0
    assert all(record[k] is None for k in PARTICLE_KEYS)
    assert json_records(auto.stdout) == [record]


def test_kind_texture_forced_on_particle_frame_gives_no_particle_keys(files):
    result = run_cli(files["tif8"], "--kind", "texture", "--json")
    (record,) = json_records(result.stdout)
    if result.exit_code == 0:
        assert all(record[k] is None for k in PARTICLE_KEYS) and 0 <= record["texture"] <= 1
    else:  # refusing to compute texture on a low-magnification frame is fine too, if it says why
        assert result.exit_code == 1 and record["error"]


# ------------------------------------------------------------------------------------------ SAM
@pytest.mark.slow  # ~15-20 s on 2 cores: torch import, then SAM's default 32 x 32 point grid on the tiny model
def test_sam_checkpoint_runs_end_to_end(tmp_path):
    """A tiny random SAM through the real checkpoint loader: with random weights it may find nothing, which
    must then be the clear 'no complete particle' error, never a crash."""
    from models.sam import build_tiny_sam, save_sam_checkpoint

    checkpoint = save_sam_checkpoint(build_tiny_sam(seed=0), tmp_path / "tiny.pth")
    field = make_particle_field(3, shape=(256, 256), n_particles=6, d50_px=40)
    image = write_sem_tiff(tmp_path / "small.tif", field.image, field.pixel_size_um)
    start = time.perf_counter()
    result = run_cli(image, "--sam-checkpoint", checkpoint, "--json")
    elapsed = time.perf_counter() - start
    print(f"SAM describe (tiny model, default points_per_side): {elapsed:.1f} s")
    (record,) = json_records(result.stdout)
    assert record["image"] == str(image)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    if result.exit_code == 0:
        assert record["n_particles"] >= 1 and record["d50_um"] > 0
    else:
        assert result.exit_code == 1
        assert "no complete particle found" in record["error"]
        assert "small.tif: no complete particle found" in result.stderr


def test_unreadable_sam_checkpoint_is_a_bad_flag(files, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    result = run_cli(files["tif8"], files["other"], "--sam-checkpoint", bad, "--json")
    assert result.exit_code == 2
    assert result.stdout == ""  # stopped at the first image, nothing described with a broken model
    assert "--sam-checkpoint: cannot read SAM checkpoint" in result.stderr
    assert "unexpected" not in result.stderr


# ------------------------------------------------------------------------------------------ real process
def morphloop_command() -> list[str]:
    for exe in (ROOT / ".venv" / "bin" / "morphloop", Path(sys.executable).parent / "morphloop"):
        if exe.is_file():
            return [str(exe)]
    return [sys.executable, "-m", "flows.cli"]


def test_subprocess_stdout_holds_only_json_lines(files):
    d = files["dir"]
    names = ["field8.tif", "x.png", "missing.tif", "platelets.tif", "huge.png", "other.tif"]
    proc = subprocess.run([*morphloop_command(), "describe", *names, "--json"], cwd=d,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    records = json_records(proc.stdout)  # every line parses, strictly
    assert [r["image"] for r in records] == names
    assert all(list(r)[: len(JSON_KEYS)] == JSON_KEYS for r in records)
    failed = {r["image"] for r in records if "error" in r}
    assert failed == {"x.png", "missing.tif", "huge.png"}
    assert records[0]["n_particles"] > 0 and records[3]["texture"] is not None and records[5]["d50_um"] > 0
    assert "Traceback" not in proc.stderr
    for name in failed:
        assert f"error: {name}" in proc.stderr
    assert "3 of 6 image(s) could not be described" in proc.stderr
