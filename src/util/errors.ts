// Errors a user can act on: each has its own code (the client sees it on TillerError.code) and,
// where one value is at fault, the field that holds it. What is not one of these is INTERNAL.

export type UserErrorCode =
  /** A file or folder named in the request does not exist. */
  | "NOT_FOUND"
  /** A data file's content is wrong (a bad JSONL line, an empty training set). */
  | "BAD_DATA"
  /** A value is valid on its own but not with the rest (promptsPerStep > the prompts kept). */
  | "BAD_ARGS"
  /** Another operation of the same experiment runs; wait for it, or stop() it. */
  | "BUSY"
  /** The thing asked for is no longer kept (rollouts of an old step, a snapshot). */
  | "NOT_KEPT"
  /** The operation does not fit where the experiment stands (save in a half-done step). */
  | "BAD_STATE";

export class UserError extends Error {
  constructor(
    readonly code: UserErrorCode,
    message: string,
    readonly field?: string,
  ) {
    super(field && !message.startsWith(field) ? `${field}: ${message}` : message);
  }
}
