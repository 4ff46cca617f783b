/**
 * Goal: the dirtier writes exactly `floor(rate * elapsed)` pages, only inside its working set,
 * through log-dirty; it fills its working set at start, idles at rate 0, rejects bad parameters,
 * and resumes after a structured clone of its state exactly where an unbroken run would be.
 * Method: a fake guest kernel (real `GuestMemory`, a manual clock, a timer list fired by hand,
 * optionally late) and a replay of the page sequence with a `PagePicker` of the same seed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../core/units.ts';
import { NO_FILES } from '../guest/files.ts';
import { NO_NETWORK } from '../guest/kernel.ts';
import type { GuestProgram, ProgramContext } from '../guest/program.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout, type Region } from '../memory/layout.ts';
import {
  DIRTIER_TICK_TAG,
  type DirtierParams,
  type DirtierState,
  dirtierFactory,
  resolveDirtierParams,
  STAMP_SIZE_BYTES,
  TICK_CREDIT_MS_MAX,
} from './dirtier.ts';
import { createPagePicker, PagePicker } from './page-picker.ts';

/** 4096 pages: the program region is pages 2560..4095 (1536 pages). */
const DOMAIN_PAGES = 4096;

interface PendingTimer {
  dueMs: number;
  tag: string;
}

/** A guest kernel reduced to what a program sees: memory, a manual clock and timers. */
class FakeKernel {
  readonly memory: GuestMemory;
  readonly dataRegion: Region;
  nowMs: number;
  timers: PendingTimer[] = [];
  program: GuestProgram<DirtierState> | undefined;

  constructor(memory = GuestMemory.create(defaultLayout(DOMAIN_PAGES)), nowMs = 0) {
    this.memory = memory;
    this.dataRegion = memory.region('program');
    this.nowMs = nowMs;
  }

  context(): ProgramContext {
    return {
      memory: this.memory,
      dataRegion: this.dataRegion,
      nowMs: () => this.nowMs,
      setTimer: (delayMs, tag) => this.timers.push({ dueMs: this.nowMs + delayMs, tag }),
      cancelTimer: (tag) => {
        this.timers = this.timers.filter((timer) => timer.tag !== tag);
      },
      log: () => {},
      net: NO_NETWORK,
      files: NO_FILES,
    };
  }

  start(params: DirtierParams): GuestProgram<DirtierState> {
    this.program = dirtierFactory.create(this.context(), params);
    this.program.start();
    return this.program;
  }

  /**
   * Fires due timers in order until `untilMs`, each `lateMs()` after it is due (a busy event
   * loop), then sets the clock to `untilMs`. `afterEach` runs after every fired timer.
   */
  runUntil(untilMs: number, lateMs: () => number = () => 0, afterEach: () => void = () => {}) {
    for (;;) {
      this.timers.sort((a, b) => a.dueMs - b.dueMs);
      const timer = this.timers[0];
      if (timer === undefined || timer.dueMs > untilMs) break;
      this.timers.shift();
      this.nowMs = Math.min(untilMs, Math.max(this.nowMs, timer.dueMs + lateMs()));
      this.program!.onTimer(timer.tag);
      afterEach();
    }
    this.nowMs = Math.max(this.nowMs, untilMs);
  }
}

/** The absolute pages the dirtier must have written: a replay of its picker. */
function expectedPages(kernel: FakeKernel, state: DirtierState): Set<number> {
  const picker = new PagePicker(createPagePicker(state.params, state.params.seed));
  const pages = new Set<number>();
  for (let i = 0; i < state.pagesWritten; i++)
    pages.add(kernel.dataRegion.firstPage + picker.next());
  return pages;
}

