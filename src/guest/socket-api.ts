/**
 * What a guest program sees of networking: BSD-like calls that never block, and socket events
 * delivered as program events (principle 3: no promises, no callbacks kept across events).
 * The same program runs unchanged whatever carries its bytes (netfront path or a XENVMC
 * shared-memory channel); it cannot tell, except by `info().carrier`.
 *
 * Events are edge-triggered: `readable` comes when new bytes arrive, and the program should
 * read until `read` returns an empty array (or `readInto` returns 0); `writable` comes once
 * send-buffer space frees after a `write` accepted fewer bytes than offered.
 *
 * Two ways to read the same bytes: `read` hands out a new array the program may keep, and
 * `readInto` copies into an array the program reuses (no allocation per read: what a bulk
 * reader wants). Programs call `readSocketInto`, which works on every `GuestNet`.
 */
import type { NetErrorCode } from './net-errors.ts';

/** A socket handle, unique within its domain and stable across migration. */
export type SocketId = number;

export type SocketEvent =
  | { type: 'connected'; socket: SocketId }
  | { type: 'accepted'; socket: SocketId; localPort: number; remoteIp: string; remotePort: number }
  | { type: 'readable'; socket: SocketId }
  | { type: 'writable'; socket: SocketId }
  /** The peer ended its direction and every byte before the end has been read. */
  | { type: 'end'; socket: SocketId }
  /** Both directions are finished (or the socket was closed); the id is no longer valid. */
  | { type: 'closed'; socket: SocketId }
  | { type: 'error'; socket: SocketId; code: NetErrorCode; message: string };

export interface SocketInfo {
  localIp: string;
  localPort: number;
  remoteIp: string;
  remotePort: number;
  /** Bytes the program wrote / read. */
  bytesWritten: number;
  bytesRead: number;
  /** What carries the stream now: the netfront path or a XENVMC channel. */
  carrier: 'netfront' | 'xenvmc';
}

export interface GuestNet {
  /** The domain's IPv4 address inside the testbed, or null if it has none. */
  readonly ip: string | null;
  /** Accepts connections on `port`; each raises `accepted` on this program. */
  listen(port: number): void;
  /** Stops accepting on `port`. */
  unlisten(port: number): void;
  /** Opens a connection; `connected` or `error` (ECONNREFUSED, EHOSTUNREACH) follows. */
  connect(ip: string, port: number): SocketId;
  /** Copies bytes into the send buffer; returns how many were taken (0 when it is full). */
  write(socket: SocketId, bytes: Uint8Array): number;
  /** Takes up to `maxBytes` received bytes (an empty array when none are ready). */
  read(socket: SocketId, maxBytes: number): Uint8Array;
  /**
   * Copies up to `target.byteLength` received bytes into `target` (from its start) and returns
   * the count, 0 when none are ready: the bytes `read(socket, target.byteLength)` would return.
   * Optional so that every `GuestNet` need not have it; call it through `readSocketInto`.
   */
  readInto?(socket: SocketId, target: Uint8Array): number;
  /** Ends this direction after every written byte (FIN). */
  end(socket: SocketId): void;
  /** Forgets the socket (ends it first if needed); `closed` follows. */
  close(socket: SocketId): void;
  info(socket: SocketId): SocketInfo;
}

/**
 * `net.readInto` where the stack has it, else `read` and one more copy: the same bytes either
 * way, so a program written against it runs on every `GuestNet`.
 */
export function readSocketInto(net: GuestNet, socket: SocketId, target: Uint8Array): number {
  if (net.readInto) return net.readInto(socket, target);
  const bytes = net.read(socket, target.byteLength);
  target.set(bytes);
  return bytes.byteLength;
}
