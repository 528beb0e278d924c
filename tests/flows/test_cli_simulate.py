"""End-to-end tests of ``morphloop simulate`` (flows.cli, flows.simulate): the JSON contract, the documents on
disk, bad input, and the paper's texture corners measured back through ``morphloop describe``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_runner import invoke
from flows.simulate import DOCUMENTS_FILE, parse_conditions
from simulators.conditions import ConditionError

HIGH_TEXTURE = {"ph": 10.0, "naoh_wt_pct": 2.0, "nh4oh_wt_pct": 0.6}  # NaOH/NH4OH 3.33, pH 10
LOW_TEXTURE = {"ph": 11.0, "naoh_wt_pct": 0.3, "nh4oh_wt_pct": 2.0}  # NaOH/NH4OH 0.15, pH 11
WITH_O2 = {**HIGH_TEXTURE, "atmosphere": "air"}
RECORD_KEYS = ["sample_id", "conditions", "images", "pixel_size_um", "truth"]


@pytest.fixture(scope="module")
def corners(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    result = invoke("simulate", "--conditions", json.dumps([HIGH_TEXTURE, LOW_TEXTURE, WITH_O2]), "--out", out,
                    "--seed", 3, "--json")
    assert result.exit_code == 0, result.stderr
    return out, [json.loads(line) for line in result.stdout.splitlines()]


def test_simulate_json_records(corners):
    out, records = corners
    assert [r["sample_id"] for r in records] == ["S0001", "S0002", "S0003"]
    for record, asked in zip(records, [HIGH_TEXTURE, LOW_TEXTURE, WITH_O2]):
        assert list(record) == RECORD_KEYS
        assert len(record["conditions"]) == 8 and all(record["conditions"][k] == v for k, v in asked.items())
        assert set(record["images"]) == {"low", "high"} and all(Path(p).is_file() for p in record["images"].values())
        assert record["pixel_size_um"] == pytest.approx({"low": 0.05, "high": 0.01})
        assert set(record["truth"]) == {"d50_um", "sphericity_mean", "sphericity_std", "texture"}


def test_documents_carry_conditions_sample_and_image_references(corners):
    out, records = corners
    docs = [json.loads(line) for line in (out / DOCUMENTS_FILE).read_text().splitlines()]
    starts = [d["doc"] for d in docs if d["name"] == "start"]
    assert [s["sample_id"] for s in starts] == ["S0001", "S0002", "S0003"]
    assert starts[2]["conditions"]["atmosphere"] == "air"
    resources = [d["doc"] for d in docs if d["name"] == "resource"]
    referenced = {str(Path(r["root"]) / r["resource_path"]) for r in resources}
    assert {p for r in records for p in r["images"].values()} <= referenced
    assert sum(d["name"] == "stop" and d["doc"]["exit_status"] == "success" for d in docs) == 3


def test_texture_corners_through_describe(corners):
    _, records = corners
    highs = [r["images"]["high"] for r in records]
    result = invoke("describe", *highs, "--json")
    assert result.exit_code == 0, result.stderr
    texture = [json.loads(line)["texture"] for line in result.stdout.splitlines()]
    assert texture[0] >= 0.7, texture  # ratio 3.33, pH 10
    assert texture[1] < 0.3, texture  # ratio 0.15, pH 11
    assert texture[2] < 0.3, texture  # O2


def test_out_of_range_conditions_are_refused_before_anything_runs(tmp_path):
    result = invoke("simulate", "--conditions", '{"ph": 13}', "--out", tmp_path / "x", "--json")
    assert result.exit_code == 2
    assert "ph=13" in result.stderr and "[9.5, 11.5]" in result.stderr
    assert result.stdout == "" and not (tmp_path / "x").exists()


def test_an_earlier_simulation_is_never_overwritten(corners):
    out, _ = corners
    before = (out / DOCUMENTS_FILE).read_text()
    result = invoke("simulate", "--conditions", "{}", "--out", out)
    assert result.exit_code == 2 and "new --out" in result.stderr
    assert (out / DOCUMENTS_FILE).read_text() == before


def test_parse_conditions_from_file_and_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"time_min": 60}, {"atmosphere": "sealed"}]))
    parsed = parse_conditions(str(path))
    assert parsed[0]["time_min"] == 60.0 and parsed[1]["atmosphere"] == "sealed" and parsed[1]["ph"] == 10.5
    with pytest.raises(ConditionError, match=r"conditions\[1\]: unknown"):
        parse_conditions('[{}, {"phh": 10}]')
    with pytest.raises(ConditionError, match="not valid JSON"):
        parse_conditions("{ph: 10}")
    with pytest.raises(ConditionError, match="neither JSON nor an existing file"):
        parse_conditions(str(tmp_path / "missing.json"))
