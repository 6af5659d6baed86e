"""The command line: every sub-command's help renders and documents each of its options."""

import argparse

import pytest

from simclrv2.cli import build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_every_subcommand():
    text = build_parser().format_help()
    for name in subcommands():
        assert name in text, name


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_subcommand_help_renders_and_documents_every_option(name, capsys):
    # argparse formats help strings with %, so a literal "1%" in a help text used to crash --help
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([name, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    parser = subcommands()[name]
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"{name} {action.option_strings[0]} has no help text"
            assert action.option_strings[-1] in text


def test_debug_shows_the_traceback_and_still_exits_2(tmp_path, capsys):
    from simclrv2.cli import main
    missing = tmp_path / "missing.pt"
    assert main(["evaluate", "--model", str(missing)]) == 2
    plain = capsys.readouterr().err
    assert plain.strip().splitlines() == [plain.strip()] and str(missing) in plain
    assert main(["--debug", "evaluate", "--model", str(missing)]) == 2
    debug = capsys.readouterr().err
    assert "Traceback" in debug and debug.strip().splitlines()[-1] == plain.strip()
