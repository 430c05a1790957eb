// A typed @grpc/grpc-js client for any service protoc-gen-es generated.
//
// protoc-gen-es emits messages and a service descriptor (FeatureService), not a
// grpc-js stub class; grpc-js only needs a path and two serializers per method, and
// the descriptor carries both, so the whole "stub" is this file.

import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { ErrorInfoSchema, type ErrorInfo } from "../gen/google/rpc/error_details_pb.js";
import { ErrorResponseSchema, type ErrorResponse } from "../gen/ofp/v1/feature_service_pb.js";

type UnaryMethod<I extends DescMessage, O extends DescMessage> = DescMethod & {
  methodKind: "unary";
  input: I;
  output: O;
};

/** One async function per unary method of the service, typed by its messages. */
export type UnaryClient<S extends DescService & { method: object }> = {
  [K in keyof S["method"]]: S["method"][K] extends UnaryMethod<infer I, infer O>
    ? (request: MessageInitShape<I>, options?: grpc.CallOptions) => Promise<MessageShape<O>>
    : never;
};

export function createClient<S extends DescService & { method: object }>(
  service: S,
  channel: grpc.Client,
): UnaryClient<S> {
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    if (method.methodKind !== "unary") continue; // this API has no streaming RPCs
    const path = `/${service.typeName}/${method.name}`;
    client[method.localName] = (
      request: MessageInitShape<DescMessage>,
      options: grpc.CallOptions = {},
    ) =>
      new Promise((resolve, reject) => {
        channel.makeUnaryRequest(
          path,
          (message: MessageShape<DescMessage>) => Buffer.from(toBinary(method.input, message)),
          (bytes: Buffer) => fromBinary(method.output, bytes),
          create(method.input, request),
          new grpc.Metadata(),
          options,
          (err, response) => (err ? reject(err) : resolve(response)),
        );
      });
  }
  return client as UnaryClient<S>;
}

/** A refused call: the gRPC status plus the contract's rich error details. */
export interface Refusal {
  grpcCode: grpc.status;
  message: string;
  errorResponse?: ErrorResponse;
  errorInfo?: ErrorInfo;
}

export function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as grpc.ServiceError).code === "number";
}

/** Decodes the `grpc-status-details-bin` trailer (a google.rpc.Status) of a failed call. */
export function decodeRefusal(err: grpc.ServiceError): Refusal {
  const refusal: Refusal = { grpcCode: err.code, message: err.details };
  const [raw] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (!Buffer.isBuffer(raw)) return refusal; // e.g. a deadline set by this client
  for (const detail of fromBinary(StatusSchema, raw).details) {
    // anyUnpack returns undefined for a detail of another type: newer servers may add some.
    refusal.errorResponse ??= anyUnpack(detail, ErrorResponseSchema);
    refusal.errorInfo ??= anyUnpack(detail, ErrorInfoSchema);
  }
  return refusal;
}

/** Retry only what the server marks retryable (docs/contract.md 4.5). */
export function isRetryable(refusal: Refusal): boolean {
  return refusal.errorResponse?.retryable === true;
}
