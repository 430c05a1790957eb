"""GetFeatures and GetStatus servicer: proto <-> domain only.

Validation, planning, assembly and the health ladder are pure functions in `ofp`;
this module turns a proto request into them, runs the one database read, and turns
the result (or a ContractError) back into proto and gRPC status. Every RPC logs one
`rpc_finished` line with the request id bound through contextvars (so any line logged
while the RPC runs carries it) and feeds the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import asyncpg
import grpc
import structlog
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.config import Settings
from ofp.contracts.errors import ContractError, ErrorCode
from ofp.contracts.request import (
    ValidRequest,
    request_to_json,
    unstorable_text,
    validate_request_json,
)
from ofp.contracts.response_proto import response_proto
from ofp.contracts.timefmt import format_micros
from ofp.health import Thresholds, status_report
from ofp.logs import get_logger
from ofp.model import ReadProbes, SnapshotRow, pins_of
from ofp.policy import Policy
from ofp.snapshot import TypedCell, assemble_snapshot, plan_read
from ofp.store.basis import BasisWatcher, reached
from ofp.store.coalesce import CoalescingReader
from ofp.store.db import is_transient
from ofp.store.replicas import NoReplicaInRotation, ReadRouter, Replica
from ofp.store.rollout import Rollout, read_rollout
from ofp.store.status import read_status

from .metrics import ServerMetrics
from .snapshot_log import SnapshotRecorder

_log = get_logger("ofp.server")
# One OK `rpc_finished` line in this many is logged at info (the rest at debug).
LOG_SAMPLE_EVERY = 100
_ok_calls = 0
# Proto enum numbers -> the contract's strings (their value names), for metric labels.
_STATE_NAMES = {number: name for name, number in pb.HealthState.items()}
_FLAG_NAMES = {number: name for name, number in pb.FreshnessFlag.items()}
ERROR_DOMAIN = "ofp.feature_plane"
_T = TypeVar("_T")


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    """One loaded revision: the policy, its digest and the group ids, taken together."""

    policy: Policy
    digest: str
    group_ids: dict[tuple[str, str], int]


class PolicyCache:
    """The revisions the server answers with, as recorded in the database: the active
    one, and those a request may name (the previous one, a staged one that has
    caught up). Reloaded when the rollout epoch a read returns has moved."""

    def __init__(self) -> None:
        self.active: ActivePolicy | None = None
        self.epoch: int | None = None
        self._servable: dict[str, ActivePolicy] = {}
        self._lock = asyncio.Lock()

    @property
    def policy(self) -> Policy | None:
        return None if self.active is None else self.active.policy

    def servable(self, revision: str) -> ActivePolicy | None:
        return self._servable.get(revision)

    def served(self) -> list[str]:
        return sorted(self._servable)

    async def load(self, pool: asyncpg.Pool, *, at_least: int | None = None
                   ) -> ActivePolicy | None:
        """Read the revisions again (skipped when another request already loaded
        epoch `at_least` or a later one: epochs only grow)."""
        async with self._lock:
            if at_least is not None and self.epoch is not None and self.epoch >= at_least:
                return self.active
            async with pool.acquire() as conn:
                rollout = await read_rollout(conn)
            self._install(rollout)
            return self.active

    async def reload_if_moved(self, pool: asyncpg.Pool) -> bool:
        """Reload if the rollout epoch moved since the last load; True if it did.

        For a request the cached revisions refuse (a group or revision unknown to
        them): a revision may have just been activated or caught up. One small
        read of the epoch, no more than the request's own read would have cost."""
        before = self.epoch
        epoch = await pool.fetchval("SELECT epoch FROM active_policy")
        if epoch is not None and epoch != self.epoch:
            await self.load(pool, at_least=int(epoch))
        # True also when another request's load moved the cache while this one
        # read the epoch: the caller must look again either way.
        return self.epoch != before

    def _install(self, rollout: Rollout | None) -> None:
        if rollout is None:
            self.active, self.epoch, self._servable = None, None, {}
            return

        def loaded(policy: Policy) -> ActivePolicy:
            return ActivePolicy(policy, policy.content_digest, rollout.group_ids)

        candidates = [rollout.active, rollout.previous, rollout.staged]
        servable = {p.revision: loaded(p) for p in candidates
                    if p is not None and rollout.servable(p.revision) is not None}
        self.active = servable[rollout.active.revision]
        self.epoch = rollout.epoch
        self._servable = servable


