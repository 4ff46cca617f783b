/**
 * An NMON-like link sampler: bytes per traffic class per fixed interval, for the paper's
 * bandwidth-over-time figures.
 *
 * Method. Bytes are counted where they happen: the host's `EgressShaper` calls `record` on
 * every write. Each record lands in the interval `floor((now - start) / intervalMs)` read from
 * the clock at the moment of the call, so a late timer never moves bytes into the wrong
 * interval. The timer only closes intervals on time (so `series()` is current and idle
 * intervals appear as zero rows); it is unref'd so a sampler never keeps a process alive.
 * `stop()` closes the partial last interval with its real length.
 *
 * Goals: exact sums (the series adds up to what was recorded while running), bounded memory.
 * Non-goals: receive-side counting (each host samples its own egress), per-socket rows.
 */
import assert from 'node:assert/strict';
import type { Clock, TimerHandle } from '../core/clock.ts';
import { type EgressRecorder, emptyTrafficCounts, type TrafficClass } from './shaper.ts';

/** The sampling interval when none is given (ms); NMON's finest usual setting is 1 s. */
export const SAMPLE_INTERVAL_MS_DEFAULT = 100;

/**
 * The most samples one sampler keeps. At the default 100 ms that is 2.8 hours of series, far
 * beyond one scenario (a migration lasts seconds), at about 200 bytes a sample (20 MB). Past
 * it, new intervals are dropped and counted in `droppedSampleCount`, like NMON's fixed
 * snapshot count: the start of a run, where the migration is, is the part to keep.
 */
export const SAMPLE_COUNT_MAX = 100_000;

/** One interval of the series. */
export interface LinkSample {
  /** Start of the interval, relative to `start()` (ms). */
  tMs: number;
  /**
   * Length of the interval (ms); shorter than the interval only for the last one (0 only when
   * `stop()` came at the instant of `start()`, and then the rates are 0).
   */
  intervalMs: number;
  /** Bytes sent in the interval per traffic class (bytes). */
  bytes: Record<TrafficClass, number>;
  /** Mean rate over the interval per traffic class (bytes per second). */
  bytesPerSec: Record<TrafficClass, number>;
}

/** Injected dependencies of a `LinkSampler`. */
export interface LinkSamplerComponents {
  /** Times the intervals. */
  clock: Clock;
}

/** Options of a `LinkSampler`. */
export interface LinkSamplerInit {
  /**
   * The sampling interval (ms); above zero.
   * @default 100 (`SAMPLE_INTERVAL_MS_DEFAULT`)
   */
  intervalMs?: number;
  /**
   * The most samples kept; later intervals are dropped and counted.
   * @default 100,000 (`SAMPLE_COUNT_MAX`)
   */
  sampleCountMax?: number;
}

/** Samples a host's egress per traffic class; attach it as `EgressShaper`'s `sampler`. */
export class LinkSampler implements EgressRecorder {
  /** The sampling interval (ms). */
  readonly intervalMs: number;
  private readonly clock: Clock;
  private readonly sampleCountMax: number;
  private samples: LinkSample[] = [];
  private dropped = 0;
  private running = false;
  private startMs = 0;
  /** Index of the open interval since `start()`. */
  private intervalIndex = 0;
  private pendingBytes = emptyTrafficCounts();
  private timer: TimerHandle | null = null;

  constructor(components: LinkSamplerComponents, init: LinkSamplerInit = {}) {
    this.clock = components.clock;
    this.intervalMs = init.intervalMs ?? SAMPLE_INTERVAL_MS_DEFAULT;
    this.sampleCountMax = init.sampleCountMax ?? SAMPLE_COUNT_MAX;
    assert(
      Number.isFinite(this.intervalMs) && this.intervalMs > 0,
      `intervalMs must be a finite time above zero, got ${this.intervalMs}`,
    );
    assert(
      Number.isInteger(this.sampleCountMax) && this.sampleCountMax > 0,
      `sampleCountMax must be a positive integer, got ${this.sampleCountMax}`,
    );
  }

  /** True between `start()` and `stop()`. */
  get isRunning(): boolean {
    return this.running;
  }

  /** Intervals closed after the series reached its cap (they are not in `series()`). */
  get droppedSampleCount(): number {
    return this.dropped;
  }

