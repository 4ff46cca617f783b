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
import type { GuestState, SavedTimer } from './guest-state.ts';
import type { GuestProgram, ProgramContext, ProgramFactory } from './program.ts';

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
}

export class GuestKernel {
  private readonly components: GuestKernelComponents;
  private readonly programs = new Map<number, RunningProgram>();
  private readonly timers = new Set<PendingTimer>();
  private phase: KernelPhase = 'paused';
  /** Guest time = guestTimeAtResume + (clock.nowMs() - realTimeAtResume) while running. */
  private guestTimeAtResume = 0;
  private realTimeAtResume = 0;

  constructor(components: GuestKernelComponents) {
    this.components = components;
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
  }

  /** Rebuilds the kernel on the target from a `GuestState`; call `resume()` afterwards. */
  restore(state: GuestState): void {
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
    }
    return this.snapshot();
  }

  /** Continues after a pause (on the source after a failed migration, or on the target). */
  resume(): void {
    if (this.phase !== 'paused') return;
    this.resumeClock(this.guestTimeAtResume);
    for (const timer of this.timers) this.arm(timer);
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
      kernel: {},
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
      }
    });
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
