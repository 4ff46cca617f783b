/**
 * The connection lifecycle guest programs share (the streamer, netbench, and later the mail
 * programs): a client retries a refused or unreachable connect at a fixed interval up to a
 * bound, any other error fails the program, and a socket that closes before the program is
 * done is a failure too. Pure functions over the programs' plain-data state (principle 3).
 */

import { NetError } from '../guest/net-errors.ts';
import type { ProgramContext } from '../guest/program.ts';
import type { GuestNet, SocketId } from '../guest/socket-api.ts';

/** The part of a program's state the lifecycle reads and writes. */
export interface LifecycleState {
  phase: string;
  socket: SocketId | null;
  connectTries: number;
  errors: number;
  lastError: string;
}

export interface LifecycleOptions {
  /** Names the program in the host's log, e.g. `streamer client`. */
  label: string;
  connectTriesMax: number;
  retryMs: number;
  /** The program's timer tag that reconnects. */
  retryTag: string;
}

/** Pause between two connect attempts (the peer's domain may still be booting). */
export const CONNECT_RETRY_MS = 100;
/** Default connect attempts: 10 s of retries, enough for a server domain to boot. */
export const CONNECT_TRIES_MAX_DEFAULT = 100;
/** Most connect attempts allowed: one hour of retries; beyond that the set-up is wrong. */
export const CONNECT_TRIES_MAX_LIMIT = 36_000;

/**
 * Connect errors worth another try: nobody listens yet, the peer is not reachable yet, or every
 * socket slot of our sockbuf region is still held by connections that are closing.
 */
export const RETRYABLE_CONNECT_ERRORS: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENOBUFS',
]);

/** Records a failure: the program stops, the error is counted and kept for its stats. */
export function failProgram(
  context: ProgramContext,
  state: LifecycleState,
  label: string,
  description: string,
): void {
  state.errors++;
  state.lastError = description;
  state.phase = 'failed';
  context.log(`${label} failed: ${description}`);
}

/**
 * A socket `error`. The kernel follows every `error` with `closed` and forgets the id, so the
 * socket is never touched again. A refused or unreachable connect is retried.
 */
export function onSocketError(
  context: ProgramContext,
  state: LifecycleState,
  options: LifecycleOptions,
  error: { description: string; code: string },
): void {
  state.socket = null;
  const retryable = RETRYABLE_CONNECT_ERRORS.has(error.code);
  if (state.phase !== 'connecting' || !retryable) {
    failProgram(context, state, options.label, error.description);
  } else if (state.connectTries < options.connectTriesMax) {
    state.phase = 'retryWait';
    context.setTimer(options.retryMs, options.retryTag);
  } else {
    failProgram(
      context,
      state,
      options.label,
      `gave up after ${state.connectTries} connect tries: ${error.description}`,
    );
  }
}

/** The socket closed: done if the program was closing it, a failure otherwise. */
export function onSocketClosed(
  context: ProgramContext,
  state: LifecycleState,
  label: string,
): void {
  state.socket = null;
  if (state.phase === 'closing') state.phase = 'done';
  else if (state.phase !== 'failed') {
    failProgram(context, state, label, 'the socket closed before both directions finished');
  }
}

/**
 * A client's connect attempt (counted, so retries stay bounded). A connect refused on the spot
 * because no socket slot is free (ENOBUFS) returns false: the caller treats it as an `error`
 * event of the attempt, which `onSocketError` retries.
 */
export function startConnect(
  context: ProgramContext,
  state: LifecycleState,
  peer: { ip: string; port: number },
): { ok: true } | { ok: false; code: string; description: string } {
  state.connectTries++;
  state.phase = 'connecting';
  try {
    state.socket = context.net.connect(peer.ip, peer.port);
    return { ok: true };
  } catch (error) {
    if (!(error instanceof NetError) || error.code !== 'ENOBUFS') throw error;
    state.socket = null;
    return { ok: false, code: error.code, description: `${error.code}: ${error.message}` };
  }
}

/**
 * A server that serves exactly one connection: takes the first accepted socket and stops
 * listening; a late extra one (queued before `unlisten`) is turned away. True if taken.
 */
export function acceptOne(
  context: ProgramContext,
  state: LifecycleState,
  socket: SocketId,
  port: number,
): boolean {
  if (state.phase !== 'listening') {
    context.net.close(socket);
    return false;
  }
  context.net.unlisten(port);
  state.socket = socket;
  return true;
}

/**
 * Calls the socket; a `NetError` means the kernel already forgot it (its `error`/`closed`
 * events are queued and decide the outcome), so it is only noted, never thrown.
 */
export function callSocket<T>(
  context: ProgramContext,
  state: LifecycleState & { lastSocketCallError: string },
  call: (net: GuestNet, socket: SocketId) => T,
): T | null {
  try {
    return call(context.net, state.socket!);
  } catch (error) {
    if (!(error instanceof NetError)) throw error;
    state.lastSocketCallError = `${error.code}: ${error.message}`;
    return null;
  }
}
