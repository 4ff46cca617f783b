/**
 * The guest kernel: runs a domain's programs one event at a time inside the domain's worker
 * thread, owns their timers, and pauses only between two events (principle 3). At a pause it
 * cancels its real timers and returns a `GuestState`; on the target host a new kernel is built
 * from that state and the migrated memory, and carries on as if nothing but time had passed.
 *
 * Guest time is monotonic and stands still while the domain is paused, so a program that
 * computes work from elapsed time (the dirtier) does not see the downtime as a burst.
 *
 * Non-goals: preemption (programs are short event handlers), several vCPUs.
 */
import type { Clock, TimerHandle } from '../core/clock.ts';
import { TestbedError } from '../core/errors.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import type { Region } from '../memory/layout.ts';
import type { CarrierModule } from './carrier.ts';
import { NO_FILES } from './files.ts';
import type { GuestState, SavedTimer } from './guest-state.ts';
import { NetError } from './net-errors.ts';
import { Netstack, type NetstackState } from './netstack.ts';
import { PageCache, type PageCacheState } from './page-cache.ts';
import type { GuestProgram, ProgramContext, ProgramFactory } from './program.ts';
import type { BlockStore } from './shared-disk.ts';
import type { GuestNet, SocketEvent } from './socket-api.ts';

/**
 * How long the kernel may keep delivering socket events before it yields to Dom0's messages
 * (a pause request waits behind it, and so adds to the downtime). Two co-resident domains on
 * a shared-memory channel can otherwise keep each other busy indefinitely.
 */
const POLL_BUDGET_MS = 2;

export interface ProgramSpec {
  kind: string;
  params: unknown;
  /** Pages of the program region for this program; default: an equal share of what is left. */
  dataPages?: number;
}

interface RunningProgram {
  programId: number;
  kind: string;
  dataRegion: Region;
  program: GuestProgram;
}

interface PendingTimer extends SavedTimer {
  handle: TimerHandle | null;
}

export type KernelPhase = 'running' | 'paused' | 'halted';

export interface GuestKernelComponents {
  memory: GuestMemory;
  clock: Clock;
  factories: ReadonlyMap<string, ProgramFactory>;
  log: (message: string) => void;
  /** Called when a program throws: the domain is halted and the host told. */
  onCrash: (error: Error) => void;
  /**
   * Networking: the domain's IP (null: no network), the event channel to Dom0, and the socket
   * buffer size the domain was created with (default: the netstack's share of sockbuf).
   */
  net?: { ip: string | null; seed: number; socketBufferBytes?: number; notifyBackend: () => void };
  /** Another carrier for streams (the XENVMC module), plugged in by the composition root. */
  carrier?: CarrierModule;
  /** The domain's disk on shared storage (none: programs get `NO_FILES`). */
  disk?: BlockStore;
}

export class GuestKernel {
  private readonly components: GuestKernelComponents;
  private readonly programs = new Map<number, RunningProgram>();
  private readonly timers = new Set<PendingTimer>();
  private phase: KernelPhase = 'paused';
  /** Guest time = guestTimeAtResume + (clock.nowMs() - realTimeAtResume) while running. */
  private guestTimeAtResume = 0;
  private realTimeAtResume = 0;
  private netstack: Netstack | null = null;
  private pageCache: PageCache | null = null;
  private netTimer: TimerHandle | null = null;
  private readonly socketEvents: { programId: number; event: SocketEvent }[] = [];
  private polling = false;

  constructor(components: GuestKernelComponents) {
    this.components = components;
  }

  private netComponents() {
    return {
      memory: this.components.memory,
      nowMs: () => this.guestNowMs(),
      notifyBackend: () => this.components.net?.notifyBackend(),
      deliver: (programId: number, event: SocketEvent) =>
        this.socketEvents.push({ programId, event }),
      setTimer: (dueMs: number | null) => this.armNetTimer(dueMs),
      carrier: this.components.carrier,
    };
  }

  /** Dom0 put frames on the RX ring (the event channel fired). */
  onNetworkEvent(): void {
    if (this.phase === 'running') this.afterEvent();
  }

  /** Dom0 learned that `ip` now lives elsewhere: resend what it has not confirmed. */
  onPeerMoved(ip: number): void {
    this.netstack?.rewindAll(ip);
    if (this.phase === 'running') this.afterEvent();
  }

  pageCacheCounters(): Record<string, number> | null {
    return this.pageCache
      ? { ...this.pageCache.counters, dirtyPages: this.pageCache.dirtyPages() }
      : null;
  }

  netCounters(): Record<string, number> | null {
    return this.netstack
      ? { ...this.netstack.state.counters, sockets: this.netstack.state.sockets.length }
      : null;
  }

