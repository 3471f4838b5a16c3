// Rule-based verifiers for math answers, ported from verl's reward_score modules:
//   dapoMathScore   ← verl/utils/reward_score/math_dapo.py (compute_score, Minerva "Answer:" form)
//   boxedMathScore  ← verl/utils/reward_score/math.py (last \boxed{}), with math_dapo's normalisation
//   gsm8kScore      ← verl/utils/reward_score/gsm8k.py ("#### answer", strict by default)
// Pure string functions: no I/O, safe to run in worker threads (see runner.ts).

/** What the DAPO verifier returns; the same keys verl's math_dapo.compute_score returns. */
export interface MathScore {
  score: number;
  acc: boolean;
  /** The extracted answer; null where verl's is None (strict box mode, nothing boxed). */
  pred: string | null;
}

/** Python's `s[-n:]`: the last n code points (a JS slice counts UTF-16 units, splitting surrogate pairs). */
export function lastCodePoints(text: string, n: number): string {
  const points = Array.from(text);
  return points.length <= n ? text : points.slice(-n).join("");
}

// verl clips the response to its last 300 characters before matching, "for efficiency"; the
// answer is expected at the end. Kept, because it changes which "Answer:" lines are seen.
const solutionClipChars = 300;

// math_dapo.py `substitutions`, applied in order with str.replace (every occurrence).
const substitutions: ReadonlyArray<readonly [string, string]> = [
  ["an ", ""],
  ["a ", ""],
  [".$", "$"],
  ["\\$", ""],
  ["\\ ", ""],
  [" ", ""],
  ["mbox", "text"],
  [",\\text{and}", ","],
  ["\\text{and}", ","],
  ["\\text{m}", "\\text{}"],
];

// math_dapo.py `removed_expressions`, removed in order.
const removedExpressions: readonly string[] = [
  "square",
  "ways",
  "integers",
  "dollars",
  "mph",
  "inches",
  "hours",
  "km",
  "units",
  "\\ldots",
  "sue",
  "points",
  "feet",
  "minutes",
  "digits",
  "cents",
  "degrees",
  "cm",
  "gm",
  "pounds",
  "meters",
  "meals",
  "edges",
  "students",
  "childrentickets",
  "multiples",
  "\\text{s}",
  "\\text{.}",
  "\\text{\ns}",
  "\\text{}^2",
  "\\text{}^3",
  "\\text{\n}",
  "\\text{}",
  "\\mathrm{th}",
  "^\\circ",
  "^{\\circ}",
  "\\;",
  ",\\!",
  "{,}",
  '"',
  "\\dots",
];

