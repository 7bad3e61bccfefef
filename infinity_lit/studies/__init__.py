"""Studies: resumable stages (fit / recon / sample / score / report) and what is built from them.

stages       fit, fit_once, untrained_twin, reconstruction, sample_and_score
quickstart   the whole method on OpenMoji as a one-arm study
"""
