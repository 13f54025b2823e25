"""pytest plugin (loaded by pyproject's addopts): collect the repository root as a plain directory.

The root is the ComfyUI pack: it has an `__init__.py` with relative imports, and pytest would import it as a
package named after the checkout's folder, which fails for folder names like `my-checkout`. The tests import
the pack as `reelsmith` instead (tests/conftest.py). A conftest.py cannot do this: the root's collector is
made before the root's own conftest applies.
"""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pytest_collect_directory(path, parent):
    if pathlib.Path(path).resolve() == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
