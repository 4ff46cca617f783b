/**
 * Goal: every recorded byte lands in the interval of the moment it was recorded, the series
 * sums to what was recorded, idle intervals show as zero rows, `stop()` flushes the partial
 * last interval, memory stays capped, and the timer never keeps the process alive.
 *
 * Method: a manual clock whose timers fire only when the test advances time; a model (bytes
 * bucketed by `floor((t - start) / interval)`) checked by fast-check against the series.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Clock, TimerHandle } from '../core/clock.ts';
import { LinkSampler } from './sampler.ts';
import { emptyTrafficCounts, TRAFFIC_CLASSES, type TrafficClass } from './shaper.ts';

interface ManualTimer {
  dueMs: number;
  callback: () => void;
  unref: boolean;
  cancelled: boolean;
}

/** A clock that moves only in `advance`, firing due timers in order on the way. */
class ManualClock implements Clock {
  private currentMs: number;
  private timers: ManualTimer[] = [];

  constructor(startMs = 0) {
    this.currentMs = startMs;
  }

  nowMs(): number {
    return this.currentMs;
  }

  setTimer(delayMs: number, callback: () => void, options?: { unref?: boolean }): TimerHandle {
    const timer: ManualTimer = {
      dueMs: this.currentMs + Math.max(0, delayMs),
      callback,
      unref: options?.unref ?? false,
      cancelled: false,
    };
    this.timers.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  }

  /** Timers armed and neither fired nor cancelled. */
  pendingTimers(): ManualTimer[] {
    return this.timers.filter((timer) => !timer.cancelled);
  }

  advance(deltaMs: number): void {
    const targetMs = this.currentMs + deltaMs;
    for (;;) {
      const due = this.pendingTimers()
        .filter((timer) => timer.dueMs <= targetMs)
        .sort((a, b) => a.dueMs - b.dueMs)[0];
      if (due === undefined) break;
      this.currentMs = due.dueMs;
      due.cancelled = true;
      due.callback();
    }
    this.currentMs = targetMs;
  }
}

function totalsOf(sampler: LinkSampler): Record<TrafficClass, number> {
  const totals = emptyTrafficCounts();
  for (const sample of sampler.series()) {
    for (const trafficClass of TRAFFIC_CLASSES) totals[trafficClass] += sample.bytes[trafficClass];
  }
  return totals;
}

