"""The virtual lab's condition and descriptor contract, as seen by ``loop/``.

``loop/`` may not import ``simulators/`` (import-linter: the optimiser never reads the hidden world), so the
names, units, ranges and defaults of the synthesis conditions are copied here from ``simulators/conditions.py``
(``tests/loop/test_space.py`` checks the copy stays equal). The names are a contract shared with the devices,
the ledger and the CLI: ``ph``, ``naoh_wt_pct``, ``nh4oh_wt_pct``, ``time_min``, ``temperature_c``,
``stir_rpm``, ``atmosphere``, ``additive_ppm``.
"""
from __future__ import annotations

from typing import Any

#: Continuous conditions: name -> (unit, low, high, default, log-scaled in the search space).
#: The two loadings span 60x, so they are searched on a log scale (as the virtual lab scales them).
LAB_CONTINUOUS: dict[str, tuple[str, float, float, float, bool]] = {
    "ph": ("pH", 9.5, 11.5, 10.5, False),
    "naoh_wt_pct": ("wt%", 0.05, 3.0, 1.0, True),
    "nh4oh_wt_pct": ("wt%", 0.05, 3.0, 1.0, True),
    "time_min": ("min", 30.0, 1440.0, 360.0, False),
    "temperature_c": ("°C", 20.0, 60.0, 50.0, False),
    "stir_rpm": ("rpm", 300.0, 1500.0, 800.0, False),
    "additive_ppm": ("ppm", 0.0, 5000.0, 0.0, False),
}
#: Categorical conditions: name -> (choices, default).
LAB_CATEGORICAL: dict[str, tuple[tuple[str, ...], str]] = {
    "atmosphere": (("n2", "sealed", "air"), "n2"),
}
#: Condition names in the order the virtual lab lists them.
LAB_CONDITION_NAMES: tuple[str, ...] = (
    "ph", "naoh_wt_pct", "nh4oh_wt_pct", "time_min", "temperature_c", "stir_rpm", "atmosphere", "additive_ppm",
)
#: Defaults of every condition (a predictor fills missing conditions with these).
LAB_DEFAULTS: dict[str, Any] = {
    **{name: spec[3] for name, spec in LAB_CONTINUOUS.items()},
    **{name: spec[1] for name, spec in LAB_CATEGORICAL.items()},
}
#: The two loadings whose ratio drives primary-particle shape (the ``ratio_window`` constraint).
RATIO_NUMERATOR, RATIO_DENOMINATOR = "naoh_wt_pct", "nh4oh_wt_pct"

#: Descriptors a predictor returns and an objective scores, in array-column order.
DESCRIPTORS: tuple[str, ...] = ("d50_um", "sphericity_mean", "sphericity_std", "texture")
#: Range of each descriptor over the virtual lab (``describe``'s scales; texture is [0, 1] by definition).
#: The objective divides errors by the width of these ranges so that its weights compare like with like.
DESCRIPTOR_RANGES: dict[str, tuple[float, float]] = {
    "d50_um": (2.0, 7.0),
    "sphericity_mean": (0.70, 0.93),
    "sphericity_std": (0.02, 0.08),
    "texture": (0.0, 1.0),
}
