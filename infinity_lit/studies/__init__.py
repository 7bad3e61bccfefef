"""Studies: resumable stages and what is built from them (floor 5, below only the CLI).

spec         Study: base recipes per stage, arms (value + config deltas), seeds, evaluation; load_study
stages       fit, reconstruction, sample, score, untrained_twin (each calls the library)
runner       run_study (arms × seeds, shared stages, waves, local / submitit / SLURM), status, report
compare      per-arm statistics over seeds, effects vs the baseline, the comparison page
quickstart   the whole method on OpenMoji as a one-arm study
"""
