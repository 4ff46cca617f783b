/**
 * The `GuestState`: the small record of a domain's control state (the vCPU and device context
 * of a real VM) that travels at stop-and-copy, after the last dirty pages. Bulk bytes live in
 * guest memory and travel as pages; this holds only plain data, serialised with v8's
 * structured-clone format, and its size is reported with every migration.
 */
import { deserialize, serialize } from 'node:v8';

export interface SavedTimer {
  programId: number;
  tag: string;
  /** Guest time at which it fires. */
  dueGuestMs: number;
}

export interface SavedProgram {
  programId: number;
  kind: string;
  dataRegion: { firstPage: number; pageCount: number };
  state: unknown;
}

export interface GuestState {
  version: 1;
  /** Guest monotonic time at the pause; it does not advance while the domain is paused. */
  guestTimeMs: number;
  programs: SavedProgram[];
  timers: SavedTimer[];
  /** Kernel subsystems (network stack, ...) by name. */
  kernel: Record<string, unknown>;
}

export function encodeGuestState(state: GuestState): Uint8Array {
  return serialize(state);
}

export function decodeGuestState(bytes: Uint8Array): GuestState {
  const state = deserialize(bytes) as GuestState;
  if (state === null || typeof state !== 'object' || state.version !== 1) {
    throw new TypeError('guest state record is not a version 1 GuestState');
  }
  return state;
}
