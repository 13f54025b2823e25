"""Paths the tests share (a module of its own: `conftest` is not importable by name when tests/e2e has one too)."""

import pathlib

PACK_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_REFERENCE = PACK_ROOT.parent / "shared" / "reference"
