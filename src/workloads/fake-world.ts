/**
 * Test support (tests only): two fake domains over the in-memory `FakeNet` pair, each with real
 * `GuestMemory`, a timer list fired by hand and a shared manual clock, for unit tests of guest
 * programs (the streamer, netbench, and later the mail programs). Side a is the listening one.
 */

import { createFakeNetPair, type FakeNet, type FakeNetPair } from '../guest/fake-net.ts';
import { type GuestFiles, NO_FILES } from '../guest/files.ts';
import type {
  GuestProgram,
  ProgramContext,
  ProgramFactory,
  ProgramStats,
} from '../guest/program.ts';
import type { GuestNet, SocketEvent } from '../guest/socket-api.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout, type Region } from '../memory/layout.ts';

/** 4096 pages: the program region is pages 2560..4095 (1536 pages, 6 MiB). */
export const FAKE_DOMAIN_PAGES = 4096;

export interface PendingTimer {
  dueMs: number;
  tag: string;
}

export class FakeDomain<Params, State> {
  memory: GuestMemory;
  readonly dataRegion: Region;
  timers: PendingTimer[] = [];
  program: GuestProgram<State> | undefined;
  readonly logs: string[] = [];
  /** What the program calls; a test may wrap it (events still come from `fakeNet`). */
  net: GuestNet;
  /** Files of the program; a test may give it a page cache over a `MemoryDisk`. */
  files: GuestFiles = NO_FILES;

  constructor(
    readonly world: FakeWorld<Params, State>,
    readonly fakeNet: FakeNet,
  ) {
    this.memory = GuestMemory.create(defaultLayout(FAKE_DOMAIN_PAGES));
    this.dataRegion = this.memory.region('program');
    this.net = fakeNet;
  }

  context(): ProgramContext {
    return {
      memory: this.memory,
      dataRegion: this.dataRegion,
      nowMs: () => this.world.readClock(),
      setTimer: (delayMs, tag) => this.timers.push({ dueMs: this.world.nowMs + delayMs, tag }),
      cancelTimer: (tag) => {
        this.timers = this.timers.filter((timer) => timer.tag !== tag);
      },
      log: (message) => this.logs.push(message),
      net: this.net,
      files: this.files,
    };
  }

  start(params: Params): GuestProgram<State> {
    this.program = this.world.factory.create(this.context(), params);
    this.attach();
    this.program.start();
    return this.program;
  }

  /** Routes the net's events to the current program. */
  attach(): void {
    this.fakeNet.setHandler((event) => this.program!.onSocket!(event));
  }

  /**
   * A migration of this domain: its events are held while it is "paused" for `pauseMs`, then
   * memory is copied to a fresh `GuestMemory`, state and timers are structured-cloned, and the
   * program is restored there; the held events are delivered to it. Sockets stay in the net
   * (kernel state, restored by the kernel).
   */
  migrate(pair: FakeNetPair, pauseMs = 0): void {
    const held: SocketEvent[] = [];
    this.fakeNet.setHandler((event) => held.push(event));
    pair.pump();
    this.world.nowMs += pauseMs;
    const target = GuestMemory.create(defaultLayout(FAKE_DOMAIN_PAGES));
    target.bytes.set(this.memory.bytes);
    this.memory = target;
    const saved = structuredClone(this.program!.state);
    this.timers = structuredClone(this.timers);
    this.program = this.world.factory.restore(this.context(), saved);
    this.attach();
    for (const event of held) this.program.onSocket!(event);
  }

  get state(): State {
    return this.program!.state;
  }

  stats(): ProgramStats {
    return this.program!.stats();
  }
}

/** Two domains over a fake net pair, and a driver: pump, then fire the next timer. */
export class FakeWorld<Params, State> {
  nowMs = 0;
  readonly pair: FakeNetPair;
  readonly a: FakeDomain<Params, State>;
  readonly b: FakeDomain<Params, State>;

  /** `tickMs`: how far the clock moves on every reading (0: only timers move it). */
  constructor(
    readonly factory: ProgramFactory<Params, State>,
    init: { ipA: string; ipB: string; bufferBytes?: number; tickMs?: number },
  ) {
    this.tickMs = init.tickMs ?? 0;
    this.pair = createFakeNetPair({ ipA: init.ipA, ipB: init.ipB, bufferBytes: init.bufferBytes });
    this.a = new FakeDomain(this, this.pair.a);
    this.b = new FakeDomain(this, this.pair.b);
  }

  readonly tickMs: number;

  readClock(): number {
    this.nowMs += this.tickMs;
    return this.nowMs;
  }

  /** Pumps and fires due timers in order until nothing is left before `untilMs`. */
  run(untilMs = Number.POSITIVE_INFINITY): void {
    for (;;) {
      this.pair.pump();
      const next = this.nextTimer(untilMs);
      if (next === null) break;
      const [domain, timer] = next;
      domain.timers.splice(domain.timers.indexOf(timer), 1);
      this.nowMs = Math.max(this.nowMs, timer.dueMs);
      domain.program!.onTimer(timer.tag);
    }
    if (Number.isFinite(untilMs)) this.nowMs = Math.max(this.nowMs, untilMs);
  }

  private nextTimer(untilMs: number): [FakeDomain<Params, State>, PendingTimer] | null {
    let best: [FakeDomain<Params, State>, PendingTimer] | null = null;
    for (const domain of [this.a, this.b]) {
      for (const timer of domain.timers) {
        if (timer.dueMs > untilMs) continue;
        if (best === null || timer.dueMs < best[1].dueMs) best = [domain, timer];
      }
    }
    return best;
  }
}
