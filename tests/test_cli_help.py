"""Help texts that state behaviour say what the code does (the code's own tests pin the
behaviour: tests/test_store.py for upload, tests/test_pipeline_cancel.py for cancelling)."""

from __future__ import annotations

import pytest

from srs_core.cli import main


def _help(capsys: pytest.CaptureFixture, *command: str) -> str:
    """``srs COMMAND --help`` as one line of single-spaced words (argparse wraps to the
    terminal's width)."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_upload_help_says_content_is_compared_not_size(capsys: pytest.CaptureFixture) -> None:
    text = _help(capsys, "data", "upload")
    assert "same content" in text and "MD5" in text
    assert "ETag of a single-part object" in text and "srs-md5 metadata" in text
    assert "run again" in text  # resumable
    assert "same size" not in text


def test_local_pipeline_run_help_states_what_a_signal_does(capsys: pytest.CaptureFixture) -> None:
    from pipelines.runner import CANCEL_GRACE_ENV, DEFAULT_CANCEL_GRACE

    text = _help(capsys, "pipeline", "run")
    for phrase in ("SIGTERM or SIGINT (Ctrl-C) cancels the run",
                   "the running step gets SIGTERM",
                   f"${CANCEL_GRACE_ENV} (default {DEFAULT_CANCEL_GRACE:g}) is killed",
                   "no further step starts", "(143, 130)",
                   "no process of the run is left", "a second signal kills at once"):
        assert phrase in text, phrase

