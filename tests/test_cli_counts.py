"""Every count option of every command is range-checked at parse time (exit 2 naming it), as
config values are; `srs suggest` refuses `-n` below `-k` and malformed or unknown `--sets`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from srs_core.cli import build_parser, main


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        else:
            yield path, action


def test_no_count_option_takes_a_bare_int_or_float() -> None:
    """`type=int` accepts 0 and -5 for a count; every number goes through a range type."""
    bare = [f"{' '.join(path)} {'/'.join(action.option_strings)}"
            for path, action in _actions(build_parser()) if action.type in (int, float)]
    assert bare == []


# (argv before the bad value, the option, a value out of range, words of the message)
_BAD = [
    (["suggest", "--checkpoint", "c", "--index", "i", "--dialog", "d"], "-k", "0", ">= 1"),
    (["suggest", "--checkpoint", "c", "--index", "i", "--dialog", "d"], "-k", "-3", ">= 1"),
    (["suggest", "--checkpoint", "c", "--index", "i", "--dialog", "d"], "-n", "0", ">= 1"),
    (["suggest", "--checkpoint", "c", "--index", "i", "--dialog", "d"], "--per-set", "-1",
     ">= 0"),
    (["suggest", "--checkpoint", "c", "--index", "i", "--dialog", "d"], "--token-cache", "-1",
     ">= 0"),
    (["suggest", "--checkpoint", "c", "--index", "i", "--dialog", "d"], "-k", "two",
     "not an integer"),
    (["index", "build", "--checkpoint", "c", "--stickerchat", "s", "--out", "o"],
     "--batch-size", "0", ">= 1"),
    (["serve", "--checkpoint", "c", "--index", "i"], "--port", "70000", "<= 65535"),
    (["serve", "--checkpoint", "c", "--index", "i"], "--max-batch", "0", ">= 1"),
    (["serve", "--checkpoint", "c", "--index", "i"], "--batch-wait-ms", "-1", ">= 0"),
    (["serve", "--checkpoint", "c", "--index", "i"], "--batch-wait-ms", "nan", "finite"),
    (["data", "validate"], "--workers", "0", ">= 1"),
    (["data", "synth", "--out", "o"], "--dialogs", "0", ">= 1"),
    (["data", "synth", "--out", "o"], "--sets", "-2", ">= 1"),
    (["data", "synth", "--out", "o"], "--images", "0", ">= 1"),
    (["data", "synth", "--out", "o"], "--image-size", "0", ">= 1"),
    (["data", "synth", "--out", "o"], "--seed", "-1", ">= 0"),
    (["data", "upload", "a", "b"], "--workers", "0", ">= 1"),
    (["sentiment", "--dialogs", "d", "--out", "o"], "--workers", "-1", ">= 0"),
    (["sentiment", "--dialogs", "d", "--out", "o"], "--chunk-size", "0", ">= 1"),
    (["emotion", "anchors", "--out", "o"], "--k", "0", ">= 1"),
    (["emotion", "anchors", "--out", "o"], "--batch-size", "0", ">= 1"),
    (["emotion", "anchors", "--out", "o"], "--seed", "-1", ">= 0"),
    (["job", "render"], "--workers", "0", ">= 1"),
    (["job", "render"], "--nproc-per-node", "0", ">= 1"),
    (["job", "render"], "--gpus-per-worker", "-1", ">= 0"),
    (["job", "render"], "--backoff-limit", "-1", ">= 0"),
    (["job", "run"], "--timeout", "0", "> 0"),
    (["job", "run"], "--poll-interval", "-1", "> 0"),
    (["job", "run"], "--pending-timeout", "inf", "finite"),
    (["job", "local"], "--nproc", "0", ">= 1"),
    (["job", "local"], "--timeout", "-5", "> 0"),
]


@pytest.mark.parametrize(("argv", "option", "value", "words"), _BAD,
                         ids=[f"{a[0]}{o}={v}" for a, o, v, _ in _BAD])
def test_count_out_of_range_is_a_usage_error(argv, option, value, words, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*argv, option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and value in err and words in err, err


def test_counts_in_range_parse() -> None:
    args = build_parser().parse_args(["suggest", "--checkpoint", "c", "--index", "i", "--dialog",
                                      "d", "-k", "1", "-n", "1", "--per-set", "0",
                                      "--sets", " 3, 12 ,-4"])
    assert (args.k, args.n, args.per_set, args.sets) == (1, 1, 0, [3, 12, -4])
    args = build_parser().parse_args(["serve", "--checkpoint", "c", "--index", "i",
                                      "--batch-wait-ms", "0", "--port", "1"])
    assert (args.batch_wait_ms, args.port) == (0.0, 1)


@pytest.fixture()
def dialog(tmp_path: Path) -> str:
    path = tmp_path / "dialog.txt"
    path.write_text("今天 真 开心\n", encoding="utf-8")
    return str(path)


def _suggest(dialog: str, *extra: str) -> int:
    return main(["suggest", "--checkpoint", "/nonexistent/best.pt", "--index",
                 "/nonexistent/index", "--dialog", dialog, *extra])


def test_suggest_k_zero_is_refused(dialog, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _suggest(dialog, "-k", "0")
    assert exit_.value.code == 2
    assert "-k" in capsys.readouterr().err


def test_suggest_n_below_k_is_refused_not_widened(dialog, caplog) -> None:
    """Before anything is loaded (the checkpoint does not even exist)."""
    assert _suggest(dialog, "-k", "5", "-n", "3") == 2
    assert "-n 3" in caplog.text and "-k 5" in caplog.text


@pytest.mark.parametrize("sets", ["1,x", "1,,2", "1.5", "0x10", "9" * 30])
def test_malformed_set_ids_are_a_usage_error_naming_them(dialog, sets, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _suggest(dialog, "--sets", sets)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--sets" in err and "set id" in err


@pytest.mark.slow
def test_unknown_set_ids_are_a_usage_error_naming_them(tmp_path_factory, dialog, caplog,
                                                       capsys) -> None:
    from library_setup import tiny_library

    from srs_core.library import StickerIndex

    lib = tiny_library(tmp_path_factory.getbasetemp() / "tiny-library")
    known = int(StickerIndex.load(lib.index).set_ids[0])
    argv = ["suggest", "--checkpoint", lib.checkpoint, "--index", lib.index, "--dialog", dialog]
    assert main([*argv, "--sets", f"{known},987654321,-7"]) == 2
    assert "987654321" in caplog.text and "-7" in caplog.text
    assert str(known) not in caplog.text.split("unknown")[-1].split("(")[0].split(",")
    capsys.readouterr()
    assert main([*argv, "--sets", str(known), "-k", "2", "-n", "4"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert {s["set_id"] for s in json.loads(line)["suggestions"]} == {known}
