"""A KServe custom predictor that answers ``suggest`` over the v1 REST protocol.

``POST /v1/models/<name>:predict`` with::

    {"instances": [{"utterances": ["...", "..."], "k": 5, "n": 50,
                    "sets": [set_id, ...], "per_set": 1}]}

returns ``{"predictions": [{"polarity": {...}, "suggestions": [...]}, ...]}`` (one per
instance, see :meth:`srs_core.library.Suggester.suggest`). The checkpoint and the index are
loaded before the server listens, so ``GET /v1/models/<name>`` (the readiness probe) answers
200 only once the model can answer. Bad input is a 400 naming the field (a set id that no
sticker of the index belongs to included); a body over ``Limits.max_body_bytes`` is a 413.

Concurrent requests are scored together: :class:`MicroBatcher` collects the instances that
arrive within ``batch_wait_ms`` (up to ``max_batch``) and runs them as one model batch on one
worker thread, which is also what keeps torch calls from running concurrently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from srs_core.data import limits
from srs_core.library import Query, Suggester

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests are refused, not truncated."""

    max_body_bytes: int = 1 << 20
    max_instances: int = 64
    max_utterances: int = limits.MAX_CONTEXT_UTTERANCES
    # per utterance; the suggester then keeps the last limits.MAX_UTTERANCE_CHARS of each
    # (a "warnings" entry of the prediction says so)
    max_chars: int = 2000
    max_k: int = 50
    max_n: int = 500
    max_sets: int = 1000