// Python's `.` matches anything but "\n"; JS's `.` also refuses "\r" and U+2028/9, so the
// patterns below spell Python's dot as [^\n] to match the same strings.
const inlineMath = /([^\n]*?)(\$)([^\n]*?)(\$)([^\n]*)/g;
const textArg = /(\\text\{)([^\n]*?)(\})/g;
const textbfArg = /(\\textbf\{)([^\n]*?)(\})/g;
const overlineArg = /(\\overline\{)([^\n]*?)(\})/g;
const boxedArg = /(\\boxed\{)([^\n]*)(\})/g;
const shortFrac = /(frac)([^{])([^\n])/g;
const shortSqrt = /(sqrt)([^{])/g;

/**
 * verl's math_dapo `normalize_final_answer`: keep what follows the last "=", apply the
 * substitutions and removals (units, words, \text{}, spaces, `\$`), unwrap $…$, \text{},
 * \textbf{}, \overline{}, \boxed{}, expand \fracab → \frac{a}{b} and \sqrta → \sqrt{a}, drop "$",
 * and drop commas from a plain digit string ("1,000" → "1000"; "-1,000" keeps its comma, as in
 * verl, because Python's isdigit() is false for "-1000").
 * Note what it does NOT do, like verl: \dfrac stays \dfrac, and "1/2" is not "\frac{1}{2}".
 */
export function normalizeFinalAnswer(finalAnswer: string): string {
  let s = finalAnswer.split("=").at(-1) ?? "";
  for (const [before, after] of substitutions) s = s.replaceAll(before, after);
  for (const expr of removedExpressions) s = s.replaceAll(expr, "");
  s = s.replace(inlineMath, (_m, _a, _d1, inner: string) => `$${inner}$`);
  s = s.replace(textArg, (_m, _o, inner: string) => inner);
  s = s.replace(textbfArg, (_m, _o, inner: string) => inner);
  s = s.replace(overlineArg, (_m, _o, inner: string) => inner);
  s = s.replace(boxedArg, (_m, _o, inner: string) => inner);
  s = s.replace(shortFrac, (_m, _f, a: string, b: string) => `frac{${a}}{${b}}`);
  s = s.replace(shortSqrt, (_m, _f, a: string) => `sqrt{${a}}`);
  s = s.replaceAll("$", "");
  const noCommas = s.replaceAll(",", "");
  if (/^\d+$/.test(noCommas)) s = noCommas;
  return pyStrip(s);
}

// Python's str.strip() with no argument strips Unicode whitespace, like JS trim() does, except
// that trim() also strips U+FEFF; close enough that we use trim() and note it here.
function pyStrip(s: string): string {
  return s.trim();
}

/**
 * The last `\boxed{…}` (or `\fbox{…}`) in `text` with balanced braces, including the command,
 * or null when there is none or its braces never close. Like verl's math.py, `\boxed 5` (the
 * space form) is also accepted, running to the next "$". verl takes the space form whenever it
 * occurs anywhere; we take it only when it is the last \boxed (deliberate: last answer wins).
 */
export function lastBoxedOnlyString(text: string): string | null {
  const spaceForm = text.lastIndexOf("\\boxed ");
  let idx = text.lastIndexOf("\\boxed");
  if (spaceForm >= 0 && spaceForm === idx) {
    return `\\boxed ${text.slice(spaceForm + "\\boxed ".length).split("$")[0] ?? ""}`;
  }
  if (idx < 0) idx = text.lastIndexOf("\\fbox");
  if (idx < 0) return null;
  let depth = 0;
  for (let i = idx; i < text.length; i++) {
    const c = text[i];
    if (c === "{") depth++;
    else if (c === "}") {
      depth--;
      if (depth === 0) return text.slice(idx, i + 1);
    }
  }
  return null;
}

/**
 * The argument of a string returned by lastBoxedOnlyString. verl's remove_boxed asserts on
 * `\fbox{`, so its math.py scores every \fbox answer 0; we unwrap it (deliberate difference).
 */
export function removeBoxed(boxed: string): string {
  for (const left of ["\\boxed ", "\\boxed{", "\\fbox{"]) {
    if (!boxed.startsWith(left)) continue;
    return left.endsWith("{") ? boxed.slice(left.length, -1) : boxed.slice(left.length);
  }
  throw new Error(`removeBoxed: ${JSON.stringify(boxed.slice(0, 40))} does not start with \\boxed or \\fbox`);
}

const answerPattern = /Answer\s*:\s*([^\n]+)/gi;

/** math_dapo.py's own last_boxed_only_string: the last "\boxed{…}" only (no \fbox, no space form). */
function dapoLastBoxed(text: string): string | null {
  const idx = text.lastIndexOf("\\boxed{");
  if (idx < 0) return null;
  let depth = 0;
  for (let i = idx; i < text.length; i++) {
    if (text[i] === "{") depth++;
    if (text[i] === "}") {
      depth--;
      if (depth === 0) return text.slice(idx, i + 1);
    }
  }
  return null;
}

/**
 * math_dapo's is_correct_strict_box: the last \boxed{} in the last 100 characters, compared as it
 * is (no normalisation) with the ground truth as it is. pred is null when nothing is boxed.
 */
function strictBox(solution: string, groundTruth: string): { correct: boolean; pred: string | null } {
  const boxed = dapoLastBoxed(lastCodePoints(solution, 100));
  const pred = boxed === null ? null : boxed.slice("\\boxed{".length, -1);
  return { correct: pred === groundTruth, pred };
}

export interface DapoOptions {
  /** verl's strict_box_verify: only a \boxed{} answer in the last 100 characters counts. Default false. */
  strictBoxVerify?: boolean;
}

/**
 * verl 0.9.1's math_dapo.compute_score on the last 300 characters of the response. Default: the
 * last "Answer: …" line, normalised, against the normalised ground truth; when there is none, a
 * \boxed{} answer in the last 100 characters (compared as it is) decides, and with neither pred is
 * "[INVALID]". strictBoxVerify: the boxed answer only (pred null when nothing is boxed). Score 1 or −1.
 */
export function dapoMathScore(response: string, groundTruth: string, options: DapoOptions = {}): MathScore {
  const clipped = lastCodePoints(response, solutionClipChars);
  if (options.strictBoxVerify) {
    const { correct, pred } = strictBox(clipped, groundTruth);
    return { score: correct ? 1 : -1, acc: correct, pred };
  }
  const matches = [...clipped.matchAll(answerPattern)];
  const extracted = matches.at(-1)?.[1] ?? "[INVALID]";
  const pred = normalizeFinalAnswer(extracted);
  let acc = pred === normalizeFinalAnswer(groundTruth);
  let finalPred: string | null = pred;
  if (pred === "[INVALID]") {
    const box = strictBox(clipped, groundTruth);
    if (box.pred !== null) {
      acc = box.correct;
      finalPred = box.pred;
    }
  }
  return { score: acc ? 1 : -1, acc, pred: finalPred };
}

/**
 * The `\boxed{}` verifier: the last boxed (or \fbox) expression anywhere in the response (verl's
 * math.py does not clip), normalised with math_dapo's normalizeFinalAnswer, against the
 * normalised ground truth. Score 1 or 0, as verl's math.py. Deliberate difference: verl's math.py
 * compares with its own `strip_string`/`is_equiv`; we use one normalisation for both verifiers so
 * a dataset scores the same whichever answer format the prompt asks for. A ground truth that is
 * itself boxed is unwrapped first. pred is "" when nothing is boxed.
 */
export function boxedMathScore(response: string, groundTruth: string): MathScore {
  const boxed = lastBoxedOnlyString(response);
  const truthBoxed = lastBoxedOnlyString(groundTruth);
  const truth = normalizeFinalAnswer(truthBoxed === null ? groundTruth : removeBoxed(truthBoxed));
  if (boxed === null) return { score: 0, acc: false, pred: "" };
  const pred = normalizeFinalAnswer(removeBoxed(boxed));
  const acc = pred === truth;
  return { score: acc ? 1 : 0, acc, pred };
}

export interface Gsm8kOptions {
  /** "strict" (verl's default) needs "#### <number>"; "flexible" takes the last number. */
  method?: "strict" | "flexible";
  /** Score for a well-formatted wrong answer; verl's default 0. */
  formatScore?: number;
  /** Score for a correct answer; verl's default 1. */
  score?: number;
}

/** verl's gsm8k.extract_solution: the answer string, or null when none is found. */
export function extractGsm8kAnswer(
  response: string,
  method: "strict" | "flexible" = "strict",
): string | null {
  const s = response.length > solutionClipChars ? response.slice(-solutionClipChars) : response;
  if (method === "strict") {
    const found = [...s.matchAll(/#### (-?[0-9.,]+)/g)];
    const last = found.at(-1)?.[1];
    return last === undefined ? null : last.replaceAll(",", "").replaceAll("$", "");
  }
  const found = [...s.matchAll(/(-?[0-9.,]+)/g)].map((m) => m[1] as string);
  // verl's loop leaves the last-tried candidate in final_answer even if all are invalid, so a
  // response whose only "numbers" are "." returns "." — mirrored.
  for (let i = found.length - 1; i >= 0; i--) {
    const candidate = found[i] as string;
    if (candidate !== "" && candidate !== ".") return candidate;
  }
  return found.length === 0 ? null : (found[0] as string);
}

/**
 * verl's gsm8k.compute_score: 0 with no answer, `score` for an exact string match with the ground
 * truth, `formatScore` otherwise. The ground truth is compared as given (verl's preprocessing
 * already removed its commas).
 */
export function gsm8kScore(response: string, groundTruth: string, options: Gsm8kOptions = {}): number {
  const answer = extractGsm8kAnswer(response, options.method ?? "strict");
  if (answer === null) return 0;
  return answer === groundTruth ? (options.score ?? 1) : (options.formatScore ?? 0);
}
