package dev.ofp.example;

import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.MessageOrBuilder;
import com.google.protobuf.util.JsonFormat;
import com.google.protobuf.util.Timestamps;
import com.google.rpc.ErrorInfo;
import dev.ofp.api.v1.ErrorResponse;
import dev.ofp.api.v1.FeatureGroupRef;
import dev.ofp.api.v1.FeatureServiceGrpc;
import dev.ofp.api.v1.GetFeaturesRequest;
import dev.ofp.api.v1.GetFeaturesResponse;
import dev.ofp.api.v1.GetStatusRequest;
import dev.ofp.api.v1.GetStatusResponse;
import dev.ofp.api.v1.TypedCell;
import dev.ofp.api.v1.TypedValue;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;

/**
 * Calls ofp.v1.FeatureService over a plaintext channel and prints one JSON document:
 *
 * <pre>
 *   java -jar build/ofp-example.jar HOST:PORT REQUEST.json
 * </pre>
 *
 * <ul>
 *   <li>{@code features}: the GetFeatures answer for REQUEST.json (proto JSON);
 *   <li>{@code typed}: its typed_features read as Java values (long, BigDecimal, Instant);
 *   <li>{@code refusal}: the rich error of the same request asking for a group that does not
 *       exist (INVALID_ARGUMENT / INVALID_REQUEST, not retryable);
 *   <li>{@code status}: the GetStatus answer.
 * </ul>
 */
public final class Example {
  // The server's own deadline is 2 s (OFP_DEADLINE_MS); leave it room to answer first.
  private static final long DEADLINE_MS = 5_000;
  private static final int MAX_ATTEMPTS = 3;

  // Proto JSON as the contract spells it: snake_case names, empty lists shown.
  private static final JsonFormat.Printer PRINTER =
      JsonFormat.printer().preservingProtoFieldNames().includingDefaultValueFields();

  private final FeatureServiceGrpc.FeatureServiceBlockingStub stub;

  Example(ManagedChannel channel) {
    this.stub = FeatureServiceGrpc.newBlockingStub(channel);
  }

  /** A refused call, decoded from the google.rpc.Status in grpc-status-details-bin. */
  static final class Refusal extends Exception {
    final StatusRuntimeException cause;
    final ErrorResponse error; // ofp.v1.ErrorResponse: the contract code and retryable
    final ErrorInfo info; // google.rpc.ErrorInfo: reason = code, domain ofp.feature_plane
    final int attempts;

    Refusal(StatusRuntimeException cause, ErrorResponse error, ErrorInfo info, int attempts) {
      super(cause.getStatus().toString(), cause);
      this.cause = cause;
      this.error = error;
      this.info = info;
      this.attempts = attempts;
    }

    static Refusal of(StatusRuntimeException e, int attempts)
        throws InvalidProtocolBufferException {
      ErrorResponse error = ErrorResponse.getDefaultInstance();
      ErrorInfo info = ErrorInfo.getDefaultInstance();
      com.google.rpc.Status status = StatusProto.fromThrowable(e);
      if (status != null) {
        for (Any detail : status.getDetailsList()) {
          if (detail.is(ErrorResponse.class)) {
            error = detail.unpack(ErrorResponse.class);
          } else if (detail.is(ErrorInfo.class)) {
            info = detail.unpack(ErrorInfo.class);
          }
        }
      }
      return new Refusal(e, error, info, attempts);
    }
  }

  /**
   * GetFeatures with a fresh deadline per attempt. Only what the server marks retryable
   * (UNAVAILABLE with retryable=true) is tried again; everything else is final.
   */
  GetFeaturesResponse getFeatures(GetFeaturesRequest request)
      throws Refusal, InterruptedException, InvalidProtocolBufferException {
    for (int attempt = 1; ; attempt++) {
      try {
        return stub.withDeadlineAfter(DEADLINE_MS, TimeUnit.MILLISECONDS).getFeatures(request);
      } catch (StatusRuntimeException e) {
        Refusal refusal = Refusal.of(e, attempt);
        if (!refusal.error.getRetryable() || attempt == MAX_ATTEMPTS) {
          throw refusal;
        }
        Thread.sleep(100L << attempt); // 200 ms, 400 ms
      }
    }
  }

