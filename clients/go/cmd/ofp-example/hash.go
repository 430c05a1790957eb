package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"unicode/utf16"

	"google.golang.org/protobuf/encoding/protojson"

	ofpv1 "github.com/ofp-dev/ofp/clients/go/ofpv1"
)

// hashedFields are the snapshot fields snapshot_hash covers (docs/contract.md 4.4).
var hashedFields = []string{
	"pins", "as_of_time_utc", "feature_groups", "feature_def_policy_rev", "eb_offset_basis",
	"graph_version", "run_config_digest", "features", "freshness",
}

// SnapshotHash recomputes snapshot_hash from the snapshot as received, so a caller can
// check that the values it acts on are the ones the server hashed and persisted. It takes
// the proto3 JSON form and undoes what proto3 JSON changes (as
// ofp.contracts.hashing.normalize_json_snapshot does): seed rendered as a string, Struct
// counts as doubles, an unset graph_version, empty lists and strings left out.
func SnapshotHash(s *ofpv1.FeatureSnapshot) (string, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(s)
	if err != nil {
		return "", err
	}
	var snap map[string]interface{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // keep numbers as their text: no float64 rounding
	if err := dec.Decode(&snap); err != nil {
		return "", err
	}

	pins, _ := snap["pins"].(map[string]interface{})
	if pins == nil {
		pins = map[string]interface{}{}
	}
	if seed, ok := pins["seed"].(string); ok {
		pins["seed"] = json.Number(seed)
	}
	snap["pins"] = pins
	if snap["features"] == nil {
		snap["features"] = map[string]interface{}{}
	}
	if gv, _ := snap["graph_version"].(map[string]interface{}); len(gv) == 0 {
		snap["graph_version"] = nil
	}
	freshness, _ := snap["freshness"].(map[string]interface{})
	if freshness == nil {
		freshness = map[string]interface{}{}
	}
	for _, name := range []string{"flags", "stale_groups", "missing_groups", "missing_feature_keys"} {
		if freshness[name] == nil {
			freshness[name] = []interface{}{}
		}
	}
	snap["freshness"] = freshness
	if basis, ok := snap["eb_offset_basis"].(map[string]interface{}); ok {
		for k, v := range basis {
			if v == "" {
				delete(basis, k)
			}
		}
	}

	body := make(map[string]interface{}, len(hashedFields))
	for _, name := range hashedFields {
		body[name] = snap[name]
	}
	var buf bytes.Buffer
	if err := writeCanonical(&buf, body); err != nil {
		return "", err
	}
	sum := sha256.Sum256(buf.Bytes())
	return hex.EncodeToString(sum[:]), nil
}

// writeCanonical writes OFP's canonical JSON: keys sorted by code point, no whitespace,
// ASCII only with lowercase \uXXXX escapes (Python's json.dumps(ensure_ascii=True,
// sort_keys=True, separators=(",", ":")), byte for byte), integers only.
func writeCanonical(b *bytes.Buffer, v interface{}) error {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case string:
		writeString(b, x)
	case json.Number:
		// A Struct holds counts as doubles, which proto3 JSON may print as 3 or 3e+21:
		// the hash has the integer. A fraction is no count: decimals travel as strings.
		n, ok := new(big.Float).SetPrec(0).SetString(string(x))
		if !ok || !n.IsInt() {
			return fmt.Errorf("canonical JSON holds integers only, got %s", x)
		}
		i, _ := n.Int(nil)
		b.WriteString(i.String())
	case []interface{}:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := writeCanonical(b, e); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]interface{}:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys) // UTF-8 byte order is code point order
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			if err := writeCanonical(b, x[k]); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("canonical JSON: unexpected %T", v)
	}
	return nil
}

func writeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r >= 0x20 && r < 0x7f: // printable ASCII; DEL (0x7f) is escaped
				b.WriteRune(r)
			case r > 0xffff: // a surrogate pair, as UTF-16 JSON escapes need
				hi, lo := utf16.EncodeRune(r)
				fmt.Fprintf(b, "\\u%04x\\u%04x", hi, lo)
			default:
				fmt.Fprintf(b, "\\u%04x", r)
			}
		}
	}
	b.WriteByte('"')
}
