"""Package attributes that load on first use (PEP 562), so importing a light module of a package stays light.

`graft.training.config` (TrainConfig, for `graft --help`) or `graft.data.groups` must not pull in torch through
their package's `__init__`; the package's public names still work (`from graft.training import train`), and
import the module that defines them when first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public `names` map to the modules that define them.

    A name that is not listed but is a submodule (`graft.data.sources`) is imported as such, as an eager package
    would have made it an attribute.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> object:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        if not name.startswith("__"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
