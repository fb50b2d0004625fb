"""EchoEF: LV ejection fraction from 2D apical echocardiography.

The package is grouped by layer (``app``, ``reporting``, ``stats``, ``model``, ``measure``, ``io``;
docs/design.md). Scripts written against the earlier flat layout keep working: ``echoef.camus`` and
``from echoef import camus`` find ``echoef.io.camus`` (and so on for every moved module), imported only
when asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# The flat module names of earlier releases -> where each lives now.
MOVED = {
    **{name: f"app.{name}" for name in ("cli", "predict", "bundle", "studies", "batch", "cine", "codedeps")},
    **{name: f"reporting.{name}" for name in ("records", "figures", "report")},
    **{name: f"stats.{name}" for name in ("calibration", "agreement", "split")},
    **{name: f"model.{name}" for name in ("training", "augment", "segmentation", "network", "dataset", "geometry", "overlap",
                                          "runtime")},
    **{name: f"measure.{name}" for name in ("review", "eftable", "ef", "simpson")},
    **{name: f"io.{name}" for name in ("ingest", "framefile", "camus", "imagefile", "dicom", "phantom", "video")},
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``echoef.<old name>`` as the module it moved to (the same module object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        name = fullname.removeprefix(__name__ + ".")
        if fullname.startswith(__name__ + ".") and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def __init__(self):
        self.specs = {}

    def create_module(self, spec):
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.removeprefix(__name__ + '.')]}")
        self.specs[spec.name] = module.__spec__  # the import machinery sets the alias's spec on it next
        return module

    def exec_module(self, module):
        module.__spec__ = self.specs.pop(module.__spec__.name, module.__spec__)  # it ran when it was imported


sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
