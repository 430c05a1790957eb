"""GetFeaturesBatch: many GetFeatures requests in one stream (docs/training.md).

Requests stream in, one `GetFeaturesBatchResponse` per request streams out, in
request order, carrying the request's position (`index`) and either the
GetFeaturesResponse GetFeatures would give or its contract error: a refusal
ends that row, never the stream.

The requests waiting when a chunk starts (at most `MAX_CHUNK_REQUESTS`) are
validated like GetFeatures requests, planned with one revision and read by ONE
snapshot statement (`ofp.store.batch_reads`, the statement GetFeatures' coalesced
reads use), then assembled one by one: the same planner, statement and
assembly as GetFeatures, so every answer and its snapshot_hash are the ones
GetFeatures gives on the same state.

Flow control: at most `QUEUED_REQUESTS` requests are read ahead of the chunk
being answered (gRPC's flow control then holds the client back), and every
answer is written with an awaited `context.write` (a slow reader holds the
server back). Memory per stream is bounded by both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import asyncpg
import grpc
from google.protobuf.message import DecodeError

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.errors import ContractError, ErrorCode
from ofp.contracts.request import ValidRequest, request_to_json, validate_request_json
from ofp.contracts.response_proto import response_proto
from ofp.contracts.timefmt import format_micros
from ofp.logs import get_logger
from ofp.store.batch_reads import BatchAnswer, assemble_batch, fetch_batch, plan_batch
from ofp.store.db import is_transient

from .servicer import FeatureService, UndecodableRequest, _RpcResult, _RpcScope, now_us

_log = get_logger("ofp.server")
MAX_CHUNK_REQUESTS = 1_000
# A chunk stops growing past this many (key, group) cells: requests may carry
# up to 100 keys and 16 groups each, and one statement's parameters stay bounded.
MAX_CHUNK_CELLS = 20_000
QUEUED_REQUESTS = 2 * MAX_CHUNK_REQUESTS
_END = object()


def decode_batch_request(data: bytes) -> pb.GetFeaturesBatchRequest | UndecodableRequest:
    msg = pb.GetFeaturesBatchRequest()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return UndecodableRequest("GetFeaturesBatchRequest")
    return msg


class BatchService:
    """The GetFeaturesBatch handler, over the same FeatureService state (policies,
    pool, basis watchers, metrics) as GetFeatures."""

    def __init__(self, service: FeatureService) -> None:
        self.service = service

    async def GetFeaturesBatch(
        self,
        request_iterator: AsyncIterator[pb.GetFeaturesBatchRequest | UndecodableRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        outcome = _RpcResult()
        with _RpcScope("GetFeaturesBatch", None, context, outcome, self.service.metrics):
            queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUED_REQUESTS)
            failed: list[BaseException] = []

            async def pump() -> None:
                try:
                    async for msg in request_iterator:
                        await queue.put(msg)
                except Exception as exc:  # the client's half of the stream broke
                    failed.append(exc)
                await queue.put(_END)

            reader = asyncio.create_task(pump())
            index = 0
            try:
                ended = False
                while not ended:
                    first = await queue.get()
                    if first is _END:
                        break
                    items = [first]
                    cells = _cells(first)
                    while (len(items) < MAX_CHUNK_REQUESTS and cells < MAX_CHUNK_CELLS
                           and not queue.empty()):
                        item = queue.get_nowait()
                        if item is _END:
                            ended = True
                            break
                        items.append(item)
                        cells += _cells(item)
                    try:
                        answers = await self._answer(items)
                    except Exception:
                        # A bug, never bad input (those are rows): keep the traceback,
                        # tell the client no more than GetFeatures would.
                        outcome.code, outcome.grpc_code = "INTERNAL", "INTERNAL"
                        _log.exception("rpc_failed", answered=index)
                        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                        raise
                    for answer in answers:
                        answer.index = index
                        index += 1
                        await context.write(answer)
                if failed:
                    raise failed[0]
            finally:
                reader.cancel()

    async def _answer(self, items: Sequence[Any]) -> list[pb.GetFeaturesBatchResponse]:
        """One answer per item, in order; every refusal in its row."""
        service = self.service
        results: list[pb.GetFeaturesResponse | ContractError | None] = [None] * len(items)
        request_ids: list[str | None] = [None] * len(items)
        by_revision: dict[str | None, list[tuple[int, ValidRequest]]] = {}
        for i, msg in enumerate(items):
            if isinstance(msg, UndecodableRequest):
                results[i] = msg.refusal
                continue
            if not msg.HasField("request"):
                results[i] = ContractError(ErrorCode.INVALID_REQUEST, "request: required")
                continue
            try:
                req = validate_request_json(
                    request_to_json(msg.request, service._unknown_fields),
                    max_keys=service.settings.max_keys,
                    max_groups=service.settings.max_groups,
                )
            except ContractError as exc:
                results[i] = exc
                continue
            request_ids[i] = req.request_id
            if req.graph_resolution_mode == "require_ieg":
                results[i] = ContractError(
                    ErrorCode.UNAVAILABLE,
                    "graph_resolution_mode require_ieg: no identity graph source is configured",
                    retryable=False)
                continue
            by_revision.setdefault(req.policy_revision, []).append((i, req))
        for revision, group in by_revision.items():
            try:
                answers = await self._snapshots(revision, [req for _, req in group])
            except ContractError as exc:
                answers = [BatchAnswer(error=exc)] * len(group)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                answers = [BatchAnswer(error=ContractError(
                    ErrorCode.UNAVAILABLE, "the feature store is unreachable"))] * len(group)
            for (i, req), answer in zip(group, answers, strict=True):
                if answer.error is not None:
                    results[i] = answer.error
                    continue
                assert answer.snapshot is not None
                doc: dict[str, Any] = {"status": "OK", "snapshot": answer.snapshot,
                                       "served_at_utc": format_micros(now_us())}
                if req.request_id is not None:
                    doc["request_id"] = req.request_id
                fresh = answer.snapshot["freshness"]
                service.metrics.snapshot_served(state=fresh["state"], flags=fresh["flags"])
                results[i] = response_proto(doc, answer.typed)
        out = []
        for result, request_id in zip(results, request_ids, strict=True):
            if isinstance(result, pb.GetFeaturesResponse):
                out.append(pb.GetFeaturesBatchResponse(response=result))
            else:
                assert isinstance(result, ContractError)
                out.append(pb.GetFeaturesBatchResponse(error=_error(result, request_id)))
        return out

    async def _snapshots(self, revision: str | None,
                         reqs: list[ValidRequest]) -> list[BatchAnswer]:
        """The answers of requests naming one revision (None: the active one), with
        the revision handling of GetFeatures (`FeatureService._snapshot`)."""
        service = self.service
        policies = service.policies
        waited: dict[int, ContractError] = {}
        for attempt in range(3):
            chosen = await service._choose(revision)
            planned_epoch = policies.epoch
            policy = chosen.policy
            planned = plan_batch(reqs, policy, chosen.group_ids)
            # A group unknown to the cached revision: perhaps just activated.
            if (attempt == 0 and any(isinstance(p, ContractError) for p in planned)
                    and await policies.reload_if_moved(service.pool)):
                continue
            stream = service.settings.bus_stream(policy.source_topic)
            # Read-your-basis: the statement starts after every wait, so each
            # answer's basis reaches its request's min_basis.
            for j, req in enumerate(reqs):
                if req.min_basis and j not in waited:
                    try:
                        await service._wait_for_basis(stream, req.min_basis)
                    except ContractError as exc:
                        waited[j] = exc
            planned = [waited.get(j, p) for j, p in enumerate(planned)]
            async with service.pool.acquire() as conn, conn.transaction(
                    isolation="repeatable_read", readonly=True):
                # A chunk's statement can cross jit_above_cost; compiling it costs
                # more than it saves (docs/decisions.md, "Training retrieval").
                await conn.execute("SET LOCAL jit = off")
                rows = await fetch_batch(cast(asyncpg.Connection, conn), stream=stream,
                                         planned=planned,
                                         revision=(policy.policy_id, policy.revision))
            if rows is None:
                raise ContractError(ErrorCode.UNAVAILABLE, "no active feature policy yet")
            read = next((r for r in rows if r is not None), None)
            if read is None:  # every request was refused before the read
                return assemble_batch(planned, rows, stream=stream, max_basis_lag_us=0,
                                      created_at_us=0)
            if read.epoch != planned_epoch:
                if read.epoch is not None:
                    await policies.load(service.pool, at_least=read.epoch)
                active = policies.active
                if policies.servable(policy.revision) is None or (
                        revision is None and active is not None
                        and active.policy.revision != policy.revision):
                    continue
            if read.content_digest != chosen.digest:  # a revision's content never changes
                break
            return assemble_batch(
                planned, rows, stream=stream,
                max_basis_lag_us=service.settings.max_basis_lag_s * 1_000_000,
                created_at_us=now_us())
        raise ContractError(
            ErrorCode.MISSING_PROVENANCE, "the active policy changed during the read; retry")


def _cells(item: Any) -> int:
    """The (key, group) cells a queued request asks for, at most (1: undecodable)."""
    if isinstance(item, UndecodableRequest) or not item.HasField("request"):
        return 1
    req = item.request
    return max(1, len(req.feature_keys)) * max(1, len(req.feature_groups))


def _error(exc: ContractError, request_id: str | None) -> pb.ErrorResponse:
    """The contract error GetFeatures would carry in its status details."""
    err = pb.ErrorResponse(status="ERROR", code=exc.code.value, retryable=exc.retryable,
                           detail=exc.detail, served_at_utc=format_micros(now_us()))
    if request_id is not None:
        err.request_id = request_id
    for partition, offset in exc.basis or ():
        err.current_basis.add(partition=partition, offset=str(offset))
    return err
