"""Campaign config: TOML and dict loading, one readable message per problem, JSON-able snapshot."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loop.campaign_config import CampaignConfig, CampaignConfigError, load_campaign_config
from loop.ledger import Ledger
from loop.space import SearchSpace

TOML = """
name = "overnight"
data_dir = "runs/overnight"
batch_size = 4
retrain_every_rounds = 2
tolerance = 0.05
seed = 7
approve = true
approve_timeout_s = 600
max_attempts = 3
interrupted_policy = "requeue"

[target]
d50_um = 4.5
sphericity_mean = 0.85
sphericity_std = 0.04
texture = 0.4

[weights]
w_d50 = 1.0
w_sphericity = 1.0
w_texture = 0.5

[budget]
experiments = 24
hours = 12

[devices]
backend = "epics"
reactor_prefix = "XF:31ID-RX{Rx:1}"
sem_prefix = "XF:31ID-ES{SEM:1}"

[pso]
particles = 32
iters = 40

[search_space.parameters]
ph = [10.0, 11.5]
naoh_wt_pct = {low = 0.1, high = 2.0}
nh4oh_wt_pct = {}
time_min = {low = 60, high = 720}
atmosphere = ["n2", "sealed"]

[search_space.constraints]
ratio_window = [0.5, 2.0]
fixed = {temperature_c = 50.0}
"""


@pytest.fixture
def base(tmp_path) -> dict:
    """A minimal valid config as a dict."""
    return {"data_dir": str(tmp_path / "data"),
            "target": {"d50_um": 4.0, "sphericity_mean": 0.85, "texture": 0.4}}


def _with(cfg: dict, dotted: str, value) -> dict:
    cfg = json.loads(json.dumps(cfg))
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DROP:
        node.pop(last, None)
    else:
        node[last] = value
    return cfg


_DROP = object()

# (what is set, value, text the message must contain: the field path first)
MALFORMED = [
    ("target.d50_um", 12, "target.d50_um = 12: outside the physical range 2–7 µm; choose a reachable target"),
    ("target.d50_um", -3.0, "target.d50_um = -3: negative"),
    ("target.sphericity_mean", float("nan"), "target.sphericity_mean = nan: not a finite number"),
    ("target.sphericity_mean", 1.2, "target.sphericity_mean = 1.2: outside the physical range 0.5–1"),
    ("target.texture", -0.1, "target.texture = -0.1: negative"),
    ("target.texture", _DROP, "target: missing texture"),
    ("target.colour", "grey", "target.colour = \"grey\": unknown key; allowed keys in target: d50_um,"),
    ("batchsize", 4, "batchsize = 4: unknown key; allowed keys: approve, approve_timeout_s, batch_size,"),
    ("budget.experimants", 10, "budget.experimants = 10: unknown key; allowed keys in budget: experiments, hours"),
    ("search_space.parameters.ph", [11.5, 9.5], "search_space.parameters.ph = [11.5, 9.5]: parameter 'ph': "
                                                "low=11.5 must be < high=9.5"),
    ("search_space.parameters.time_min", {"low": 10, "high": 20}, "search_space.parameters.time_min"),
    ("search_space.parameters.colour", [0, 1], "search_space.parameters.colour = [0, 1]: unknown parameter"),
    ("search_space.constraints.ratio_window", [5.0, 9.0], None),  # set below with narrow loadings
    ("search_space.constraints.fixed", {"ph": 13.0}, "search_space.constraints.fixed = {\"ph\": 13.0}: fixed ph=13.0"),
    ("search_space.paramters", {}, "search_space: unknown key(s) ['paramters']"),
    ("weights", {"w_d50": 0, "w_sphericity": 0, "w_texture": 0}, "weights: all weights are 0"),
    ("weights.w_texture", -1, "weights.w_texture = -1: negative"),
    ("tolerance", 0, "tolerance = 0: must be a relative tolerance in (0, 1)"),
    ("batch_size", 17, "batch_size = 17: Input should be less than or equal to 16"),
    ("batch_size", 2.5, "batch_size = 2.5:"),
    ("budget.experiments", 0, "budget.experiments = 0:"),
    ("budget.experiments", 2, "budget.experiments = 2: smaller than batch_size = 4"),
    ("budget.hours", 0, "budget.hours = 0: must be > 0 hours"),
    ("retrain_every_rounds", -1, "retrain_every_rounds = -1:"),
    ("max_attempts", 0, "max_attempts = 0:"),
    ("interrupted_policy", "retry", "interrupted_policy = \"retry\": Input should be 'requeue' or 'abandon'"),
    ("approve", "yes", "approve = \"yes\":"),
    ("devices", "epics", "devices.reactor_prefix: missing; the epics backend needs"),
    ("devices", {"backend": "simulated", "sem_prefix": "XF:1"}, "devices.sem_prefix = \"XF:1\": PV prefixes only go"),
    ("data_dir", _DROP, "data_dir: missing; add data_dir ="),
    ("name", "my campaign", "name = \"my campaign\": must be 1-41 letters"),
]


@pytest.mark.parametrize("dotted, value, expected", MALFORMED, ids=[f"{m[0]}={m[1]!r}" for m in MALFORMED])
def test_malformed_configs_name_the_field_value_and_fix(base, dotted, value, expected):
    cfg = _with(base, dotted, value)
    if dotted == "search_space.constraints.ratio_window":
        cfg["search_space"]["parameters"] = {"naoh_wt_pct": [0.05, 0.1], "nh4oh_wt_pct": [1.0, 3.0]}
        expected = "search_space.constraints.ratio_window = [5.0, 9.0]: ratio_window [5.0, 9.0] conflicts"
    if dotted == "budget.experiments" and value == 2:
        cfg["batch_size"] = 4
    with pytest.raises(CampaignConfigError) as info:
        load_campaign_config(cfg)
    message = str(info.value)
    assert expected in message, message
    assert all(line.startswith("campaign config: ") for line in info.value.problems)


def test_reference_image_target(base, tmp_path):
    image = tmp_path / "ref.tif"
    image.write_bytes(b"II*\x00")
    cfg = {**base, "target": {"reference_image": str(image), "pixel_size_um": 0.05}}
    config = load_campaign_config(cfg)
    assert config.target.reference_image == image and config.objective_target() is None
    problems = {
        "target.reference_image = \"" + str(tmp_path / "absent.tif") + "\": no such file":
            {"reference_image": str(tmp_path / "absent.tif"), "pixel_size_um": 0.05},
        "target.pixel_size_um: missing; a reference image needs": {"reference_image": str(image)},
        "target.pixel_size_um = 0: must be > 0": {"reference_image": str(image), "pixel_size_um": 0},
        "target: give either the numbers or reference_image, not both":
            {"reference_image": str(image), "pixel_size_um": 0.05, "d50_um": 4.0},
    }
    for expected, target in problems.items():
        with pytest.raises(CampaignConfigError, match=None) as info:
            load_campaign_config({**base, "target": target})
        assert expected in str(info.value), str(info.value)


def test_model_dir_must_hold_a_trained_surrogate(base, tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(CampaignConfigError) as info:
        load_campaign_config({**base, "model_dir": str(empty)})
    assert f'model_dir = "{empty}": no surrogate.json in {empty}' in str(info.value)
    assert "morphloop surrogate train" in str(info.value)
    (empty / "surrogate.json").write_text("{}")
    assert load_campaign_config({**base, "model_dir": str(empty)}).model_dir == empty
    assert load_campaign_config(base).model_dir is None  # the shipped model


def test_data_dir_must_be_creatable_and_writable_and_the_check_leaves_no_trace(base, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CampaignConfigError) as info:
        load_campaign_config({**base, "data_dir": str(blocker / "sub")})
    assert f'data_dir = "{blocker / "sub"}": cannot create or write in' in str(info.value)
    assert "choose a folder you can write to" in str(info.value)
    with pytest.raises(CampaignConfigError, match="is a file, not a folder"):
        load_campaign_config({**base, "data_dir": str(blocker)})
    deep = tmp_path / "new" / "deeper" / "data"
    assert load_campaign_config({**base, "data_dir": str(deep)}).data_dir == deep
    assert not (tmp_path / "new").exists()  # validation created and removed it
    existing = tmp_path / "existing"
    existing.mkdir()
    load_campaign_config({**base, "data_dir": str(existing)})
    assert list(existing.iterdir()) == []  # the write probe is gone


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_data_dir(base, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CampaignConfigError, match="data_dir.*Permission denied"):
            load_campaign_config({**base, "data_dir": str(ro)})
    finally:
        ro.chmod(0o700)


def test_every_problem_is_reported_at_once(base):
    cfg = {**base, "batch_size": 0, "tolerance": 2, "target": {"d50_um": 9, "sphericity_mean": 0.8, "texture": 3},
           "extra": 1}
    with pytest.raises(CampaignConfigError) as info:
        load_campaign_config(cfg)
    fields = [line.split(":")[1].split(" =")[0].strip() for line in info.value.problems]
    assert sorted(fields) == ["batch_size", "extra", "target.d50_um", "target.texture", "tolerance"]


def test_valid_toml_loads_resolves_paths_and_round_trips(tmp_path):
    path = tmp_path / "campaign.toml"
    path.write_text(TOML)
    config = load_campaign_config(path)
    assert isinstance(config, CampaignConfig)
    assert config.data_dir == tmp_path / "runs" / "overnight"  # relative to the TOML file, not the cwd
    assert config.devices.backend == "epics" and config.devices.reactor_prefix == "XF:31ID-RX{Rx:1}"
    assert config.weights.as_tuple() == (1.0, 1.0, 0.5) and config.budget.experiments == 24
    space = config.space()
    assert isinstance(space, SearchSpace) and space.fixed == {"temperature_c": 50.0}
    assert space.ratio_window == (0.5, 2.0) and "ph" in space.names
    target = config.objective_target()
    assert (target.d50_um, target.sphericity_std, target.tolerances["texture"]) == (4.5, 0.04, 0.05)

    snap = config.snapshot()
    text = json.dumps(snap, allow_nan=False)  # JSON-serialisable, strictly
    assert snap["data_dir"] == str(tmp_path / "runs" / "overnight")
    assert snap["search_space"]["parameters"]["nh4oh_wt_pct"] == {"low": 0.05, "high": 3.0, "log": True}
    again = load_campaign_config(json.loads(text))
    assert again == CampaignConfig.model_validate(snap) and again.snapshot() == snap
    assert again.space().to_config() == space.to_config()
    json_path = tmp_path / "snapshot.json"
    json_path.write_text(text)
    assert load_campaign_config(json_path).snapshot() == snap

    ledger = Ledger(config.data_dir.parent)  # the snapshot is what the ledger's meta keeps
    cid = ledger.start_campaign(snap)
    assert ledger.config() == snap and ledger.start_campaign(again.snapshot()) == cid


def test_toml_errors_name_the_file(tmp_path):
    path = tmp_path / "campaign.toml"
    path.write_text(TOML.replace("d50_um = 4.5", "d50_um = 12"))
    with pytest.raises(CampaignConfigError) as info:
        load_campaign_config(path)
    assert str(info.value) == (f"{path}: target.d50_um = 12: outside the physical range 2–7 µm; "
                               "choose a reachable target")
    path.write_text("data_dir = \n")
    with pytest.raises(CampaignConfigError, match=f"{path}: not valid TOML"):
        load_campaign_config(path)
    with pytest.raises(CampaignConfigError, match="cannot read"):
        load_campaign_config(tmp_path / "absent.toml")


def test_defaults(base):
    config = load_campaign_config({**base, "devices": "simulated"})
    assert (config.batch_size, config.tolerance, config.max_attempts, config.interrupted_policy) == \
        (4, 0.05, 3, "requeue")
    assert config.devices.backend == "simulated" and config.retrain_every_rounds == 0
    assert config.space().names == SearchSpace.default().names  # the virtual lab's 8 conditions
    assert config.space().dim == SearchSpace.default().dim
    assert Path(config.snapshot()["data_dir"]).is_absolute()
