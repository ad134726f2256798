"""Where each step's outputs live: one owner per artifact name.

Every step writes under one root URI. These small classes are the only place that knows the
file names inside it; the steps, the components, the CLI and the reports ask them instead of
joining strings, so a renamed file is one edit::

    TrainOutputs(root).best        <root>/best.pt
    EvalOutputs(root).metrics      <root>/metrics.json
    SentimentOutputs(root).split("train")  <root>/train.jsonl

They only build URIs (no I/O), so any module may use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from srs_core import store


@dataclass(frozen=True)
class _Outputs:
    root: str

    def _at(self, *parts: str) -> str:
        return store.join(self.root, *parts)


@dataclass(frozen=True)
class TrainOutputs(_Outputs):
    """``srs train``: the selector's run directory (``train.output``)."""

    @property
    def best(self) -> str:
        """The best model by validation MAP, self-contained (weights, config, vocabulary)."""
        return self._at("best.pt")

    @property
    def history(self) -> str:
        """One JSON line per logged step and per validation."""
        return self._at("history.jsonl")

    @property
    def summary(self) -> str:
        return self._at("train_summary.json")

    @property
    def vocab(self) -> str:
        return self._at("vocab.txt")

    @property
    def checkpoints(self) -> str:
        """Resume state of an interrupted run (``ckpt-<step>.pt``; ``LATEST`` names the newest)."""
        return self._at("checkpoints")


@dataclass(frozen=True)
class TeacherOutputs(_Outputs):
    """``srs emotion train``: the SER30K emotion teacher."""

    @property
    def weights(self) -> str:
        """Backbone weights of the best epoch, without the classifier."""
        return self._at("teacher.pth")

    @property
    def metrics(self) -> str:
        return self._at("metrics.json")

    @property
    def checkpoints(self) -> str:
        return self._at("checkpoints")


@dataclass(frozen=True)
class EvalOutputs(_Outputs):
    """``srs evaluate``: metrics of both protocols and per-dialog scores."""

    @property
    def metrics(self) -> str:
        return self._at("metrics.json")

    def scores(self, protocol: str = "strict") -> str:
        """Per-dialog candidates and scores: ``scores.jsonl`` (strict) or
        ``scores_<protocol>.jsonl``."""
        return self._at("scores.jsonl" if protocol == "strict" else f"scores_{protocol}.jsonl")


@dataclass(frozen=True)
class SentimentOutputs(_Outputs):
    """``srs sentiment``: text polarity per dialog, one JSON Lines file per split."""

    def split(self, name: str) -> str:
        return self._at(f"{name}.jsonl")


@dataclass(frozen=True)
class DataRoots(_Outputs):
    """A directory holding both data sets: what ``srs data synth`` writes and
    ``srs pipeline run --local --data`` reads."""

    @property
    def stickerchat(self) -> str:
        return self._at("stickerchat")

    @property
    def ser30k(self) -> str:
        return self._at("ser30k")


@dataclass(frozen=True)
class RunOutputs(_Outputs):
    """A pipeline run's ``output_root``: where each step puts its outputs."""

    @property
    def sentiment(self) -> SentimentOutputs:
        return SentimentOutputs(self._at("sentiment"))

    @property
    def teacher(self) -> TeacherOutputs:
        return TeacherOutputs(self._at("teacher"))

    def anchors(self, k: int) -> str:
        """Prefix of the ``7*k`` anchors (``<prefix>.npy`` and its sidecar)."""
        return self._at("anchors", f"anchors-k{k}")

    @property
    def train(self) -> TrainOutputs:
        return TrainOutputs(self._at("srs"))

    def evaluation(self, split: str) -> EvalOutputs:
        return EvalOutputs(self._at("evaluate", split))

    @property
    def index(self) -> str:
        return self._at("index")

    @property
    def inference_service(self) -> str:
        """The InferenceService a run rendered for its checkpoint and index (``deploy``)."""
        return self._at("serving", "inferenceservice.yaml")