  GetStatusResponse getStatus() {
    return stub.withDeadlineAfter(DEADLINE_MS, TimeUnit.MILLISECONDS)
        .getStatus(GetStatusRequest.newBuilder().setRequestId("java-example").build());
  }

  /** typed_features as Java values: the point of the typed field for stub users. */
  static JsonArray typed(GetFeaturesResponse response) {
    JsonArray cells = new JsonArray();
    for (TypedCell cell : response.getTypedFeaturesList()) {
      JsonObject out = new JsonObject();
      out.addProperty("key", cell.getKeyType() + ":" + cell.getKeyId());
      out.addProperty("group", cell.getGroupName() + ":" + cell.getGroupVersion());
      out.addProperty("present", cell.getPresent());
      if (cell.hasLastEventTime()) {
        out.addProperty("last_event_time", Timestamps.toString(cell.getLastEventTime()));
      }
      JsonObject values = new JsonObject();
      JsonObject statuses = new JsonObject();
      for (TypedValue v : cell.getFeaturesList()) {
        values.add(v.getName(), value(v));
        statuses.addProperty(v.getName(), v.getStatus().name());
      }
      out.add("values", values);
      out.add("statuses", statuses);
      cells.add(out);
    }
    return cells;
  }

  private static JsonElement value(TypedValue v) {
    switch (v.getValueCase()) {
      case INT64_VALUE:
        return new JsonPrimitive(v.getInt64Value()); // a long: counts are exact
      case DECIMAL_VALUE:
        // Canonical decimal text; BigDecimal keeps it exact (never a double).
        return new JsonPrimitive(new BigDecimal(v.getDecimalValue()).toPlainString());
      case STRING_VALUE:
        return new JsonPrimitive(v.getStringValue());
      case TIMESTAMP_VALUE:
        return new JsonPrimitive(Timestamps.toString(v.getTimestampValue()));
      case LIST_VALUE:
        JsonArray list = new JsonArray();
        v.getListValue().getValuesList().forEach(list::add);
        return list;
      default: // NULL_VALUE: no value (e.g. a mean over an empty window)
        return JsonNull.INSTANCE;
    }
  }

  static JsonElement json(MessageOrBuilder message) throws InvalidProtocolBufferException {
    return JsonParser.parseString(PRINTER.print(message));
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: Example HOST:PORT REQUEST.json");
      System.exit(2);
    }
    GetFeaturesRequest.Builder builder = GetFeaturesRequest.newBuilder();
    JsonFormat.parser().merge(Files.readString(Path.of(args[1]), StandardCharsets.UTF_8), builder);
    GetFeaturesRequest request = builder.build();

    ManagedChannel channel = ManagedChannelBuilder.forTarget(args[0]).usePlaintext().build();
    JsonObject out = new JsonObject();
    try {
      Example client = new Example(channel);

      GetFeaturesResponse answer = client.getFeatures(request);
      out.add("features", json(answer));
      out.add("typed", typed(answer));

      // The same request with a group the active revision does not have.
      GetFeaturesRequest unknownGroup = request.toBuilder()
          .clearFeatureGroups()
          .addFeatureGroups(FeatureGroupRef.newBuilder().setName("no_such_group").setVersion("v1"))
          .build();
      try {
        client.getFeatures(unknownGroup);
        throw new IllegalStateException("a request for an unknown group was answered");
      } catch (Refusal r) {
        JsonObject refusal = new JsonObject();
        refusal.addProperty("grpc_code", r.cause.getStatus().getCode().name());
        refusal.addProperty("message", r.cause.getStatus().getDescription());
        refusal.addProperty("code", r.error.getCode().name());
        refusal.addProperty("retryable", r.error.getRetryable());
        refusal.addProperty("attempts", r.attempts);
        refusal.add("error", json(r.error));
        refusal.add("error_info", json(r.info));
        out.add("refusal", refusal);
      }

      out.add("status", json(client.getStatus()));
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.out.println(new GsonBuilder().disableHtmlEscaping().serializeNulls().create().toJson(out));
  }
}
