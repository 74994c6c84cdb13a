"""Package layout: the top-level folders are the architecture, imported under one namespace.

``ir/`` is installed as ``hysparse_kernels.ir`` and so on (see docs/ARCHITECTURE.md); the subpackages
are found from the folders so adding one needs no edit here. Metadata lives in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {
    "hysparse_kernels": "hysparse_kernels",
    "hysparse_kernels.ir": "ir",
    "hysparse_kernels.models": "models",
    "hysparse_kernels.training": "training",
    "hysparse_kernels.autotune": "autotune",
}

packages, package_dir = [], {}
for name, path in ROOTS.items():
    package_dir[name] = path
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(path)]

setup(packages=packages, package_dir=package_dir, package_data={"hysparse_kernels": ["configs/**/*.json"]})
