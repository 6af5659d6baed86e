"""The command line: every sub-command's help renders and documents each of its options."""

import argparse
import subprocess
import sys

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


def _one_line(capsys, fragment):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and fragment in err[-1], err
    return err


TINY = ["--data", "digits", "--model", "r18_0.125x_sk0", "--image-size", "16", "--epochs", "1",
        "--batch-size", "128", "--workers", "0", "--no-knn-monitor"]


@pytest.mark.parametrize("args, fragment", [
    (["pretrain", *TINY, "--device", "cuda"], "--device cuda, but this machine has no usable CUDA GPU"),
    (["pretrain", *TINY, "--image-size", "100000"], "'image_size' must be <= 2048"),
    (["predict", "--model", "m.pt", "--batch-size", "0", "x.png"], "--batch-size: must be at least 1"),
    (["predict", "--model", "m.pt", "--top-k", "0", "x.png"], "--top-k: must be at least 1"),
    (["evaluate", "--model", "m.pt", "--image-size", "99999"], "must be from 8 to 2048 pixels"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, capsys, args, fragment):
    from simclrv2.cli import main
    out = tmp_path / "out"
    try:
        code = main([*args, "--out", str(out)] if args[0] == "pretrain" else args)
    except SystemExit as exc:  # argparse: usage line, then the error, exit code 2
        code = exc.code
    assert code == 2
    _one_line(capsys, fragment)
    assert not out.exists()


def test_disk_full_read_only_and_missing_extras_are_one_line_errors(tmp_path, capsys, monkeypatch):
    import errno
    import sys

    from simclrv2 import checkpoint
    from simclrv2.cli import main

    # a read-only place (the parent cannot be created)
    assert main(["pretrain", *TINY, "--out", "/proc/simclrv2-test/run"]) == 2
    assert len(_one_line(capsys, "cannot write or read /proc/simclrv2-test")) == 1

    # a full disk when the first checkpoint is written
    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_torch_save", full)
    assert main(["pretrain", *TINY, "--checkpoint-every", "2", "--out", str(tmp_path / "full")]) == 2
    _one_line(capsys, "No space left on device: free disk space")
    monkeypatch.undo()

    # --tensorboard without tensorboard installed; export --format onnx without onnx
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["pretrain", *TINY, "--tensorboard", "--out", str(tmp_path / "tb")]) == 2
    _one_line(capsys, "pip install 'simclrv2[tensorboard]'")
    assert not (tmp_path / "tb").exists()
    from simclrv2.checkpoint import save_checkpoint
    from simclrv2.commands import export
    from simclrv2.models import build_model, classifier_config
    from simclrv2.record import Record

    config = classifier_config("r18_0.125x_sk0", num_classes=2, small_images=True)
    save_checkpoint({"record": Record("finetune", config, 16, ["a", "b"]).to_data(),
                     "model": build_model(config).state_dict()}, tmp_path / "m.pt")
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    assert main(["export", "--model", "missing.pt", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    _one_line(capsys, "checkpoint missing.pt does not exist")  # a missing input first, then a missing extra
    assert main(["export", "--model", str(tmp_path / "m.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    _one_line(capsys, "pip install 'simclrv2[onnx]'")


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(subcommands()))],
                         ids=lambda command: " ".join(command) or "simclrv2")
def test_help_does_not_import_torch(command):
    # importing torch alone takes 1.5 s; --help of every command takes a fraction of that without it
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "simclrv2", *command, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "simclrv2.cli" in imported
    assert [m for m in imported if m == "torch" or m.startswith("torch.")] == []
    if command == ["pretrain"]:
        assert "--temperature" in done.stdout and "--batch-size" in done.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`simclrv2 models | head -1`: no 'cannot write ... Broken pipe' disk error, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "simclrv2", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before anything is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == "", err
