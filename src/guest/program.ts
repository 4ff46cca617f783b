/**
 * Guest programs are event-driven state machines (principle 3): all their state is plain
 * structured-clone data in `state` plus bytes in guest memory, never pending promises. The
 * guest kernel calls them one event at a time and pauses a domain only between two events, so
 * at any pause `state` is complete and the domain can be moved to another host.
 *
 * A program never reads the wall clock or schedules real timers itself: it asks its
 * `ProgramContext`, whose timers the kernel saves in the `GuestState` and re-arms on the
 * target host.
 */

import type { GuestMemory } from '../memory/guest-memory.ts';
import type { Region } from '../memory/layout.ts';
import type { GuestFiles } from './files.ts';
import type { GuestNet, SocketEvent } from './socket-api.ts';

/** What the kernel offers a program. */
export interface ProgramContext {
  /** The domain's memory; writes through it are seen by log-dirty. */
  readonly memory: GuestMemory;
  /** The pages this program owns inside the `program` region. */
  readonly dataRegion: Region;
  /** Monotonic guest time in ms (continues across a migration). */
  nowMs(): number;
  /** Arms a one-shot timer; `onTimer(tag)` runs after `delayMs`. Survives migration. */
  setTimer(delayMs: number, tag: string): void;
  /** Cancels every pending timer of this program with `tag`. */
  cancelTimer(tag: string): void;
  /** A line for the host's log (prefixed with the domain and program). */
  log(message: string): void;
  /** Guest networking: sockets owned by this program. */
  readonly net: GuestNet;
  /** Files on the domain's disk, through the guest page cache (`NO_FILES` without a disk). */
  readonly files: GuestFiles;
}

/** What a program reports: plain data, flat figures or lists of them (e.g. per-mail latencies). */
export type ProgramStats = Record<string, number | string | boolean | number[] | null>;

/** One running program. `State` must be structured-clone data. */
export interface GuestProgram<State = unknown> {
  readonly kind: string;
  /** The program's whole state; saved in the GuestState at pause. */
  readonly state: State;
  /** Called once when the program is first started (not after a migration). */
  start(): void;
  /** A timer armed through the context fired. */
  onTimer(tag: string): void;
  /** Something happened on one of this program's sockets. */
  onSocket?(event: SocketEvent): void;
  /** Figures the program reports (plain data), e.g. pages written. */
  stats(): ProgramStats;
}

/** Builds a program from its parameters (first start) or its saved state (after migration). */
export interface ProgramFactory<Params = unknown, State = unknown> {
  readonly kind: string;
  create(context: ProgramContext, params: Params): GuestProgram<State>;
  restore(context: ProgramContext, state: State): GuestProgram<State>;
}