class FeatureService(pb_grpc.FeatureServiceServicer):
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, metrics: ServerMetrics | None = None,
        replicas: ReadRouter | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.policies = PolicyCache()
        self._watchers: dict[str, BasisWatcher] = {}
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.thresholds = Thresholds.from_settings(settings)
        # The snapshot log (ofp_server.snapshot_log), set by create_server; None: off.
        self.recorder: SnapshotRecorder | None = None
        self.reader = CoalescingReader(
            pool,
            in_flight=settings.db_reads_in_flight,
            on_statement=self.metrics.snapshot_statement,
            on_timing=self.metrics.statement_timed,
        )
        # Read replicas (ofp.store.replicas): a coalescing reader per replica, so
        # each replica runs up to db_reads_in_flight statements of its own.
        self.replicas = replicas
        self._replica_readers: dict[str, CoalescingReader] = {}
        if replicas is not None:
            replicas.on_check = self._replica_checked
            for r in replicas.replicas:
                self._replica_readers[r.name] = CoalescingReader(
                    r.pool, in_flight=settings.db_reads_in_flight,
                    on_statement=self.metrics.snapshot_statement,
                    on_timing=self.metrics.statement_timed)

    async def GetFeatures(
        self,
        request: pb.GetFeaturesRequest | UndecodableRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.GetFeaturesResponse:
        request_id = _echoable_request_id(request)
        outcome = _RpcResult()
        with _RpcScope("GetFeatures", request_id, context, outcome, self.metrics):
            if isinstance(request, UndecodableRequest):
                await _abort(context, request.refusal, None, outcome)
            response = await self._guarded(
                self._get_features(request), context, request_id, outcome
            )
            freshness = response.snapshot.freshness
            self.metrics.snapshot_served(state=_STATE_NAMES[freshness.state],
                                         flags=[_FLAG_NAMES[f] for f in freshness.flags])
            return response

    async def GetStatus(
        self,
        request: pb.GetStatusRequest | UndecodableRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.GetStatusResponse:
        """Projection status and the health ladder (contract 4.6), from one database snapshot."""
        request_id = _echoable_request_id(request)
        outcome = _RpcResult()
        with _RpcScope("GetStatus", request_id, context, outcome, self.metrics):
            if isinstance(request, UndecodableRequest):
                await _abort(context, request.refusal, None, outcome)
            return await self._guarded(
                self._get_status(request, request_id), context, request_id, outcome
            )

    async def GetSnapshot(
        self,
        request: pb.GetSnapshotRequest | UndecodableRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.GetSnapshotResponse:
        """A served snapshot from the snapshot log, as it was served (docs/audit.md)."""
        request_id = _echoable_request_id(request)
        outcome = _RpcResult()
        with _RpcScope("GetSnapshot", request_id, context, outcome, self.metrics):
            if isinstance(request, UndecodableRequest):
                await _abort(context, request.refusal, None, outcome)
            return await self._guarded(
                self._get_snapshot(request, request_id), context, request_id, outcome
            )

    async def _get_snapshot(
        self, request: pb.GetSnapshotRequest, request_id: str | None
    ) -> pb.GetSnapshotResponse:
        digest = request.snapshot_hash
        if len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise ContractError(ErrorCode.INVALID_REQUEST,
                                "snapshot_hash must be 64 lowercase hex digits")
        if self.recorder is None:
            raise ContractError(ErrorCode.NOT_FOUND,
                                "the snapshot log is off on this server (OFP_SNAPSHOT_LOG)")
        found = await self.recorder.fetch(digest)
        if found is None:
            raise ContractError(ErrorCode.NOT_FOUND,
                                f"snapshot {digest} is not in the snapshot log")
        entry, ref = found
        # Built as GetFeatures built it, from the same fields: the same message.
        served = response_proto({"status": "OK", "served_at_utc": "",
                                 "snapshot": entry.snapshot(ref)})
        response = pb.GetSnapshotResponse(
            status="OK", canonical_json=entry.canonical.decode("ascii"),
            recorded_at_utc=format_micros(entry.recorded_at_us))
        response.snapshot.CopyFrom(served.snapshot)
        response.request.update(entry.request)
        if request_id is not None:
            response.request_id = request_id
        return response

    async def _guarded(
        self,
        work: Awaitable[_T],
        context: grpc.aio.ServicerContext[Any, Any],
        request_id: str | None,
        outcome: _RpcResult,
    ) -> _T:
        """Run `work` under the server-side deadline; every failure becomes a gRPC status."""
        try:
            # asyncio.timeout, not wait_for: no extra task per request.
            async with asyncio.timeout(self.settings.deadline_ms / 1000):
                return await work
        except ContractError as exc:
            await _abort(context, exc, request_id, outcome)
        except TimeoutError:
            await _abort(
                context,
                ContractError(ErrorCode.UNAVAILABLE, "the server-side deadline expired"),
                request_id,
                outcome,
            )
        except Exception as exc:
            if is_transient(exc):
                await _abort(
                    context,
                    ContractError(ErrorCode.UNAVAILABLE, "the feature store is unreachable"),
                    request_id,
                    outcome,
                )
            outcome.code, outcome.grpc_code = "INTERNAL", grpc.StatusCode.INTERNAL.name
            # A bug, never bad input (the fuzz test asserts it): keep the traceback.
            _log.exception("rpc_failed", error=type(exc).__name__)
            await _end(context, grpc.StatusCode.INTERNAL, "internal error")

    async def close_watchers(self) -> None:
        for watcher in self._watchers.values():
            await watcher.close()
        self._watchers.clear()

    async def close_replicas(self) -> None:
        """Stop the replicas' statements and their measuring; close their pools."""
        for reader in self._replica_readers.values():
            await reader.close()
        if self.replicas is not None:
            await self.replicas.close()

    def _replica_checked(self, replica: Replica) -> None:
        self.metrics.replica_checked(replica=replica.name, lag_bytes=replica.lag_bytes,
                                     lag_s=replica.lag_s, in_rotation=replica.in_rotation)

    async def _read_replicated(
        self, req: ValidRequest, stream: str, probes: ReadProbes, revision: tuple[str, str],
        planned_epoch: int | None,
    ) -> SnapshotRow | None:
        """The snapshot read on a replica in rotation, else per OFP_REPLICA_FALLBACK.

        The row comes from one statement on one server, so values and basis agree
        whatever the replica's lag. It is taken from the primary instead (or
        refused UNAVAILABLE) when no replica is in rotation, when the replica
        fails with a connection-class error (it leaves the rotation; the next
        one is tried), or when the replica has not yet replayed what this
        request needs: its min_basis (already reached on the primary, where the
        wait watched) or the rollout epoch the request was planned with.
        """
        assert self.replicas is not None
        pins = pins_of(req.pins)
        reason = "none_in_rotation"
        for _ in range(len(self._replica_readers)):
            try:
                replica = self.replicas.choose()
            except NoReplicaInRotation:
                break
            if replica is None:
                break
            try:
                row = await self._replica_readers[replica.name].read(
                    stream=stream, pins=pins, probes=probes, revision=revision)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                # A statement cancelled by a conflict with recovery (class 40)
                # says nothing about the replica's health: try the next one.
                if str(getattr(exc, "sqlstate", None) or "")[:2] != "40":
                    self.replicas.failed(replica, exc)
                reason = "replica_failed"
                continue
            if row is not None and (not req.min_basis or reached(
                    {p: int(o) for p, o in row.offsets}, req.min_basis)) and (
                    planned_epoch is None or row.epoch is None or row.epoch >= planned_epoch):
                self.metrics.replica_read(replica.name)
                return row
            reason = "replica_behind"
            break
        self.metrics.replica_fallback(reason)
        if self.replicas.fallback != "primary":
            detail = {
                "none_in_rotation": "no read replica is in rotation",
                "replica_failed": "the read replicas are unreachable",
                "replica_behind": "the read replica has not replayed the requested basis yet",
            }[reason]
            raise ContractError(ErrorCode.UNAVAILABLE, detail + " (replica_fallback: unavailable)",
                                retryable=True)
        self.metrics.replica_read("primary")
        return await self.reader.read(stream=stream, pins=pins, probes=probes, revision=revision)

    async def _wait_for_basis(self, stream: str, want: tuple[tuple[int, int], ...]) -> None:
        """Read-your-basis: wait (shared, ofp.store.basis) until the checkpoints reach
        `want`, at most OFP_MAX_BASIS_WAIT_MS; the read that follows starts after, so
        its snapshot's basis reaches it too."""
        watcher = self._watchers.get(stream)
        if watcher is None:
            watcher = self._watchers[stream] = BasisWatcher(self.pool, stream)
        t0 = time.perf_counter()
        met = await watcher.wait(want, self.settings.max_basis_wait_ms / 1000)
        waited = time.perf_counter() - t0
        self.metrics.basis_waited(met=met, seconds=waited)
        if met:
            return
        have = watcher.current
        short = [f"partition {p} at {have.get(p, 'none')}, asked {o}"
                 for p, o in want if have.get(p, -1) < o]
        raise ContractError(
            ErrorCode.UNAVAILABLE,
            f"min_basis not reached within {self.settings.max_basis_wait_ms} ms: "
            + "; ".join(short[:8]),
            retryable=True,
            basis=tuple(sorted(have.items())),
        )

    def _unknown_fields(self, found: dict[str, list[int]]) -> None:
        """Fields of a newer proto: ignored, as protobuf clients expect; counted."""
        self.metrics.request_with_unknown_fields(sorted(found))
        _log.debug("request_unknown_fields", fields=found)

    async def _get_status(
        self, request: pb.GetStatusRequest, request_id: str | None
    ) -> pb.GetStatusResponse:
        stream = request.stream if request.HasField("stream") else None
        if stream is not None and not (0 < len(stream) <= 256 and unstorable_text(stream) is None):
            raise ContractError(ErrorCode.INVALID_REQUEST, "stream must be 1..256 characters")
        facts = await read_status(self.pool, stream=stream, bus_stream=self.settings.bus_stream)
        doc = status_report(facts, self.thresholds, request_id=request_id)
        if self.recorder is not None and self.recorder.shedding():
            _snapshot_log_shedding(doc, self.recorder)
        if self.replicas is not None:
            doc["read_replicas"] = self.replicas.status()
        response = pb.GetStatusResponse()
        json_format.ParseDict(doc, response)
        return response

    async def _get_features(self, request: pb.GetFeaturesRequest) -> pb.GetFeaturesResponse:
        req = validate_request_json(
            request_to_json(request, self._unknown_fields),
            max_keys=self.settings.max_keys,
            max_groups=self.settings.max_groups,
        )
        if req.graph_resolution_mode == "require_ieg":
            raise ContractError(
                ErrorCode.UNAVAILABLE,
                "graph_resolution_mode require_ieg: no identity graph source is configured",
                retryable=False,
            )
        typed: list[TypedCell] = []
        recorder = self.recorder
        hashed: list[bytes] | None = None if recorder is None else []
        snapshot = await self._snapshot(req, typed, hashed)
        if recorder is not None and hashed:
            await recorder.record(req, snapshot, hashed[0])
        doc: dict[str, Any] = {
            "status": "OK",
            "snapshot": snapshot,
            "served_at_utc": format_micros(now_us()),
        }
        if req.request_id is not None:
            doc["request_id"] = req.request_id
        return response_proto(doc, typed)

    async def _choose(self, revision: str | None) -> ActivePolicy:
        """The revision a request is planned with: the named one, or the active one."""
        cache = self.policies
        active = cache.active or await cache.load(self.pool)
        if active is None:
            raise ContractError(ErrorCode.UNAVAILABLE, "no active feature policy yet")
        if revision is None or revision == active.policy.revision:
            return active
        chosen = cache.servable(revision)
        if chosen is None and await cache.reload_if_moved(self.pool):
            chosen = cache.servable(revision)  # perhaps caught up since the last load
        if chosen is None:
            served = ", ".join(cache.served()) or "none"
            raise ContractError(
                ErrorCode.NOT_FOUND,
                f"policy_revision {revision!r} is not served (served: {served}); a staged"
                " revision is served once its backfill has caught up",
            )
        return chosen

    async def _snapshot(self, req: ValidRequest, typed: list[TypedCell],
                        hashed: list[bytes] | None = None) -> dict[str, Any]:
        for _ in range(3):
            # The plan, the read and the assembly use this one revision: an
            # activation meanwhile does not relabel the request's values.
            chosen = await self._choose(req.policy_revision)
            planned_epoch = self.policies.epoch
            policy = chosen.policy
            try:
                plan = plan_read(req, policy, chosen.group_ids)
            except ContractError:
                # A group unknown to the cached revision: perhaps just activated.
                if await self.policies.reload_if_moved(self.pool):
                    continue
                raise
            stream = self.settings.bus_stream(policy.source_topic)
            if req.min_basis:
                await self._wait_for_basis(stream, req.min_basis)
            revision = (policy.policy_id, policy.revision)
            row: SnapshotRow | None = (
                await self.reader.read(stream=stream, pins=pins_of(req.pins),
                                       probes=plan.probes, revision=revision)
                if self.replicas is None
                else await self._read_replicated(req, stream, plan.probes, revision,
                                                 planned_epoch))
            if row is None:
                raise ContractError(ErrorCode.UNAVAILABLE, "no active feature policy yet")
            if row.epoch != planned_epoch:
                # The rollout moved (stage, activate, rollback, caught up): the
                # revision read must still be maintained, else plan again.
                if row.epoch is not None:
                    await self.policies.load(self.pool, at_least=row.epoch)
                # The answer is given with the revision active in the snapshot it
                # read (or the one it named): a request whose read saw a switch
                # is planned again; one that read before it finishes as planned.
                active = self.policies.active
                if self.policies.servable(policy.revision) is None or (
                        req.policy_revision is None and active is not None
                        and active.policy.revision != policy.revision):
                    continue
            if row.content_digest != chosen.digest:  # a revision's content never changes
                break
            return assemble_snapshot(
                req,
                plan,
                row,
                stream=stream,
                max_basis_lag_us=self.settings.max_basis_lag_s * 1_000_000,
                created_at_us=now_us(),
                typed=typed,
                hashed=hashed,
            )
        raise ContractError(
            ErrorCode.MISSING_PROVENANCE, "the active policy changed during the read; retry"
        )


class UndecodableRequest:
    """Bytes that do not parse as the RPC's request message: refused as INVALID_REQUEST."""

    __slots__ = ("refusal",)

    def __init__(self, message_name: str) -> None:
        self.refusal = ContractError(
            ErrorCode.INVALID_REQUEST, f"request is not a {message_name}"
        )


def _snapshot_log_shedding(doc: dict[str, Any], recorder: SnapshotRecorder) -> None:
    """Say in the health ladder that the snapshot log dropped snapshots lately: the
    answers are right, but not every one is on record (AMBER)."""
    health = doc["health"]
    health["reasons"].append({
        "code": "SNAPSHOT_LOG_SHEDDING", "state": "AMBER",
        "detail": f"the snapshot log dropped {recorder.dropped} snapshots (queue full);"
                  " see ofp_snapshot_log_dropped_total",
    })
    if health["state"] == "GREEN":
        health["state"] = "AMBER"


_M = TypeVar("_M", pb.GetFeaturesRequest, pb.GetStatusRequest, pb.GetSnapshotRequest)


def request_decoder(message: type[_M]) -> Callable[[bytes], _M | UndecodableRequest]:
    """The request deserializer of one RPC: the message, or an UndecodableRequest that
    the servicer refuses with a contract error (grpc's own failure would be a bare
    INTERNAL without our details)."""
    name = message.DESCRIPTOR.name

    def decode(data: bytes) -> _M | UndecodableRequest:
        msg = message()
        try:
            msg.ParseFromString(data)
        except DecodeError:
            return UndecodableRequest(name)
        return msg

    return decode


decode_request = request_decoder(pb.GetFeaturesRequest)
decode_status_request = request_decoder(pb.GetStatusRequest)
decode_snapshot_request = request_decoder(pb.GetSnapshotRequest)


class _RpcResult:
    """What an RPC ended with: the contract code (or OK / INTERNAL) and the gRPC code."""

    def __init__(self) -> None:
        self.code = "OK"
        self.grpc_code = grpc.StatusCode.OK.name


class _RpcScope:
    """Bind the request id for every log line of the RPC; log `rpc_finished`; count it.

    A class rather than a generator context manager: it wraps every RPC.
    """

    __slots__ = ("_method", "_metrics", "_outcome", "_rid", "_t0", "_tokens")

    def __init__(
        self,
        method: str,
        request_id: str | None,
        context: grpc.aio.ServicerContext[Any, Any],
        outcome: _RpcResult,
        metrics: ServerMetrics,
    ) -> None:
        self._method = method
        self._rid = request_id or _metadata_request_id(context)
        self._outcome = outcome
        self._metrics = metrics

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()
        self._tokens = structlog.contextvars.bind_contextvars(
            request_id=self._rid, method=self._method
        )

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        outcome = self._outcome
        try:
            if exc_type is not None:
                if issubclass(exc_type, asyncio.CancelledError):
                    outcome.code = outcome.grpc_code = "CANCELLED"
                elif outcome.code == "OK":  # not one of our refusals: say so, invent nothing
                    outcome.code, outcome.grpc_code = "INTERNAL", grpc.StatusCode.INTERNAL.name
            duration_s = time.perf_counter() - self._t0
            # A line per answered call is on the hot path: OK calls log at debug,
            # with one in LOG_SAMPLE_EVERY at info (the metrics count every call);
            # every refusal and failure logs at info.
            global _ok_calls
            log = _log.info
            sampled = None
            if outcome.code == "OK":
                _ok_calls += 1
                if _ok_calls % LOG_SAMPLE_EVERY:
                    log = _log.debug
                else:
                    sampled = LOG_SAMPLE_EVERY
            log(
                "rpc_finished",
                code=outcome.code,
                grpc_code=outcome.grpc_code,
                duration_ms=round(duration_s * 1000, 3),
                sampled=sampled,
            )
            self._metrics.rpc_finished(
                method=self._method, code=outcome.code, grpc_code=outcome.grpc_code,
                duration_s=duration_s,
            )
        finally:
            structlog.contextvars.reset_contextvars(**self._tokens)


def _echoable_request_id(
    request: pb.GetFeaturesRequest | pb.GetStatusRequest | pb.GetSnapshotRequest
    | UndecodableRequest,
) -> str | None:
    """The request id to echo: only one the contract allows (1..128 storable characters)."""
    if isinstance(request, UndecodableRequest) or not request.HasField("request_id"):
        return None
    rid = request.request_id
    return rid if 0 < len(rid) <= 128 and unstorable_text(rid) is None else None


def error_status(exc: ContractError, request_id: str | None) -> status_pb2.Status:
    err = pb.ErrorResponse(
        status="ERROR",
        code=exc.code.value,
        retryable=exc.retryable,
        detail=exc.detail,
        served_at_utc=format_micros(now_us()),
    )
    if request_id is not None:
        err.request_id = request_id
    for partition, offset in exc.basis or ():
        err.current_basis.add(partition=partition, offset=str(offset))
    detail_any = any_pb2.Any()
    detail_any.Pack(err)
    info_any = any_pb2.Any()
    info_any.Pack(
        error_details_pb2.ErrorInfo(
            reason=exc.code.value,
            domain=ERROR_DOMAIN,
            metadata={"retryable": str(exc.retryable).lower()},
        )
    )
    return status_pb2.Status(
        code=exc.grpc_code.value[0], message=exc.detail, details=[detail_any, info_any]
    )


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: ContractError,
    request_id: str | None,
    outcome: _RpcResult,
) -> NoReturn:
    """End the RPC with the contract error as rich details (google.rpc.Status).

    A refusal marked not retryable also carries `grpc-retry-pushback-ms: -1`: a
    client retry policy keyed on the status code alone (UNAVAILABLE) would retry
    it, and gRPC's retry design makes a negative pushback mean "do not retry"."""
    outcome.code, outcome.grpc_code = exc.code.value, exc.grpc_code.name
    status = rpc_status.to_status(error_status(exc, request_id))
    trailers = status.trailing_metadata
    if not exc.retryable:
        trailers = (*trailers, ("grpc-retry-pushback-ms", "-1"))
    await _end(context, status.code, status.details, trailers)


async def _end(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    details: str,
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
) -> NoReturn:
    await context.abort(code, details, trailing_metadata=trailing_metadata)
    # grpc.aio's abort always raises; its type stubs do not say so.
    raise AssertionError("ServicerContext.abort returned")


def _metadata_request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key in ("x-request-id", "request-id") and isinstance(value, str):
            return value[:128]
    # 128 random bits as hex, like uuid4().hex without building a UUID per request.
    return os.urandom(16).hex()
