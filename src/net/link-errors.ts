/**
 * Operating errors of the inter-host link layer (the host NIC and its shaper).
 *
 * Callers match on `code`, never on the message (undici's pattern). A closed link is an
 * operating error, not a bug: a peer host may die or drop a connection at any moment, and a
 * migration that sees `LINK_CLOSED` aborts and leaves the domain running on the source.
 */
import { TestbedError } from '../core/errors.ts';

/**
 * `LINK_CLOSED`: the socket closed, ended or failed before the bytes could leave;
 * `LINK_AUTH_FAILED`: a peer failed the cluster-key challenge (or we did);
 * `LINK_TIMEOUT`: a peer did not answer in time; `LINK_MALFORMED`: a peer sent garbage.
 */
export type LinkErrorCode = 'LINK_CLOSED' | 'LINK_AUTH_FAILED' | 'LINK_TIMEOUT' | 'LINK_MALFORMED';

/** An error of the link layer; `cause` holds the socket error when there was one. */
export class LinkError extends TestbedError<LinkErrorCode> {
  constructor(code: LinkErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'LinkError';
  }
}
