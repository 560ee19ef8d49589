"""dagster-dbt in its mode for a dbt that runs outside this interpreter, as dbt always does here.

dagster-dbt decides once, when its `compat` module is first imported, whether dbt-core is
importable beside it. When it is, it imports dbt-core's adapter classes and artifact classes
there and then (mashumaro builds some 300 serializers while they import): about 1 s of wall and
CPU in every process that loads this code location (the code server, `dagster job execute`,
each run worker a sensor or the UI launches, the steps' forkserver), before anything runs. It
needs them only for work in the Dagster process that this product never asks for: evaluating
a dbt `select` narrower than every node (`@dbt_assets` here selects every node; narrower runs
are Dagster asset selections) and building a dbt adapter in the step for column and row-count
metadata (never built here: `DbtCliResourceWithoutAdapter` in activation/dagster_api.py).

Without dbt-core, dagster-dbt runs dbt through its executable and reads its JSON log with its
own copies of dbt's status enums, choosing how to read the log by the version the executable
reports (dbt Core's here): the mode dagster-dbt has for dbt Fusion and for a dbt-core
installed in another environment (`dbt_executable`). This product runs dbt only that way
(`activation-dbt`, then the real dbt, in their own process), so it selects that mode: while
`dagster_dbt.compat` executes, and only then, `dbt.version` cannot be imported. Nothing else
changes: dbt-core stays importable by anything else, before and after. (A second thread importing
dbt-core during those few milliseconds would be refused too; nothing in this product imports
dbt-core in its own processes.)

`activation/__init__.py` installs the finder, so it is in place before any module of this
package can import dagster-dbt. When dagster-dbt was imported before this package, it keeps the
mode it chose; both modes behave the same for this product, one only loads slower. The mode is
pinned by tests/unit/test_dbt_out_of_process.py: a dagster-dbt release that probes dbt-core
some other way fails there, by name.
"""

import sys
from collections.abc import Sequence
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType

DECIDING_MODULE = "dagster_dbt.compat"
"""The dagster-dbt module that probes for dbt-core when imported."""
PROBED_MODULE = "dbt.version"
"""What it imports to find dbt-core."""


class _WithoutDbtCore(Loader):
    """Executes `dagster_dbt.compat` with dbt-core's version module out of reach."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        missing = object()
        before = sys.modules.get(PROBED_MODULE, missing)
        # None in sys.modules makes `import dbt.version` raise ImportError (Python's documented
        # way to block one import), which dagster-dbt reads as "dbt-core is not installed".
        sys.modules[PROBED_MODULE] = None  # type: ignore[assignment]
        try:
            self._loader.exec_module(module)
        finally:
            if before is missing:
                del sys.modules[PROBED_MODULE]
            else:
                sys.modules[PROBED_MODULE] = before  # type: ignore[assignment]

    def __getattr__(self, name: str) -> object:
        # get_source, get_code...: tracebacks through compat.py still show its lines.
        return getattr(self._loader, name)


class DagsterDbtWithoutDbtCore(MetaPathFinder):
    """Finds `dagster_dbt.compat` where Python would, and loads it through `_WithoutDbtCore`."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname != DECIDING_MODULE:
            return None
        spec = PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _WithoutDbtCore(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on `sys.meta_path`, once per process."""
    if not any(isinstance(finder, DagsterDbtWithoutDbtCore) for finder in sys.meta_path):
        sys.meta_path.insert(0, DagsterDbtWithoutDbtCore())