describe('LinkSampler', () => {
  it('puts bytes in the interval of their time, relative to start()', () => {
    const clock = new ManualClock(5_000);
    const sampler = new LinkSampler({ clock }, { intervalMs: 100 });
    sampler.start();
    sampler.record('migration', 1_000); // t = 0
    clock.advance(99.5);
    sampler.record('migration', 500); // t = 99.5, still the first interval
    clock.advance(0.5);
    sampler.record('intervm', 70); // t = 100, the second interval
    clock.advance(250);
    sampler.record('control', 3); // t = 350, the fourth interval
    clock.advance(30);
    sampler.stop(); // t = 380: a partial fourth interval of 80 ms

    const series = sampler.series();
    assert.deepEqual(
      series.map((sample) => [sample.tMs, sample.intervalMs]),
      [
        [0, 100],
        [100, 100],
        [200, 100],
        [300, 80],
      ],
    );
    assert.deepEqual(series[0]!.bytes, { ...emptyTrafficCounts(), migration: 1_500 });
    assert.equal(series[0]!.bytesPerSec.migration, 15_000);
    assert.deepEqual(series[1]!.bytes, { ...emptyTrafficCounts(), intervm: 70 });
    assert.deepEqual(series[2]!.bytes, emptyTrafficCounts());
    assert.deepEqual(series[3]!.bytes, { ...emptyTrafficCounts(), control: 3 });
    assert.equal(series[3]!.bytesPerSec.control, 3 / 0.08);
  });

  it('sums to the bytes recorded, each in its model interval, for random traffic', () => {
    const event = fc.record({
      delayMs: fc.integer({ min: 0, max: 250 }),
      trafficClass: fc.constantFrom(...TRAFFIC_CLASSES),
      bytes: fc.integer({ min: 0, max: 10_000_000 }),
    });
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 200 }),
        fc.array(event, { maxLength: 60 }),
        fc.integer({ min: 0, max: 300 }),
        (intervalMs, events, tailMs) => {
          const clock = new ManualClock(1_234);
          const sampler = new LinkSampler({ clock }, { intervalMs });
          sampler.start();
          const model = new Map<number, Record<TrafficClass, number>>();
          let elapsedMs = 0;
          for (const { delayMs, trafficClass, bytes } of events) {
            clock.advance(delayMs);
            elapsedMs += delayMs;
            sampler.record(trafficClass, bytes);
            const index = Math.floor(elapsedMs / intervalMs);
            const counts = model.get(index) ?? emptyTrafficCounts();
            counts[trafficClass] += bytes;
            model.set(index, counts);
          }
          clock.advance(tailMs);
          elapsedMs += tailMs;
          sampler.stop();

          const series = sampler.series();
          // Every interval up to stop() is present, the last one possibly partial; a series
          // stopped at the instant it started has a row only if something was recorded.
          const recordedBytes = events.reduce((sum, { bytes }) => sum + bytes, 0);
          const expectedLength =
            elapsedMs === 0 ? Number(recordedBytes > 0) : Math.ceil(elapsedMs / intervalMs);
          assert.equal(series.length, expectedLength);
          const expectedBytes = series.map(() => emptyTrafficCounts());
          for (const [index, counts] of model) {
            // Bytes at the instant of stop() on a boundary fold into the interval before.
            const row = expectedBytes[Math.min(index, series.length - 1)] ?? emptyTrafficCounts();
            for (const trafficClass of TRAFFIC_CLASSES) row[trafficClass] += counts[trafficClass];
          }
          for (const [index, sample] of series.entries()) {
            assert.equal(sample.tMs, index * intervalMs);
            if (index < series.length - 1) assert.equal(sample.intervalMs, intervalMs);
            assert.deepEqual(sample.bytes, expectedBytes[index]);
          }
          assert.equal(clock.pendingTimers().length, 0);
        },
      ),
      { seed: 424_242, numRuns: 300 },
    );
  });

  it('closes idle intervals on its own timer, which never keeps the process alive', () => {
    const clock = new ManualClock();
    const sampler = new LinkSampler({ clock }, {});
    assert.equal(sampler.intervalMs, 100);
    sampler.start();
    const timers = clock.pendingTimers();
    assert.equal(timers.length, 1);
    assert.ok(timers.every((timer) => timer.unref));
    clock.advance(350);
    assert.equal(sampler.series().length, 3);
    assert.ok(clock.pendingTimers().every((timer) => timer.unref));
    sampler.stop();
    assert.equal(sampler.series().length, 4);
    assert.equal(clock.pendingTimers().length, 0);
  });

  it('keeps at most sampleCountMax samples and counts the dropped ones', () => {
    const clock = new ManualClock();
    const sampler = new LinkSampler({ clock }, { intervalMs: 10, sampleCountMax: 3 });
    sampler.start();
    clock.advance(100);
    sampler.stop();
    assert.equal(sampler.series().length, 3);
    assert.equal(sampler.droppedSampleCount, 7);
  });

  it('ignores records while stopped, and start() begins a new series', () => {
    const clock = new ManualClock();
    const sampler = new LinkSampler({ clock }, { intervalMs: 10 });
    sampler.record('migration', 99);
    sampler.start();
    clock.advance(25);
    sampler.stop();
    sampler.record('migration', 99);
    assert.deepEqual(totalsOf(sampler), emptyTrafficCounts());
    sampler.start();
    sampler.record('external', 5);
    sampler.stop();
    assert.deepEqual(
      sampler.series().map((sample) => [sample.intervalMs, sample.bytes.external]),
      [[0, 5]],
    );
  });
});
