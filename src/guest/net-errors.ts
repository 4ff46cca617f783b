/**
 * Operating errors of guest networking, with the errno-like codes a guest program (and a Node
 * library running over the `Duplex` adapter) expects. Callers match on `code`.
 */
import { TestbedError } from '../core/errors.ts';

/**
 * - `ECONNREFUSED`: the peer answered a connect with RST (no listener on that port).
 * - `EHOSTUNREACH`: Dom0 knows no domain with the target IP (answered UNREACHABLE).
 * - `ECONNRESET`: the peer reset an established stream.
 * - `EPIPE`: the program wrote after `end()` or after the stream closed.
 * - `ENOBUFS`: no room for a socket buffer or ring in guest memory.
 * - `FRAME_MALFORMED`: a frame failed validation (counted and dropped by the data path).
 */
export type NetErrorCode =
  | 'ECONNREFUSED'
  | 'EHOSTUNREACH'
  | 'ECONNRESET'
  | 'EPIPE'
  | 'ENOBUFS'
  | 'FRAME_MALFORMED';

export class NetError extends TestbedError<NetErrorCode> {
  constructor(code: NetErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'NetError';
  }
}
