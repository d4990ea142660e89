"""vistok: visual tokenizers and multimodal models of the recent literature as native transformers models.

``import vistok`` makes every vistok config, model, processor and pipeline known to transformers' Auto classes
(`vistok.registry`), without importing them: each class is imported the first time it is used, through the Auto
classes or as an attribute of this package (``vistok.TiTokModel``).
"""

import importlib

from .registry import exports, register_all


__version__ = "0.1.0"

register_all()

_EXPORTS = exports()
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    path = _EXPORTS.get(name)
    if path is None:
        raise AttributeError(f"module 'vistok' has no attribute {name!r}")
    module_name, attribute = path.split(":")
    value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
