"""The top-level API: one-liners stay functions whatever has been imported, packages stay packages."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import graft

ONE_LINERS = ("train", "evaluate", "reshape", "load", "info", "export", "import_keras")


def test_one_liners_are_not_shadowed_by_packages_of_the_same_name():
    for package in ("graft.training", "graft.evaluation", "graft.surgery", "graft.exports", "graft.serve"):
        importlib.import_module(package)  # importing a subpackage sets an attribute on graft: it must not clash
    for name in ONE_LINERS:
        assert callable(getattr(graft, name)) and not isinstance(getattr(graft, name), types.ModuleType), name
    assert isinstance(graft.surgery, types.ModuleType) and isinstance(graft.serve, types.ModuleType)
    assert callable(graft.surgery.rechannel) and callable(graft.Trainer)


def test_every_public_name_resolves_and_all_lists_them():
    assert set(graft.__all__) == {*graft._EXPORTS, "GraftError", "__version__"}
    for name in graft.__all__:
        assert getattr(graft, name) is not None


def test_import_graft_loads_no_torch():
    code = "import sys, graft; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_subpackages_resolve_after_a_plain_import_graft():
    """docs/rounds.md: `graft.rounds.init(...)` after `import graft` (a fresh interpreter: nothing imported yet)."""
    code = (
        "import graft\n"
        "print(callable(graft.rounds.init), callable(graft.rounds.add), callable(graft.data.load_splits))\n"
        "print(hasattr(graft, 'nosuch'), 'rounds' in dir(graft))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "False", "True"]
