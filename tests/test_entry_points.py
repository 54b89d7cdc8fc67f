"""Every command-line module of the package takes its arguments as ``main(argv)`` (the rule ARCHITECTURE.md gives
for entry points), so Python callers and tests drive each one without touching ``sys.argv``: ``--help`` given as
argv prints that module's own usage and exits 0."""
import importlib
import inspect
import pkgutil

import pytest

import panns


def _command_modules():
    names = []
    for info in pkgutil.walk_packages(panns.__path__, "panns."):
        if info.ispkg:
            continue
        mod = importlib.import_module(info.name)
        if callable(getattr(mod, "main", None)) and inspect.getmodule(mod.main) is mod:
            names.append(info.name)
    return names


COMMANDS = _command_modules()


def test_the_command_modules_are_found():
    assert {"panns.main", "panns.inference", "panns.dataset", "panns.create_indexes", "panns.create_black_list",
            "panns.demo.data", "panns.demo.checks", "panns.finetune_template"} <= set(COMMANDS), COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_main_takes_argv(name, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "--no-such-option-here"])   # read instead of argv: exit 2
    mod = importlib.import_module(name)
    assert "argv" in inspect.signature(mod.main).parameters, name
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0, name
    assert "usage:" in capsys.readouterr().out, name