  get currentPhase(): KernelPhase {
    return this.phase;
  }

  guestNowMs(): number {
    if (this.phase !== 'running') return this.guestTimeAtResume;
    return this.guestTimeAtResume + (this.components.clock.nowMs() - this.realTimeAtResume);
  }

  /** First boot: builds and starts every program. */
  boot(specs: readonly ProgramSpec[]): void {
    const net = this.components.net;
    if (net) {
      const { ip, seed, socketBufferBytes } = net;
      this.netstack = Netstack.boot(this.netComponents(), { ip, seed, socketBufferBytes });
    }
    const disk = this.components.disk;
    if (disk) {
      const memory = this.components.memory;
      this.pageCache = PageCache.create(memory, memory.region('pagecache'), disk);
    }
    const program = this.components.memory.region('program');
    let nextPage = program.firstPage;
    let pagesLeft = program.pageCount;
    specs.forEach((spec, index) => {
      const share = spec.dataPages ?? Math.floor(pagesLeft / (specs.length - index));
      if (share < 1 || share > pagesLeft) {
        throw new TestbedError(
          'GUEST_NO_MEMORY',
          `program ${spec.kind} asks for ${share} pages but only ${pagesLeft} of the program region are left`,
        );
      }
      const dataRegion: Region = { name: 'program', firstPage: nextPage, pageCount: share };
      nextPage += share;
      pagesLeft -= share;
      const factory = this.factory(spec.kind);
      const programId = index + 1;
      const running: RunningProgram = {
        programId,
        kind: spec.kind,
        dataRegion,
        program: factory.create(this.contextFor(programId, spec.kind, dataRegion), spec.params),
      };
      this.programs.set(programId, running);
    });
    this.resumeClock(0);
    for (const running of this.programs.values()) this.dispatch(running, (p) => p.start());
    this.afterEvent();
  }

  /** Rebuilds the kernel on the target from a `GuestState`; call `resume()` afterwards. */
  restore(state: GuestState): void {
    if (state.kernel.channels !== undefined)
      this.components.carrier?.loadState(state.kernel.channels);
    const savedNet = state.kernel.net as NetstackState | undefined;
    if (savedNet && this.components.net)
      this.netstack = Netstack.restore(this.netComponents(), savedNet);
    const savedCache = state.kernel.pagecache as PageCacheState | undefined;
    if (savedCache) {
      const { memory, disk } = this.components;
      if (!disk) {
        throw new TestbedError(
          'GUEST_NO_DISK',
          'the domain had a disk on its source host, but this host has no --storage: give it the same shared storage',
        );
      }
      this.pageCache = PageCache.restore(memory, memory.region('pagecache'), disk, savedCache);
    }
    for (const saved of state.programs) {
      const dataRegion: Region = { name: 'program', ...saved.dataRegion };
      const context = this.contextFor(saved.programId, saved.kind, dataRegion);
      this.programs.set(saved.programId, {
        programId: saved.programId,
        kind: saved.kind,
        dataRegion,
        program: this.factory(saved.kind).restore(context, saved.state),
      });
    }
    for (const timer of state.timers) this.timers.add({ ...timer, handle: null });
    this.guestTimeAtResume = state.guestTimeMs;
  }

  /** Stops between events and returns the state to migrate. */
  pause(): GuestState {
    if (this.phase === 'running') {
      this.guestTimeAtResume = this.guestNowMs();
      this.phase = 'paused';
      for (const timer of this.timers) {
        timer.handle?.cancel();
        timer.handle = null;
      }
      this.netTimer?.cancel();
      this.netTimer = null;
    }
    return this.snapshot();
  }

  /** Continues after a pause (on the source after a failed migration, or on the target). */
  resume(): void {
    if (this.phase !== 'paused') return;
    this.resumeClock(this.guestTimeAtResume);
    for (const timer of this.timers) this.arm(timer);
    // Frames may have been dropped while we were paused: retransmit what is unconfirmed.
    this.netstack?.rewindAll(null);
    this.afterEvent();
  }

  halt(): void {
    this.pause();
    this.phase = 'halted';
  }

  snapshot(): GuestState {
    return {
      version: 1,
      guestTimeMs: this.guestNowMs(),
      programs: [...this.programs.values()].map((running) => ({
        programId: running.programId,
        kind: running.kind,
        dataRegion: {
          firstPage: running.dataRegion.firstPage,
          pageCount: running.dataRegion.pageCount,
        },
        state: running.program.state,
      })),
      timers: [...this.timers].map(({ programId, tag, dueGuestMs }) => ({
        programId,
        tag,
        dueGuestMs,
      })),
      kernel: {
        ...(this.netstack ? { net: this.netstack.state } : {}),
        ...(this.pageCache ? { pagecache: this.pageCache.state } : {}),
        ...(this.components.carrier ? { channels: this.components.carrier.saveState() } : {}),
      },
    };
  }

