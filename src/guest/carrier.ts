/**
 * The hook through which another carrier (a XENVMC shared-memory channel) moves the bytes of a
 * guest stream instead of netfront (principle 2): the socket layer defines it and calls it;
 * the XENVMC module implements it and is plugged in when the guest kernel is assembled, the
 * way a kernel module hooks the socket calls. The socket layer never imports `xenvmc/`.
 *
 * Every call is made between two guest events, from the kernel's poll or a program's socket
 * call; a carrier never calls back into the program.
 */
import type { SocketId } from './socket-api.ts';
import type { StreamConnection } from './stream.ts';

/** A stream as the carrier sees it. */
export interface CarriedStream {
  socket: SocketId;
  stream: StreamConnection;
}

export interface StreamCarrier {
  /** The program writes: bytes the carrier took (0..n), or null to let netfront take them. */
  write(carried: CarriedStream, bytes: Uint8Array): number | null;
  /** The program reads and the socket buffer is empty: bytes from the carrier (maybe none). */
  read(carried: CarriedStream, maxBytes: number): Uint8Array;
  /** `read` into the program's `target`; returns the count (maybe 0). */
  readInto(carried: CarriedStream, target: Uint8Array): number;
  /** Bytes the carrier holds for the program to read. */
  pendingBytes(carried: CarriedStream): number;
  /** Bytes the carrier can take now (for `writable` events); null when it carries nothing. */
  freeBytes(carried: CarriedStream): number | null;
  /** Which carrier moves this stream's bytes now. */
  carrierOf(carried: CarriedStream): 'netfront' | 'xenvmc';
  /** Runs the carrier's own state machines (set-up, tear-down, finish_mig) once per poll. */
  poll(streams: readonly CarriedStream[], nowMs: number): void;
  /** A stream is gone (closed, reset, forgotten): release what the carrier holds for it. */
  forget(carried: CarriedStream): void;
}

/** A carrier that is a kernel module with state of its own, saved in the GuestState. */
export interface CarrierModule extends StreamCarrier {
  /** Plain data for the GuestState (taken at a pause). */
  saveState(): unknown;
  /** Loads what `saveState` returned, on the target host. */
  loadState(state: unknown): void;
}