/** True when every byte of `bytes` (a whole number of pages) is zero; fast on 16 MiB. */
function isZero(bytes: Uint8Array): boolean {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

function isZeroPage(memory: GuestMemory, page: number): boolean {
  return isZero(memory.page(page));
}

describe('dirtier', () => {
  it('fill random makes every working-set page non-zero and leaves the rest alone', () => {
    const kernel = new FakeKernel();
    kernel.memory.setLogDirty(true);
    kernel.start({ dirtyRatePagesPerSec: 0, workingSetPages: 100 });
    const first = kernel.dataRegion.firstPage;
    for (let page = first; page < first + 100; page++) {
      assert.ok(!isZeroPage(kernel.memory, page), `page ${page} is filled`);
    }
    assert.ok(isZeroPage(kernel.memory, first + 100));
    const dirty = [...kernel.memory.peekAndClean()];
    assert.deepEqual(
      dirty,
      Array.from({ length: 100 }, (_, i) => first + i),
      'fill is logged',
    );
  });

  it('fill zero writes nothing', () => {
    const kernel = new FakeKernel();
    kernel.memory.setLogDirty(true);
    kernel.start({ dirtyRatePagesPerSec: 0, fill: 'zero' });
    assert.equal(kernel.memory.peekDirtyCount(), 0);
    assert.ok(isZero(kernel.memory.bytes));
  });

  it('an idle dirtier arms no timer and dirties nothing after its fill', () => {
    const kernel = new FakeKernel();
    const program = kernel.start({ dirtyRatePagesPerSec: 0 });
    kernel.memory.setLogDirty(true);
    assert.deepEqual(kernel.timers, []);
    kernel.runUntil(10_000);
    assert.equal(kernel.memory.peekDirtyCount(), 0);
    assert.equal(program.stats().pagesWritten, 0);
  });

  it('writes floor(rate x elapsed) pages, the replayed ones, inside its working set', () => {
    const kernel = new FakeKernel(undefined, 5000);
    const program = kernel.start({
      dirtyRatePagesPerSec: 1234,
      workingSetPages: 1000,
      tickMs: 7,
      seed: 99,
    });
    kernel.memory.setLogDirty(true);
    kernel.runUntil(5000 + 1003);
    const state = program.state;
    // The last tick ran at 5000 + 7 * 143 = 6001 ms.
    assert.equal(state.ticks, 143);
    assert.equal(state.pagesWritten, Math.floor((1234 * 1001) / 1000));
    assert.equal(state.carryMilliPages, (1234 * 1001) % 1000);
    const dirty = kernel.memory.peekAndClean();
    assert.deepEqual(new Set(dirty), expectedPages(kernel, state));
    const first = kernel.dataRegion.firstPage;
    assert.ok(dirty.every((page) => page >= first && page < first + 1000));
    assert.deepEqual(program.stats(), {
      pagesWritten: 1235,
      ticks: 143,
      dirtyRatePagesPerSec: 1234,
      pattern: 'uniform',
      workingSetPages: 1000,
      skippedMs: 0,
    });
  });

  it('keeps the exact long-run rate whatever the ticks lateness', () => {
    const params = fc.record({
      dirtyRatePagesPerSec: fc.integer({ min: 0, max: 20_000 }),
      tickMs: fc.integer({ min: 1, max: 50 }),
      pattern: fc.constantFrom('sequential', 'uniform', 'hotcold', 'zipf' as const),
      seed: fc.nat({ max: 0xffff_ffff }),
    });
    const sharedMemory = GuestMemory.create(defaultLayout(DOMAIN_PAGES));
    fc.assert(
      fc.property(params, fc.integer({ min: 0, max: 40 }), fc.nat(), (p, lateMax, lateSeed) => {
        // Memory is shared by the runs: first touch of fresh memory dominates otherwise.
        const kernel = new FakeKernel(sharedMemory, 100);
        const program = kernel.start({ ...p, fill: 'zero' });
        let late = lateSeed;
        const lateMs = (): number => {
          late = (Math.imul(late, 1103515245) + 12345) >>> 0;
          return late % (lateMax + 1);
        };
        kernel.runUntil(1100, lateMs, () => {
          const elapsedMs = kernel.nowMs - 100;
          assert.equal(
            program.state.pagesWritten,
            Math.floor((p.dirtyRatePagesPerSec * elapsedMs) / 1000),
          );
        });
        if (p.dirtyRatePagesPerSec === 0) assert.equal(program.state.ticks, 0);
        else assert.ok(program.state.ticks > 0);
        assert.equal(program.state.skippedMs, 0);
      }),
      { seed: 31337, numRuns: 60 },
    );
  });

  it('keeps the rate within one page with fractional times and rates', () => {
    const kernel = new FakeKernel(undefined, 0.25);
    const program = kernel.start({ dirtyRatePagesPerSec: 333.3, tickMs: 3, fill: 'zero' });
    kernel.runUntil(10_000.25, () => 0.37);
    const expected = (333.3 * (kernel.nowMs - 0.25)) / 1000;
    assert.ok(
      Math.abs(program.state.pagesWritten - expected) <= 1,
      `${program.state.pagesWritten}`,
    );
    assert.ok(program.state.carryMilliPages >= 0 && program.state.carryMilliPages < 1000);
  });

  it('credits at most one second to a late tick and counts the rest as skipped', () => {
    const kernel = new FakeKernel();
    const program = kernel.start({ dirtyRatePagesPerSec: 100, tickMs: 10, fill: 'zero' });
    // The tick due at 10 ms fires at 5010 ms.
    kernel.timers = [];
    kernel.nowMs = 5010;
    program.onTimer(DIRTIER_TICK_TAG);
    assert.equal(program.state.ticks, 1);
    assert.equal(program.state.pagesWritten, (100 * TICK_CREDIT_MS_MAX) / 1000);
    assert.equal(program.state.skippedMs, 5010 - TICK_CREDIT_MS_MAX);
  });

  it('changes the content of a page on every write, with a stamp naming the page', () => {
    const kernel = new FakeKernel();
    kernel.start({ dirtyRatePagesPerSec: 100, workingSetPages: 1, tickMs: 10, fill: 'zero' });
    const page = kernel.dataRegion.firstPage;
    const snapshots: Uint8Array[] = [];
    kernel.runUntil(50, undefined, () => snapshots.push(kernel.memory.read(page * 4096, 4096)));
    assert.equal(snapshots.length, 5);
    for (let i = 1; i < snapshots.length; i++) assert.notDeepEqual(snapshots[i], snapshots[i - 1]);
    // Write n (from 0) lands in slot n: counter n, page 0, then 'DIRT'.
    const view = new DataView(snapshots[4]!.buffer);
    const offset = 4 * STAMP_SIZE_BYTES;
    assert.deepEqual(
      [0, 4, 8, 12].map((at) => view.getUint32(offset + at, true)),
      [4, 0, 0, 0x54524944],
    );
  });

  it('resumes after a structured clone of its state exactly like an unbroken run', () => {
    for (const pattern of ['sequential', 'uniform', 'hotcold', 'zipf'] as const) {
      const params: DirtierParams = { dirtyRatePagesPerSec: 20_000, pattern, seed: 5, tickMs: 10 };
      const unbroken = new FakeKernel();
      unbroken.start(params);
      unbroken.runUntil(500);
      unbroken.memory.setLogDirty(true);
      unbroken.runUntil(1000);

      // Migrate at 500 ms: copy memory, clone state and timers, restore on the target.
      const source = new FakeKernel();
      source.start(params);
      source.runUntil(500);
      const target = new FakeKernel(undefined, source.nowMs);
      target.memory.bytes.set(source.memory.bytes);
      const savedState: DirtierState = structuredClone(source.program!.state);
      target.timers = structuredClone(source.timers);
      target.program = dirtierFactory.restore(target.context(), savedState);
      assert.equal(target.timers.length, 1, 'restore arms no timer of its own');
      target.memory.setLogDirty(true);
      target.runUntil(1000);

      assert.deepEqual(target.program.state, unbroken.program!.state, pattern);
      assert.deepEqual(target.memory.peekAndClean(), unbroken.memory.peekAndClean(), pattern);
      assert.ok(Buffer.from(target.memory.bytes).equals(Buffer.from(unbroken.memory.bytes)));
    }
  });

  it('rejects bad parameters with an InputError that names them', () => {
    const cases: Array<[DirtierParams, RegExp]> = [
      [{ dirtyRatePagesPerSec: -1 }, /dirtyRatePagesPerSec must be a finite number >= 0; got -1/],
      [{ dirtyRatePagesPerSec: Number.NaN }, /dirtyRatePagesPerSec .*got NaN/],
      [{ dirtyRatePagesPerSec: Number.POSITIVE_INFINITY }, /dirtyRatePagesPerSec .*got Infinity/],
      [
        { dirtyRatePagesPerSec: 1, workingSetPages: 1537 },
        /workingSetPages must be an integer in \[1, 1536\] \(the program's data region\); got 1537/,
      ],
      [{ dirtyRatePagesPerSec: 1, workingSetPages: 0 }, /workingSetPages .*got 0/],
      [{ dirtyRatePagesPerSec: 1, tickMs: 0 }, /tickMs must be in \[1, 1000\] ms; got 0/],
      [{ dirtyRatePagesPerSec: 1, tickMs: 1001 }, /tickMs .*got 1001/],
      [
        { dirtyRatePagesPerSec: 10_000_000, tickMs: 10 },
        /needs 100000 pages per tick, over the limit of 65536; use a shorter tickMs/,
      ],
      [{ dirtyRatePagesPerSec: 1, seed: 1.5 }, /seed must be an integer .*got 1\.5/],
      [{ dirtyRatePagesPerSec: 1, fill: 'ones' as 'zero' }, /fill must be 'random' or 'zero'/],
      [{ dirtyRatePagesPerSec: 1, pattern: 'burst' as 'zipf' }, /access pattern .*got burst/],
      [{ dirtyRatePagesPerSec: 1, hotFraction: 2 }, /hotFraction .*got 2/],
      [{ dirtyRatePagesPerSec: 1, dirtyRate: 5 } as DirtierParams, /unknown dirtier parameter/],
    ];
    const kernel = new FakeKernel();
    for (const [params, message] of cases) {
      assert.throws(
        () => dirtierFactory.create(kernel.context(), params),
        (error: unknown) => {
          assert.ok(error instanceof InputError, `${JSON.stringify(params)} gives an InputError`);
          assert.match(error.message, message);
          return true;
        },
      );
    }
  });

  it('refuses to restore onto a data region too small for its working set', () => {
    const source = new FakeKernel();
    const program = source.start({ dirtyRatePagesPerSec: 10, fill: 'zero' });
    const small = GuestMemory.create(defaultLayout(DOMAIN_PAGES, { kernel: 1536 }));
    const target = new FakeKernel(small);
    assert.throws(
      () => dirtierFactory.restore(target.context(), structuredClone(program.state)),
      InputError,
    );
  });

  it('fires only its tick timer', () => {
    const kernel = new FakeKernel();
    const program = kernel.start({ dirtyRatePagesPerSec: 10, fill: 'zero' });
    assert.deepEqual(kernel.timers, [{ dueMs: 10, tag: DIRTIER_TICK_TAG }]);
    assert.throws(() => program.onTimer('other'), /arms only 'tick' timers/);
    assert.equal(PAGE_SIZE_BYTES % STAMP_SIZE_BYTES, 0);
  });
});

describe('dirtier behaviours', () => {
  const region = { name: 'program' as const, firstPage: 0, pageCount: 1000 };
  it('a behaviour gives defaults that explicit parameters override', () => {
    const web = resolveDirtierParams({ behaviour: 'web' }, region);
    assert.equal(web.dirtyRatePagesPerSec, 2000, 'web: 2000 pages/s');
    assert.equal(web.pattern, 'hotcold', 'web: a hot set');
    assert.equal(web.hotFraction, 0.05, 'web: 5 % hot');
    const slower = resolveDirtierParams({ behaviour: 'web', dirtyRatePagesPerSec: 10 }, region);
    assert.equal(slower.dirtyRatePagesPerSec, 10, 'an explicit rate wins');
    assert.equal(
      resolveDirtierParams({ behaviour: 'idle' }, region).dirtyRatePagesPerSec,
      0,
      'idle',
    );
    assert.equal(
      resolveDirtierParams({ behaviour: 'memory-bound' }, region).pattern,
      'uniform',
      'memory-bound writes everywhere',
    );
  });
  it('an unknown behaviour or a missing rate is refused', () => {
    assert.throws(
      () => resolveDirtierParams({ behaviour: 'gaming' as 'idle' }, region),
      /behaviour must be one of idle, web, memory-bound/,
      'unknown behaviour named',
    );
    assert.throws(
      () => resolveDirtierParams({}, region),
      /dirtyRatePagesPerSec must be a finite number/,
      'no rate and no behaviour',
    );
  });
});