  programStats(): { programId: number; kind: string; stats: Record<string, unknown> }[] {
    return [...this.programs.values()].map((running) => ({
      programId: running.programId,
      kind: running.kind,
      stats: running.program.stats(),
    }));
  }

  private resumeClock(guestTimeMs: number): void {
    this.guestTimeAtResume = guestTimeMs;
    this.realTimeAtResume = this.components.clock.nowMs();
    this.phase = 'running';
  }

  private factory(kind: string): ProgramFactory {
    const factory = this.components.factories.get(kind);
    if (!factory) {
      const known = [...this.components.factories.keys()].join(', ');
      throw new TestbedError(
        'GUEST_UNKNOWN_PROGRAM',
        `no guest program '${kind}' (known: ${known})`,
      );
    }
    return factory;
  }

  private contextFor(programId: number, kind: string, dataRegion: Region): ProgramContext {
    return {
      memory: this.components.memory,
      dataRegion,
      nowMs: () => this.guestNowMs(),
      setTimer: (delayMs, tag) => {
        const timer: PendingTimer = {
          programId,
          tag,
          dueGuestMs: this.guestNowMs() + Math.max(0, delayMs),
          handle: null,
        };
        this.timers.add(timer);
        if (this.phase === 'running') this.arm(timer);
      },
      cancelTimer: (tag) => {
        for (const timer of this.timers) {
          if (timer.programId === programId && timer.tag === tag) {
            timer.handle?.cancel();
            this.timers.delete(timer);
          }
        }
      },
      log: (message) => this.components.log(`${kind}#${programId}: ${message}`),
      net: this.netstack ? this.netstack.netFor(programId) : NO_NETWORK,
      files: this.pageCache ?? NO_FILES,
    };
  }

  private arm(timer: PendingTimer): void {
    const delayMs = timer.dueGuestMs - this.guestNowMs();
    timer.handle = this.components.clock.setTimer(delayMs, () => {
      timer.handle = null;
      this.timers.delete(timer);
      const running = this.programs.get(timer.programId);
      if (running && this.phase === 'running') {
        this.dispatch(running, (p) => p.onTimer(timer.tag));
        this.afterEvent();
      }
    });
  }

  private armNetTimer(dueMs: number | null): void {
    this.netTimer?.cancel();
    this.netTimer = null;
    if (dueMs === null || this.phase !== 'running') return;
    this.netTimer = this.components.clock.setTimer(dueMs - this.guestNowMs(), () => {
      this.netTimer = null;
      if (this.phase === 'running') this.afterEvent();
    });
  }

  /**
   * After every guest event: let the network stack move frames (once per event, so frames are
   * batched), then deliver the socket events it produced, each a guest event of its own, and
   * poll again since handlers write and read. Bounded, so Dom0's messages (a pause) get a turn.
   */
  private afterEvent(): void {
    const stack = this.netstack;
    if (!stack || this.polling || this.phase !== 'running') return;
    this.polling = true;
    try {
      const startMs = this.components.clock.nowMs();
      for (;;) {
        stack.poll();
        if (this.socketEvents.length === 0 || this.phase !== 'running') break;
        for (const { programId, event } of this.socketEvents.splice(0)) {
          const running = this.programs.get(programId);
          if (running && this.phase === 'running')
            this.dispatch(running, (p) => p.onSocket?.(event));
        }
        if (this.components.clock.nowMs() - startMs > POLL_BUDGET_MS) {
          this.armNetTimer(this.guestNowMs());
          break;
        }
      }
    } finally {
      this.polling = false;
    }
  }

  /** Runs one event of one program; a throwing program halts the domain, not the host. */
  private dispatch(running: RunningProgram, event: (program: GuestProgram) => void): void {
    try {
      event(running.program);
    } catch (error) {
      this.halt();
      this.components.onCrash(
        new TestbedError(
          'GUEST_PROGRAM_CRASHED',
          `guest program ${running.kind}#${running.programId} threw: ${(error as Error).message}`,
          { cause: error },
        ),
      );
    }
  }
}

/** The `net` of a domain without networking: every call says so. */
export const NO_NETWORK: GuestNet = {
  ip: null,
  listen: noNetwork,
  unlisten: noNetwork,
  connect: noNetwork,
  write: noNetwork,
  read: noNetwork,
  end: noNetwork,
  close: noNetwork,
  info: noNetwork,
};

function noNetwork(): never {
  throw new NetError('EHOSTUNREACH', 'this domain has no network (create it with an IP address)');
}
