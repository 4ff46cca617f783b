/**
 * Operating errors of the migration subsystem: a corrupt or hostile stream, a refused or broken
 * migration. Callers match on `code` (undici's pattern); the message gives the values involved
 * and, where there is one, what to do.
 *
 * Programmer errors (a sender that builds a batch with unsorted page indices, say) are
 * assertions, not `MigrationError`s: they mean a bug here, not a condition to handle.
 */
import { TestbedError } from '../core/errors.ts';

/**
 * Stable codes. `STREAM_*` are raised by the decoder on invalid input and always mean the
 * stream is unusable from that point on; `MIGRATION_*` are raised by the sender and receiver.
 */
export type MigrationErrorCode =
  /** The HEADER record's magic is not `XMIG`: the peer does not speak this protocol. */
  | 'STREAM_BAD_MAGIC'
  /** The HEADER record's version is not one this build reads. */
  | 'STREAM_BAD_VERSION'
  /** A record type this build does not know. */
  | 'STREAM_UNKNOWN_RECORD'
  /** A record's body length is above the bound for its type (checked before buffering). */
  | 'STREAM_RECORD_TOO_LARGE'
  /** A record body that cannot be parsed or breaks a rule of its type. */
  | 'STREAM_MALFORMED'
  /** A batch's metadata or page checksum does not match its bytes. */
  | 'STREAM_CHECKSUM'
  /** A page index beyond the domain's page count. */
  | 'STREAM_PAGE_RANGE'
  /** Records in an illegal order, or page indices not ascending within a batch. */
  | 'STREAM_ORDER'
  /**
   * The input ended in the middle of a record or before the END record, or END counts records
   * or pages that did not arrive.
   */
  | 'STREAM_TRUNCATED'
  /** The migration was cancelled (AbortSignal, policy abort, or the peer gave up). */
  | 'MIGRATION_ABORTED'
  /** The target declined the domain (no room, name in use, domain too large). */
  | 'MIGRATION_REFUSED'
  /** The connection to the peer failed. */
  | 'MIGRATION_LINK'
  /** The peer did not answer in time. */
  | 'MIGRATION_TIMEOUT'
  /** The target host name does not resolve to a known host. */
  | 'MIGRATION_UNKNOWN_HOST'
  /** The domain is already migrating, or the host is busy with another migration. */
  | 'MIGRATION_BUSY'
  /**
   * The target may run the domain but no answer says so: the source copy stays paused (never
   * both running) until an operator, sure of where it runs, resumes or destroys it.
   */
  | 'MIGRATION_IN_DOUBT';

/** An operating error of live migration. See `MigrationErrorCode` for the meaning of codes. */
export class MigrationError extends TestbedError<MigrationErrorCode> {
  constructor(code: MigrationErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'MigrationError';
  }
}

/** True when `error` is a `MigrationError`, optionally with the given code. */
export function isMigrationError(
  error: unknown,
  code?: MigrationErrorCode,
): error is MigrationError {
  return error instanceof MigrationError && (code === undefined || error.code === code);
}
