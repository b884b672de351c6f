"""Registries and how packages fill them: every module of hpo.models and hpo.data, none listed by hand."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpo.registry import Registry, import_submodules


def test_every_module_of_the_packages_registers_itself() -> None:
    from hpo.data import SOURCES
    from hpo.models import FAMILIES

    assert FAMILIES.names() == ["cnn", "mlp", "resnet", "vgg"]
    assert SOURCES.names() == ["csv", "images", "npz", "sklearn", "synthetic"]
    # No import line to keep up to date: the packages name none of their modules.
    root = Path(__file__).parents[2] / "hpo"
    for package, modules in (("models", FAMILIES.names()), ("data", SOURCES.names())):
        init = (root / package / "__init__.py").read_text()
        assert "import_submodules(__name__, __path__)" in init
        for module in modules:
            assert f"hpo.{package} import" not in init and f"hpo.{package}.{module}" not in init


def test_a_new_file_with_one_decorator_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "plugins_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from hpo.registry import import_submodules\n"
        "from plugins_pkg.base import THINGS\n"
        "LOADED = import_submodules(__name__, __path__)\n"
    )
    (package / "base.py").write_text(
        "from hpo.registry import Registry\nTHINGS: Registry[type] = Registry('thing')\n"
    )
    for name in ("alpha", "beta", "_private"):
        (package / f"{name}.py").write_text(
            textwrap.dedent(f"""\
                from plugins_pkg.base import THINGS

                @THINGS.register("{name.strip("_")}")
                class Thing:
                    pass
            """)
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    import plugins_pkg  # type: ignore[import-not-found]

    try:
        assert plugins_pkg.LOADED == ["alpha", "base", "beta"]  # sorted; _private skipped
        assert plugins_pkg.THINGS.names() == ["alpha", "beta"]
        assert isinstance(plugins_pkg.THINGS, Registry)
        assert import_submodules("plugins_pkg", plugins_pkg.__path__) == ["alpha", "base", "beta"]
        assert len(plugins_pkg.THINGS) == 2  # importing again registers nothing twice
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "plugins_pkg"]:
            del sys.modules[name]


def test_help_does_not_discover_families_or_sources() -> None:
    # Discovery runs when hpo.models / hpo.data are imported, which `hpo --help` never does.
    code = (
        "import sys; from click.testing import CliRunner; from hpo.cli import main; "
        "CliRunner().invoke(main, ['--help']); "
        "print(','.join(m for m in sys.modules if m.startswith(('hpo.models', 'hpo.data'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
