"""The YAML recipes and study specs, installed as the package ``infinity_lit.experiments``.

This file only makes the folder a package, so that a wheel ships the YAML files inside ``infinity_lit``
and an installed toolkit finds them (``infinity_lit.recipes.recipe_path("tokenizer/openmoji64.yaml")``).
There is no code here, and nothing imports this package's modules.
"""
