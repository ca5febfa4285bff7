/**
 * JSON values to and from their protobuf forms (payloads, subject data), as
 * the Python client's `parley.values` does: any JSON value travels as a
 * `google.protobuf.Value`; `meta` is a `google.protobuf.Struct`, which the
 * generated code already presents as a plain JSON object.
 *
 * @module
 */

import { create, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { ListValueSchema, NullValue, StructSchema, ValueSchema, type Struct, type Value } from "@bufbuild/protobuf/wkt";

export type { JsonObject, JsonValue };

/**
 * Any JSON value as a `google.protobuf.Value`: `null`, booleans, numbers
 * (all numbers are doubles on the wire), strings, arrays and objects, nested.
 * Object entries whose value is `undefined` are left out, as `JSON.stringify`
 * does. Numbers must be finite: the server refuses NaN and infinities
 * (VALIDATION_FAILED), as it does from any client.
 */
export function toValue(data: JsonValue): Value {
  if (data === null) {
    return create(ValueSchema, { kind: { case: "nullValue", value: NullValue.NULL_VALUE } });
  }
  switch (typeof data) {
    case "boolean":
      return create(ValueSchema, { kind: { case: "boolValue", value: data } });
    case "number":
      return create(ValueSchema, { kind: { case: "numberValue", value: data } });
    case "string":
      return create(ValueSchema, { kind: { case: "stringValue", value: data } });
    default:
      break;
  }
  if (Array.isArray(data)) {
    return create(ValueSchema, {
      kind: { case: "listValue", value: create(ListValueSchema, { values: data.map(toValue) }) },
    });
  }
  if (typeof data === "object") {
    return create(ValueSchema, { kind: { case: "structValue", value: toStruct(data) } });
  }
  throw new TypeError(`not a JSON value: ${typeof data}`);
}

/** A JSON object as a `google.protobuf.Struct`. */
export function toStruct(data: JsonObject): Struct {
  const fields: { [key: string]: Value } = {};
  for (const [key, value] of Object.entries(data)) {
    if (value !== undefined) {
      fields[key] = toValue(value);
    }
  }
  return create(StructSchema, { fields });
}

/** The JSON value a `google.protobuf.Value` holds; `null` for an absent value or one with no kind. */
export function fromValue(value: Value | undefined): JsonValue {
  const kind = value?.kind;
  switch (kind?.case) {
    case "boolValue":
    case "numberValue":
    case "stringValue":
      return kind.value;
    case "listValue":
      return kind.value.values.map(fromValue);
    case "structValue":
      return fromStruct(kind.value);
    default:
      return null;
  }
}

/** The JSON object a `google.protobuf.Struct` holds. */
export function fromStruct(struct: Struct | undefined): JsonObject {
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) {
    out[key] = fromValue(value);
  }
  return out;
}