  /** Counts `bytes` of `trafficClass` now; ignored unless running (there is no time base). */
  record(trafficClass: TrafficClass, bytes: number): void {
    if (!this.running) return;
    assert(bytes >= 0, `bytes must not be negative, got ${bytes}`);
    this.advance(this.clock.nowMs());
    this.pendingBytes[trafficClass] += bytes;
  }

  /** Starts a new series at the clock's current time (a previous series is discarded). */
  start(): void {
    assert(!this.running, 'LinkSampler.start() called twice without stop()');
    this.running = true;
    this.samples = [];
    this.dropped = 0;
    this.startMs = this.clock.nowMs();
    this.intervalIndex = 0;
    this.pendingBytes = emptyTrafficCounts();
    this.armTimer(this.startMs);
  }

  /** Closes every interval up to now, including the partial last one, and stops the timer. */
  stop(): void {
    if (!this.running) return;
    const nowMs = this.clock.nowMs();
    this.advance(nowMs);
    this.timer?.cancel();
    this.timer = null;
    this.running = false;
    const tailStartMs = this.startMs + this.intervalIndex * this.intervalMs;
    const tailMs = Math.max(0, nowMs - tailStartMs);
    const tailBytes = sumBytes(this.pendingBytes);
    if (tailMs > 0 || (tailBytes > 0 && this.samples.length === 0)) {
      this.push(this.intervalIndex, tailMs, this.pendingBytes);
    } else if (tailBytes > 0) {
      // Bytes at the very instant of stop() in a zero-length interval: fold them into the
      // previous interval so no byte is lost and no rate divides by zero.
      this.foldIntoLast(this.pendingBytes);
    }
    this.pendingBytes = emptyTrafficCounts();
  }

  /** The closed intervals, oldest first (a copy). While running, the open one is left out. */
  series(): LinkSample[] {
    return this.samples.map((sample) => ({
      ...sample,
      bytes: { ...sample.bytes },
      bytesPerSec: { ...sample.bytesPerSec },
    }));
  }

  /** Closes every interval that ended at or before `nowMs`, with zero rows for idle ones. */
  private advance(nowMs: number): void {
    const currentIndex = Math.floor((nowMs - this.startMs) / this.intervalMs);
    while (this.intervalIndex < currentIndex) {
      this.push(this.intervalIndex, this.intervalMs, this.pendingBytes);
      this.pendingBytes = emptyTrafficCounts();
      this.intervalIndex++;
    }
  }

  private armTimer(nowMs: number): void {
    const nextBoundaryMs = this.startMs + (this.intervalIndex + 1) * this.intervalMs;
    this.timer = this.clock.setTimer(
      nextBoundaryMs - nowMs,
      () => {
        if (!this.running) return;
        const firedMs = this.clock.nowMs();
        this.advance(firedMs);
        this.armTimer(firedMs);
      },
      // A sampler observes; it must never be the reason a host process stays up.
      { unref: true },
    );
  }

  private push(index: number, intervalMs: number, bytes: Record<TrafficClass, number>): void {
    if (this.samples.length >= this.sampleCountMax) {
      this.dropped++;
      return;
    }
    this.samples.push({
      tMs: index * this.intervalMs,
      intervalMs,
      bytes,
      bytesPerSec: ratesOf(bytes, intervalMs),
    });
  }

  private foldIntoLast(bytes: Record<TrafficClass, number>): void {
    const last = this.samples.at(-1);
    // After the cap, the last kept sample is not the previous interval.
    if (last === undefined || this.dropped > 0) {
      this.dropped++;
      return;
    }
    for (const key of Object.keys(bytes) as TrafficClass[]) last.bytes[key] += bytes[key];
    last.bytesPerSec = ratesOf(last.bytes, last.intervalMs);
  }
}

function ratesOf(
  bytes: Record<TrafficClass, number>,
  intervalMs: number,
): Record<TrafficClass, number> {
  const rates = emptyTrafficCounts();
  // Only a series started and stopped in the same instant has a zero-length interval.
  if (intervalMs === 0) return rates;
  for (const key of Object.keys(bytes) as TrafficClass[]) {
    rates[key] = (bytes[key] * 1000) / intervalMs;
  }
  return rates;
}

function sumBytes(bytes: Record<TrafficClass, number>): number {
  let total = 0;
  for (const value of Object.values(bytes)) total += value;
  return total;
}
