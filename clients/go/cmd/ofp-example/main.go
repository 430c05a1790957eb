// Command ofp-example calls ofp.v1.FeatureService with the generated Go stubs and prints
// what it got as one JSON document on stdout:
//
//	ofp-example -addr dns:///ofp.internal:50051 features request.json
//	ofp-example -addr 127.0.0.1:50051 status
//
// A refusal prints {"error": ...} (the contract error decoded from the status details)
// and exits 1; a transport failure exits 2.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	ofpv1 "github.com/ofp-dev/ofp/clients/go/ofpv1"
)

// round_robin spreads calls over every address the resolver returns (all replicas behind
// a dns:/// name); the default pick_first would pin one connection to one replica.
const serviceConfig = `{"loadBalancingConfig": [{"round_robin": {}}]}`

// Backoff before retry n (n = 1, 2): only refusals the server marks retryable are retried.
var backoff = []time.Duration{100 * time.Millisecond, 400 * time.Millisecond}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051",
		"gRPC target: host:port, or dns:///host:port to balance over every address of host")
	timeout := flag.Duration("timeout", 2*time.Second, "deadline of each call")
	stream := flag.String("stream", "", "status: the stream to report (default: the active policy's)")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(),
			"usage: ofp-example [flags] features REQUEST.json|-\n       ofp-example [flags] status")
		flag.PrintDefaults()
	}
	flag.Parse()

	// Plaintext, as the test server and a sidecar-TLS deployment use; for TLS pass
	// grpc.WithTransportCredentials(credentials.NewClientTLSFromFile(ca, "")) instead.
	conn, err := grpc.Dial(*addr, grpc.WithInsecure(), grpc.WithDefaultServiceConfig(serviceConfig))
	if err != nil {
		fail(2, err)
	}
	defer conn.Close()
	client := ofpv1.NewFeatureServiceClient(conn)

	var out interface{}
	switch flag.Arg(0) {
	case "features":
		req := &ofpv1.GetFeaturesRequest{}
		if err := readJSON(flag.Arg(1), req); err != nil {
			fail(2, err)
		}
		var resp *ofpv1.GetFeaturesResponse
		err = withRetry(func() (err error) {
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			resp, err = client.GetFeatures(ctx, req)
			return err
		})
		if err == nil {
			out, err = featuresResult(resp)
		}
	case "status":
		req := &ofpv1.GetStatusRequest{}
		if *stream != "" {
			req.Stream = stream
		}
		var resp *ofpv1.GetStatusResponse
		err = withRetry(func() (err error) {
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			resp, err = client.GetStatus(ctx, req)
			return err
		})
		if err == nil {
			out = statusResult(resp)
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		refusal, ok := decodeRefusal(err)
		if !ok {
			fail(2, err)
		}
		emit(map[string]interface{}{"error": refusal})
		os.Exit(1)
	}
	emit(out)
}

// withRetry calls once, and again after a backoff while the refusal says retryable
// (UNAVAILABLE with retryable true: no basis yet, database failover). Everything else,
// a bad request above all, would fail the same way again.
func withRetry(call func() error) error {
	err := call()
	for _, wait := range backoff {
		refusal, ok := decodeRefusal(err)
		// Without the contract detail only the gRPC code can be judged: UNAVAILABLE
		// (connection refused, server restarting) is the one code worth a retry.
		retryable := refusal.Retryable || (!ok && status.Code(err) == codes.Unavailable)
		if err == nil || !retryable {
			return err
		}
		time.Sleep(wait)
		err = call()
	}
	return err
}

// Refusal is the contract error of a refused call (docs/contract.md 4.5).
type Refusal struct {
	GRPCCode  string            `json:"grpc_code"`
	Message   string            `json:"message"`
	Code      string            `json:"code"` // ofp.v1.ErrorCode name, e.g. INVALID_REQUEST
	Retryable bool              `json:"retryable"`
	Detail    string            `json:"detail"`
	RequestID string            `json:"request_id,omitempty"`
	Reason    string            `json:"reason"` // google.rpc.ErrorInfo
	Domain    string            `json:"domain"`
	Metadata  map[string]string `json:"metadata"`
}

// decodeRefusal reads the google.rpc.Status details the server sends in the
// grpc-status-details-bin trailer; ok is false for an error without the contract detail
// (a transport failure, a deadline that expired on the client's side).
func decodeRefusal(err error) (r Refusal, ok bool) {
	st, isStatus := status.FromError(err)
	if err == nil || !isStatus {
		return r, false
	}
	r.GRPCCode, r.Message = st.Code().String(), st.Message()
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *ofpv1.ErrorResponse:
			r.Code, r.Retryable, r.Detail = d.GetCode().String(), d.GetRetryable(), d.GetDetail()
			r.RequestID, ok = d.GetRequestId(), true
		case *errdetails.ErrorInfo:
			r.Reason, r.Domain, r.Metadata = d.Reason, d.Domain, d.Metadata
		}
	}
	return r, ok
}

