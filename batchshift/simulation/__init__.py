"""The policy lab: ``batchshift simulate SCENARIO.toml`` runs a workload against simulated providers.

:mod:`.scenario` reads a scenario file, :mod:`.engine` runs it once per policy on a virtual clock,
driving the production decision code, and :mod:`.report` prints, plots and serialises the results.
"""
