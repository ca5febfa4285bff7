import { fromBinary, toBinary, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { fromBase64, toBase64 } from "../src/encoding.js";
import { fromStruct, fromValue, toStruct, toValue } from "../src/values.js";
import { python } from "./python.js";

const SAMPLES: JsonValue[] = [
  null,
  true,
  0,
  -1.5,
  "text ✓",
  [],
  {},
  [1, null, { a: true, b: [2, "three"] }],
  { text: "hello", nested: { deep: { deeper: [1, 2, { x: null }] } }, count: 3 },
];

describe("JSON values", () => {
  it("round-trips every kind of JSON value", () => {
    for (const sample of SAMPLES) {
      expect(fromValue(toValue(sample))).toEqual(sample);
    }
    expect(fromStruct(toStruct({ a: 1, b: [true] }))).toEqual({ a: 1, b: [true] });
  });

  it("uses the Value kinds protobuf defines", () => {
    expect(toValue(null).kind.case).toBe("nullValue");
    expect(toValue([1]).kind.case).toBe("listValue");
    expect(toValue({ a: 1 }).kind.case).toBe("structValue");
    expect(fromValue(undefined)).toBeNull();
    const withUndefined = { kept: 1, dropped: undefined } as unknown as JsonValue;
    expect(fromValue(toValue(withUndefined))).toEqual({ kept: 1 });
  });

  it("encodes values the Python client decodes to the same data, and decodes what it encodes", () => {
    const encoded = SAMPLES.map((sample) => toBase64(toBinary(ValueSchema, toValue(sample))));
    const seen = python<{ decoded: JsonValue[]; encoded: string[] }>(
      `import base64, json, sys
from google.protobuf import json_format, struct_pb2
from parley.values import to_value
samples = json.loads(sys.stdin.read())
decoded = [json_format.MessageToDict(struct_pb2.Value.FromString(base64.b64decode(b))) for b in samples["encoded"]]
encoded = [base64.b64encode(to_value(s).SerializeToString()).decode() for s in samples["samples"]]
print(json.dumps({"decoded": decoded, "encoded": encoded}))`,
      JSON.stringify({ encoded, samples: SAMPLES }),
    );
    expect(seen.decoded).toEqual(SAMPLES);
    expect(seen.encoded.map((text) => fromValue(fromBinary(ValueSchema, fromBase64(text))))).toEqual(SAMPLES);
  });
});
