"""Import this repository as the package `reelsmith` from a script (the repository root is the package, as in
ComfyUI; its directory name differs between checkouts)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent


def import_pack():
    """The whole pack, node layer included (runs its `__init__`)."""
    if "reelsmith" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "reelsmith", PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["reelsmith"] = module
        spec.loader.exec_module(module)
    return sys.modules["reelsmith"]


def import_engine_only():
    """The package without running its `__init__`: `reelsmith.engine` imports, the ComfyUI node layer (and its
    imports, PyAV among them) does not — for GPU scripts on machines that have only torch and diffusers."""
    if "reelsmith" not in sys.modules:
        package = types.ModuleType("reelsmith")
        package.__path__ = [str(PACK_ROOT)]
        sys.modules["reelsmith"] = package
    return sys.modules["reelsmith"]
