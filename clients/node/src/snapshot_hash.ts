// Recomputes snapshot_hash from the snapshot's proto JSON (docs/contract.md 4.4), as
// ofp.contracts.hashing.verify_response does: a client can check what it was served.

import { createHash } from "node:crypto";
import type { JsonObject, JsonValue } from "@bufbuild/protobuf";

const HASHED_FIELDS = [
  "pins",
  "as_of_time_utc",
  "feature_groups",
  "feature_def_policy_rev",
  "eb_offset_basis",
  "graph_version",
  "run_config_digest",
  "features",
  "freshness",
] as const;

const FRESHNESS_LISTS = ["flags", "stale_groups", "missing_groups", "missing_feature_keys"];

type Canonical = JsonValue | bigint | Canonical[] | { [key: string]: Canonical };

/** SHA-256 hex over the canonical JSON of the hashed fields of `snapshot` (its proto JSON). */
export function snapshotHash(snapshot: JsonObject): string {
  const body: { [key: string]: Canonical } = {};
  for (const name of HASHED_FIELDS) body[name] = snapshot[name] ?? null;
  // Undo proto3 JSON: uint64 seed rendered as a string, omitted empty lists, and
  // unset fields of the offset basis (the canonical form has no nulls there).
  const pins = { ...(snapshot.pins as JsonObject) } as { [key: string]: Canonical };
  if (typeof pins.seed === "string") pins.seed = BigInt(pins.seed);
  body.pins = pins;
  const freshness = { ...(snapshot.freshness as JsonObject) };
  for (const name of FRESHNESS_LISTS) freshness[name] ??= [];
  body.freshness = freshness;
  const basis = snapshot.eb_offset_basis as JsonObject | undefined;
  if (basis) {
    body.eb_offset_basis = Object.fromEntries(
      Object.entries(basis).filter(([, v]) => v !== null && v !== ""),
    ) as JsonObject;
  }
  return createHash("sha256").update(canonicalJson(body), "ascii").digest("hex");
}

/** Keys sorted by code point, no whitespace, ASCII only, integers only (as Python's
 * json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=True)). */
export function canonicalJson(value: Canonical): string {
  if (value === null || typeof value === "boolean") return String(value);
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") {
    // Struct numbers arrive as doubles; the contract hashes integers (decimals are strings).
    if (!Number.isSafeInteger(value)) throw new Error(`not an exact integer: ${value}`);
    return value.toString();
  }
  if (typeof value === "string") {
    return JSON.stringify(value).replace(
      /[\u007f-\uffff]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
    );
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const keys = Object.keys(value).sort(byCodePoint);
  return `{${keys.map((k) => `${canonicalJson(k)}:${canonicalJson(value[k]!)}`).join(",")}}`;
}

function byCodePoint(a: string, b: string): number {
  const x = Array.from(a, (c) => c.codePointAt(0)!);
  const y = Array.from(b, (c) => c.codePointAt(0)!);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}
