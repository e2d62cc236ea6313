"""Packaging beyond pyproject.toml: the recipes in configs/ ship inside the package as foresight/configs/.

configs/ stays the one copy (README commands, tests and ``--set`` all read it in a checkout); a wheel carries it
as package data so that ``foresight stargraph`` finds its recipes after a plain ``pip install .`` too
(``foresight.config.recipe_dirs``).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "foresight.configs"],
    package_dir={"": "src", "foresight.configs": "configs"},
    package_data={"foresight.configs": ["*/*.yaml"]},
)
