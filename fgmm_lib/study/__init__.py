"""The study's tooling, above the library: what the pipeline's notebooks call.

- :mod:`~fgmm_lib.study.results`: the results folder (run names, metrics, details and compute files).
- :mod:`~fgmm_lib.study.sweep`: many runs trained and evaluated (study, noise, width, temperature, lr).
- :mod:`~fgmm_lib.study.selection`: the selection rules (lr factors, best temperatures).
- :mod:`~fgmm_lib.study.curves`: validation curves over runs: convergence, time to a target.
- :mod:`~fgmm_lib.study.stats`: intervals, paired differences, verdicts.
- :mod:`~fgmm_lib.study.tables`: tables over runs.
- :mod:`~fgmm_lib.study.report`: the report's sections, one per question.
- :mod:`~fgmm_lib.study.attention`: a run's attention on some clips, pointing per run.
- :mod:`~fgmm_lib.study.plots`: every plot the notebooks draw.
- :mod:`~fgmm_lib.study.notebook`: notebook helpers (project root, parameters).
- :mod:`~fgmm_lib.study.records`: one evaluation record: what it holds and what it lacks.
"""
