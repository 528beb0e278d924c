"""loop: inverse design of synthesis conditions (decisions only; never runs an experiment).

* :mod:`loop.predictor`: the ``MorphologyPredictor`` interface the optimisers call, ``Prediction``,
  ``CachedPredictor``.
* :mod:`loop.space`: ``SearchSpace`` (typed parameters of :mod:`loop.parameters`, ratio window, fixed values,
  unit-cube encoding); :mod:`loop.config` holds the virtual lab's condition and descriptor contract.
* :mod:`loop.objective`: paper 000 eq. 3 (``Target``, ``Objective``, ``target_from_description``).
* :mod:`loop.pso`: ``run_pso`` (pyswarms ``GlobalBestPSO``) and the ``run_random_search`` baseline.
* :mod:`loop.proposer`: BoTorch batch proposals for real experiments (``propose_batch``).
"""
