/**
 * The base of every operating error in xenvmc.
 *
 * Programmer errors are assertions (`node:assert/strict`, always on). Operating errors (a dead
 * target host, a corrupted record, bad CLI input) are `TestbedError`s with a stable `code` that
 * callers match on, a message that gives the values involved and says what to do, and `cause`
 * when they wrap another error (undici's pattern).
 */
export class TestbedError<Code extends string = string> extends Error {
  readonly code: Code;

  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'TestbedError';
  }

  /** A plain object for JSON output and the control API. */
  toJSON(): { code: string; message: string } {
    return { code: this.code, message: this.message };
  }
}

/** True when `error` is a `TestbedError`, optionally with the given code. */
export function isTestbedError(error: unknown, code?: string): error is TestbedError {
  return error instanceof TestbedError && (code === undefined || error.code === code);
}

/** Turns anything thrown into a one-line message (never a stack trace for the user). */
export function describeError(error: unknown): string {
  if (error instanceof TestbedError) return `${error.code}: ${error.message}`;
  if (error instanceof Error) return error.message;
  return String(error);
}

export type InputErrorCode = 'INPUT_INVALID';

/** Bad input from a user (CLI flags, API bodies, scenario files). */
export class InputError extends TestbedError<InputErrorCode> {
  constructor(message: string) {
    super('INPUT_INVALID', message);
    this.name = 'InputError';
  }
}
