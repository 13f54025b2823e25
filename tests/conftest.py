"""Test setup: import the pack root as the package `reelsmith`, as ComfyUI imports it (relative imports).

The repository root is the pack; its directory name differs between checkouts, so it is registered under
one stable name here instead of being put on sys.path (that would shadow ComfyUI's own top-level modules).
"""

import importlib.util
import sys

from pack_paths import PACK_ROOT


def _register_pack() -> None:
    if "reelsmith" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "reelsmith", PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["reelsmith"] = module
    spec.loader.exec_module(module)


_register_pack()