// Value is one typed feature value; exactly one of the value fields is set, with a Go type
// that needs no parsing of JSON numbers (counts stay int64, decimals stay exact text).
type Value struct {
	Status    string   `json:"status"`
	Int64     *int64   `json:"int64,omitempty"`
	Decimal   *string  `json:"decimal,omitempty"`
	Scale     *int32   `json:"scale,omitempty"`
	String    *string  `json:"string,omitempty"`
	Timestamp *string  `json:"timestamp,omitempty"`
	List      []string `json:"list,omitempty"`
	Null      bool     `json:"null,omitempty"`
}

// Cell holds the typed values of one (key, group).
type Cell struct {
	Key           string           `json:"key"` // "<key_type>:<key_id>", as in snapshot.features
	Group         string           `json:"group"`
	Present       bool             `json:"present"`
	LastEventTime *string          `json:"last_event_time"`
	Features      map[string]Value `json:"features"`
}

// micros is the contract's timestamp form (YYYY-MM-DDTHH:MM:SS.ffffffZ).
const micros = "2006-01-02T15:04:05.000000Z"

func featuresResult(resp *ofpv1.GetFeaturesResponse) (map[string]interface{}, error) {
	cells := make([]Cell, 0, len(resp.GetTypedFeatures()))
	for _, c := range resp.GetTypedFeatures() {
		cell := Cell{
			Key:      c.GetKeyType() + ":" + c.GetKeyId(),
			Group:    c.GetGroupName() + ":" + c.GetGroupVersion(),
			Present:  c.GetPresent(),
			Features: map[string]Value{},
		}
		if c.LastEventTime != nil {
			t := c.LastEventTime.AsTime().UTC().Format(micros)
			cell.LastEventTime = &t
		}
		for _, f := range c.GetFeatures() {
			v := Value{Status: f.GetStatus().String(), Scale: f.Scale}
			switch x := f.Value.(type) {
			case *ofpv1.TypedValue_Int64Value:
				v.Int64 = &x.Int64Value
			case *ofpv1.TypedValue_DecimalValue:
				v.Decimal = &x.DecimalValue
			case *ofpv1.TypedValue_StringValue:
				v.String = &x.StringValue
			case *ofpv1.TypedValue_TimestampValue:
				t := x.TimestampValue.AsTime().UTC().Format(micros)
				v.Timestamp = &t
			case *ofpv1.TypedValue_ListValue:
				v.List = append([]string{}, x.ListValue.GetValues()...)
			case *ofpv1.TypedValue_NullValue:
				v.Null = true
			}
			cell.Features[f.GetName()] = v
		}
		cells = append(cells, cell)
	}
	recomputed, err := SnapshotHash(resp.GetSnapshot())
	if err != nil {
		return nil, err
	}
	return map[string]interface{}{
		"response": protoJSON(resp),
		"typed":    cells,
		"snapshot_hash": map[string]interface{}{
			"server":     resp.GetSnapshot().GetSnapshotHash(),
			"recomputed": recomputed,
			"verified":   recomputed == resp.GetSnapshot().GetSnapshotHash(),
		},
	}, nil
}

func statusResult(resp *ofpv1.GetStatusResponse) map[string]interface{} {
	type partition struct {
		Partition  uint32 `json:"partition"`
		OffsetKind string `json:"offset_kind"`
		NextOffset string `json:"next_offset"`
		LagRecords *int64 `json:"lag_records"`
	}
	parts := make([]partition, 0, len(resp.GetPartitions()))
	for _, p := range resp.GetPartitions() {
		parts = append(parts, partition{p.GetPartition(), p.GetOffsetKind().String(),
			p.GetNextOffset(), p.LagRecords})
	}
	reasons := []string{}
	for _, r := range resp.GetHealth().GetReasons() {
		reasons = append(reasons, r.GetCode())
	}
	return map[string]interface{}{
		"response":     protoJSON(resp),
		"health_state": resp.GetHealth().GetState().String(),
		"reasons":      reasons,
		"partitions":   parts,
	}
}

// protoJSON is the message as proto3 JSON (the field names are the contract's).
func protoJSON(m proto.Message) json.RawMessage {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		fail(2, err)
	}
	return b
}

func readJSON(path string, m proto.Message) error {
	var data []byte
	var err error
	if path == "-" || path == "" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return err
	}
	return protojson.Unmarshal(data, m)
}

func emit(v interface{}) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fail(2, err)
	}
}

func fail(code int, err error) {
	fmt.Fprintln(os.Stderr, "ofp-example:", err)
	os.Exit(code)
}
