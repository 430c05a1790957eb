// ofp-node-client: calls ofp.v1.FeatureService over @grpc/grpc-js and prints JSON.
//
//   node dist/src/main.js HOST:PORT get-features '<GetFeaturesRequest JSON>' [--deadline-ms N]
//   node dist/src/main.js HOST:PORT get-status [--stream S] [--request-id ID] [--deadline-ms N]
//
// Exit status: 0 answered, 2 refused (the decoded refusal is printed), 1 anything else.

import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import * as grpc from "@grpc/grpc-js";
import { fromJson, toJson, type DescEnum, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import {
  ErrorResponseSchema,
  FeatureService,
  GetFeaturesRequestSchema,
  GetFeaturesResponseSchema,
  GetStatusResponseSchema,
  HealthStateSchema,
  OffsetKindSchema,
  ValueStatusSchema,
  type GetFeaturesResponse,
  type GetStatusResponse,
  type TypedValue,
} from "../gen/ofp/v1/feature_service_pb.js";
import { createClient, decodeRefusal, isRetryable, isServiceError, type Refusal } from "./client.js";
import { snapshotHash } from "./snapshot_hash.js";

// Print empty lists too, as the Python harness does (ints stay proto3 JSON strings).
const JSON_OPTIONS = { alwaysEmitImplicit: true } as const;
const ATTEMPTS = 3;

class RefusedError extends Error {
  constructor(readonly refusal: Refusal) {
    super(refusal.message);
  }
}

async function main(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      "deadline-ms": { type: "string", default: "5000" },
      stream: { type: "string" },
      "request-id": { type: "string" },
    },
  });
  const [target, command, body] = positionals;
  if (!target || (command !== "get-features" && command !== "get-status")) {
    process.stderr.write("usage: main.js HOST:PORT get-features REQUEST_JSON | get-status\n");
    return 1;
  }
  const deadlineMs = Number(values["deadline-ms"]);
  const channel = new grpc.Client(target, grpc.credentials.createInsecure());
  const ofp = createClient(FeatureService, channel);
  try {
    let out: JsonObject;
    if (command === "get-features") {
      // Proto JSON in, so the request reads exactly like the contract's JSON form.
      const request = fromJson(GetFeaturesRequestSchema, JSON.parse(body ?? "{}") as JsonValue);
      const response = await withRetry(() =>
        ofp.getFeatures(request, { deadline: Date.now() + deadlineMs }),
      );
      out = describeFeatures(response);
    } else {
      const response = await withRetry(() =>
        ofp.getStatus(
          { stream: values.stream, requestId: values["request-id"] },
          { deadline: Date.now() + deadlineMs },
        ),
      );
      out = describeStatus(response);
    }
    console.log(JSON.stringify(out));
    return 0;
  } catch (err) {
    if (!(err instanceof RefusedError)) throw err;
    const { grpcCode, message, errorResponse, errorInfo } = err.refusal;
    console.log(
      JSON.stringify({
        refusal: {
          grpc_code: grpc.status[grpcCode],
          message,
          error_response: errorResponse ? toJson(ErrorResponseSchema, errorResponse) : null,
          error_info: errorInfo ? toJson(ErrorInfoSchema, errorInfo) : null,
        },
      }),
    );
    return 2;
  } finally {
    channel.close();
  }
}

/** Calls `call` again, with backoff, only while the server says the refusal is retryable. */
async function withRetry<T>(call: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      if (!isServiceError(err)) throw err;
      const refusal = decodeRefusal(err);
      if (!isRetryable(refusal) || attempt === ATTEMPTS) throw new RefusedError(refusal);
      await sleep(100 * 2 ** attempt);
    }
  }
}

function describeFeatures(response: GetFeaturesResponse): JsonObject {
  const doc = toJson(GetFeaturesResponseSchema, response, JSON_OPTIONS) as JsonObject;
  const snapshot = doc.snapshot as JsonObject;
  const recomputed = snapshotHash(snapshot);
  // The typed values, read through the generated types (the oneof is a tagged union).
  const cells = response.typedFeatures.map((cell) => ({
    key: `${cell.keyType}:${cell.keyId}`,
    group: `${cell.groupName}:${cell.groupVersion}`,
    present: cell.present ?? false,
    last_event_time: cell.lastEventTime ? rfc3339Micros(cell.lastEventTime) : null,
    values: Object.fromEntries(
      cell.features.map((v) => [
        v.name,
        { status: enumName(ValueStatusSchema, v.status), ...typedValue(v) },
      ]),
    ),
  }));
  return {
    response: doc,
    snapshot_hash: {
      served: snapshot.snapshot_hash ?? null,
      recomputed,
      verified: recomputed === snapshot.snapshot_hash,
    },
    typed_cells: cells,
  };
}

/** The value with its kind, in the contract's JSON form (counts as exact numbers). */
function typedValue(v: TypedValue): { kind: string; value: JsonValue } {
  const { case: kind, value } = v.value;
  switch (kind) {
    case "int64Value":
      return { kind, value: Number.isSafeInteger(Number(value)) ? Number(value) : value.toString() };
    case "decimalValue":
    case "stringValue":
      return { kind, value };
    case "timestampValue":
      return { kind, value: rfc3339Micros(value) };
    case "listValue":
      return { kind, value: value.values };
    case "nullValue":
      return { kind, value: null };
    case undefined:
      return { kind: "unset", value: null };
  }
}

function describeStatus(response: GetStatusResponse): JsonObject {
  return {
    response: toJson(GetStatusResponseSchema, response, JSON_OPTIONS) as JsonObject,
    health_state: enumName(HealthStateSchema, response.health?.state),
    partitions: response.partitions.map((p) => ({
      partition: p.partition ?? 0,
      offset_kind: enumName(OffsetKindSchema, p.offsetKind),
      next_offset: p.nextOffset ?? null,
    })),
  };
}

/** The proto name of an enum value, which is the contract's string (the TypeScript enum
 * drops a shared prefix: ValueStatus.PRESENT); a newer server's value as its number. */
function enumName(schema: DescEnum, value = 0): string {
  return schema.value[value]?.name ?? String(value);
}

/** The contract's micros form, YYYY-MM-DDTHH:MM:SS.ffffffZ (Date keeps only millis). */
function rfc3339Micros(ts: Timestamp): string {
  const seconds = new Date(Number(ts.seconds) * 1000).toISOString().slice(0, 19);
  return `${seconds}.${String(Math.floor(ts.nanos / 1000)).padStart(6, "0")}Z`;
}

process.exitCode = await main(process.argv.slice(2));
