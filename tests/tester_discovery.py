"""Finds the ``TESTERS`` lists of every module in a tester package (``testers/``, ``mm_testers/``)."""

import importlib
import pkgutil


def collect_testers(package_name: str, package_path) -> list:
    """Concatenates ``TESTERS`` of every module of the package, in module-name order."""
    testers = []
    for module_info in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        module = importlib.import_module(f"{package_name}.{module_info.name}")
        testers.extend(getattr(module, "TESTERS", []))
    return testers