class BadRequest(ValueError):
    """A request the server refuses; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _int(item: dict, key: str, default: int, low: int, high: int, where: str) -> int:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}.{key} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise BadRequest(f"{where}.{key} must be between {low} and {high}, got {value}")
    return value


def parse_instances(payload: Any, limits: Limits = Limits(),
                    known_sets: Collection[int] | None = None) -> list[Query]:
    """The v1 ``instances`` as queries; :class:`BadRequest` says what is wrong and where.

    ``known_sets`` (the index's set ids): a set id outside it is a 400 naming it, not an
    answer with no suggestion.
    """
    if isinstance(payload, bytes | str):
        # KServe decodes JSON only for a JSON content type; `curl -d` sends form-encoded.
        try:
            payload = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not JSON ({exc})") from None
    if not isinstance(payload, dict) or "instances" not in payload:
        raise BadRequest('the body must be a JSON object with an "instances" list')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list')
    if len(instances) > limits.max_instances:
        raise BadRequest(f'"instances" has {len(instances)} items; at most '
                         f"{limits.max_instances} per request", status=413)
    known = {"utterances", "k", "n", "sets", "per_set"}
    queries = []
    for i, item in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object")
        unknown = sorted(set(item) - known)
        if unknown:
            raise BadRequest(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
        utterances = item.get("utterances")
        if not isinstance(utterances, list) or not utterances:
            raise BadRequest(f"{where}.utterances must be a non-empty list of strings")
        if len(utterances) > limits.max_utterances:
            raise BadRequest(f"{where}.utterances has {len(utterances)} items; at most "
                             f"{limits.max_utterances}", status=413)
        for j, text in enumerate(utterances):
            if not isinstance(text, str):
                raise BadRequest(f"{where}.utterances[{j}] must be a string")
            if len(text) > limits.max_chars:
                raise BadRequest(f"{where}.utterances[{j}] has {len(text)} characters; at "
                                 f"most {limits.max_chars}", status=413)
        if not any(text.strip() for text in utterances):
            raise BadRequest(f"{where}.utterances: every utterance is empty")
        k = _int(item, "k", 5, 1, limits.max_k, where)
        n = _int(item, "n", max(50, k), k, limits.max_n, where)
        per_set = _int(item, "per_set", 0, 0, limits.max_k, where)
        sets = item.get("sets", [])
        if not isinstance(sets, list) or len(sets) > limits.max_sets or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in sets):
            raise BadRequest(f"{where}.sets must be a list of at most {limits.max_sets} "
                             "integer set ids")
        unknown = [] if known_sets is None else [
            s for s in dict.fromkeys(sets) if s not in known_sets]
        if unknown:
            raise BadRequest(f"{where}.sets: unknown set id(s) {', '.join(map(str, unknown))}: "
                             "no sticker of the index belongs to them")
        queries.append(Query(tuple(utterances), k, n, tuple(sets), per_set))
    return queries


class MicroBatcher:
    """Groups concurrent submissions into one call of ``run`` on a single worker thread."""

    def __init__(self, run: Callable[[list[Query]], list[dict]], max_batch: int = 16,
                 wait_s: float = 0.005) -> None:
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        # One thread: torch is not called concurrently, and batches run in arrival order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="srs-batch")
        self.batches: list[int] = []  # sizes of the batches run (for tests and logs)

    async def submit(self, queries: list[Query]) -> list[dict]:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._serve())
        future = loop.create_future()
        self._queue.put_nowait((queries, future))
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            pending = [await self._queue.get()]
            size = len(pending[0][0])
            deadline = loop.time() + self.wait_s
            while size < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                pending.append(item)
                size += len(item[0])
            batch = [q for queries, _ in pending for q in queries]
            self.batches.append(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self.run, batch)
            except Exception as exc:  # every request of the batch fails with the cause
                log.exception("suggest batch of %d failed", len(batch))
                for _, future in pending:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for queries, future in pending:
                if not future.done():  # the client may have gone away
                    future.set_result(results[start:start + len(queries)])
                start += len(queries)


def make_model(name: str, checkpoint: str, index: str, kind: str = "flat",
               token_cache: int = 4096, max_batch: int = 16, batch_wait_ms: float = 5.0,
               limits: Limits = Limits()):
    """The ``kserve.Model`` (built here so that importing this module does not need kserve)."""
    import kserve
    from fastapi import HTTPException
    from kserve.errors import InvalidInput

    class SuggestModel(kserve.Model):
        """``suggest`` as a KServe predictor: load at start, then validated, batched predict."""

        def __init__(self) -> None:
            super().__init__(name)
            self.suggester: Suggester | None = None
            self.batcher: MicroBatcher | None = None

        def load(self) -> bool:
            self.suggester = Suggester.open(checkpoint, index, kind, token_cache)
            self.batcher = MicroBatcher(self.suggester.suggest_many, max_batch,
                                        batch_wait_ms / 1000)
            self.ready = True
            log.info("model %s ready: %d stickers, search %s", name,
                     len(self.suggester.index), kind)
            return self.ready

        async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> dict:
            length = int((headers or {}).get("content-length", 0) or 0)
            try:
                if length > limits.max_body_bytes:
                    raise BadRequest(f"request body of {length} bytes; at most "
                                     f"{limits.max_body_bytes}", status=413)
                assert self.suggester is not None
                queries = parse_instances(payload, limits, self.suggester.known_sets)
            except BadRequest as exc:
                if exc.status == 400:
                    raise InvalidInput(str(exc)) from None  # KServe's 400 {"error": ...}
                raise HTTPException(status_code=exc.status, detail=str(exc)) from None
            assert self.batcher is not None
            return {"predictions": await self.batcher.submit(queries)}

    return SuggestModel()


def _bind(host: str) -> None:
    """KServe's REST server always listens on 0.0.0.0; bind it to ``host`` instead (tests
    listen on loopback only). Patches the class this process's ModelServer instantiates."""
    import kserve.model_server as model_server

    base = model_server.RESTServer

    class BoundRESTServer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host

    model_server.RESTServer = BoundRESTServer


def serve(checkpoint: str, index: str, port: int = 8080, host: str = "0.0.0.0",
          name: str = "srs", kind: str = "flat", token_cache: int = 4096,
          max_batch: int = 16, batch_wait_ms: float = 5.0,
          argv: Sequence[str] = ()) -> None:
    """Load, then serve until SIGTERM/SIGINT (KServe's ModelServer, REST only)."""
    # kserve parses sys.argv when imported; ours are not its flags.
    sys.argv = [sys.argv[0], *argv]
    from kserve import ModelServer

    model = make_model(name, checkpoint, index, kind, token_cache, max_batch, batch_wait_ms)
    model.load()  # before listening: readiness means loaded
    if host != "0.0.0.0":
        _bind(host)
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


__all__ = ["BadRequest", "Limits", "MicroBatcher", "make_model", "parse_instances", "serve"]
