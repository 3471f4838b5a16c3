// Validation at the protocol boundary: small composable checks whose errors name the field
// (`args.prompts[2]: expected an Int32Array`), and whose result types are inferred, so a method's
// argument type and its runtime check are one declaration.

/** Thrown by every check; `field` is the dotted path of the offending value. */
export class ValidationError extends Error {
  readonly code = "BAD_ARGS";
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

export type Check<T> = ((value: unknown, field: string) => T) & { optional?: boolean };
export type Optional<T> = Check<T | undefined> & { optional: true };
export type Infer<C> = C extends Check<infer T> ? T : never;

type Shape = Record<string, Check<unknown>>;
type RequiredKeys<S extends Shape> = { [K in keyof S]: S[K] extends { optional: true } ? never : K }[keyof S];
type OptionalKeys<S extends Shape> = Exclude<keyof S, RequiredKeys<S>>;
export type InferShape<S extends Shape> = { [K in RequiredKeys<S>]: Infer<S[K]> } & {
  [K in OptionalKeys<S>]?: Infer<S[K]>;
};

function shown(value: unknown): string {
  if (value === null) return "null";
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  const text = typeof value === "string" ? JSON.stringify(value) : String(value);
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

export function fail(field: string, expected: string, value: unknown): never {
  throw new ValidationError(field, `expected ${expected}, found ${shown(value)}`);
}

export const string =
  (options: { maxLength?: number; pattern?: RegExp } = {}): Check<string> =>
  (v, field) => {
    if (typeof v !== "string" || v.length === 0) fail(field, "a non-empty string", v);
    if (options.maxLength !== undefined && v.length > options.maxLength) {
      fail(field, `a string of at most ${options.maxLength} characters`, v);
    }
    if (options.pattern && !options.pattern.test(v)) fail(field, `a string matching ${options.pattern}`, v);
    return v;
  };

export const integer =
  (options: { min?: number; max?: number } = {}): Check<number> =>
  (v, field) => {
    const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = options;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
      fail(field, `an integer in [${min}, ${max}]`, v);
    }
    return v;
  };

export const number =
  (options: { min?: number; max?: number } = {}): Check<number> =>
  (v, field) => {
    const { min = -Infinity, max = Infinity } = options;
    if (typeof v !== "number" || !Number.isFinite(v) || v < min || v > max) {
      fail(field, `a finite number in [${min}, ${max}]`, v);
    }
    return v;
  };

export const boolean = (): Check<boolean> => (v, field) => {
  if (typeof v !== "boolean") fail(field, "true or false", v);
  return v;
};

export const literal =
  <const T extends readonly string[]>(...allowed: T): Check<T[number]> =>
  (v, field) => {
    if (typeof v !== "string" || !allowed.includes(v)) fail(field, `one of ${allowed.join(", ")}`, v);
    return v as T[number];
  };

/** Any JSON-like value, passed through unchecked (for `echo` and opaque configs). */
export const anything = (): Check<unknown> => (v) => v;

export function optional<T>(check: Check<T>): Optional<T> {
  const wrapped = ((v: unknown, field: string) =>
    v === undefined ? undefined : check(v, field)) as Optional<T>;
  wrapped.optional = true;
  return wrapped;
}

export const array =
  <T>(item: Check<T>, options: { minLength?: number; maxLength?: number } = {}): Check<T[]> =>
  (v, field) => {
    const { minLength = 0, maxLength = 1_000_000 } = options;
    if (!Array.isArray(v)) fail(field, "an array", v);
    if (v.length < minLength || v.length > maxLength) {
      fail(field, `an array of ${minLength} to ${maxLength} items`, `${v.length} items`);
    }
    return v.map((x, i) => item(x, `${field}[${i}]`));
  };

/** A plain object with exactly these keys (unknown keys are refused: a typo must not pass silently). */
export const object =
  <S extends Shape>(shape: S): Check<InferShape<S>> =>
  (v, field) => {
    if (v === null || typeof v !== "object" || Array.isArray(v) || ArrayBuffer.isView(v)) {
      fail(field, "an object", v);
    }
    const record = v as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (!Object.hasOwn(shape, key)) throw new ValidationError(`${field}.${key}`, "unknown field");
    }
    const out: Record<string, unknown> = {};
    for (const [key, check] of Object.entries(shape)) {
      const value = check(Object.hasOwn(record, key) ? record[key] : undefined, `${field}.${key}`);
      if (value !== undefined) out[key] = value;
    }
    return out as InferShape<S>;
  };

/** Any object with string keys, values unchecked (HF configs travel this way). */
export const record = (): Check<Record<string, unknown>> => (v, field) => {
  if (v === null || typeof v !== "object" || Array.isArray(v) || ArrayBuffer.isView(v)) {
    fail(field, "an object", v);
  }
  return v as Record<string, unknown>;
};

type TypedArrayClass = (new (length: number) => ArrayBufferView) & { readonly name: string };

export const typedArray =
  <K extends TypedArrayClass[]>(...kinds: K): Check<InstanceType<K[number]>> =>
  (v, field) => {
    if (!kinds.some((k) => v instanceof k)) fail(field, kinds.map((k) => `a ${k.name}`).join(" or "), v);
    return v as InstanceType<K[number]>;
  };
