/**
 * The host NIC: egress shaping of every byte a host sends to another host.
 *
 * Purpose. This kernel has no netem (reference/machine-limits.md §5), so the physical link
 * of the paper (1 Gbit/s between PCs) is modelled in-process: every socket that leaves a host
 * (pre-copy migration streams, inter-VM frames, control) writes through the host's one
 * `EgressShaper`, which paces all of them together with one token bucket, like one NIC.
 *
 * Method.
 * - `TokenBucket` is pure arithmetic on a time the caller passes in. Tokens may go negative
 *   (debt): a large write is paced, never refused, and the debt tells the writer how long to
 *   wait. Several sockets drawing on one bucket share its rate in arrival order, one slice
 *   at a time.
 * - `EgressShaper.send` keeps one FIFO *lane* per socket, so overlapping sends on a socket
 *   keep their order. A lane cuts a chunk into slices of at most `SLICE_BYTES_MAX`, waits for
 *   tokens, waits for the socket's 'drain' when it is over its high-water mark, and writes.
 * - A token wait that ends late (the event loop was descheduled) is credited to the next
 *   take, up to `LATE_CREDIT_MS_MAX`, so a backlogged link keeps its rate on a busy machine:
 *   1 GiB at 1 Gbit/s under load went from 0.90-0.97 to 0.99 Gbit/s.
 * - Latency, when asked for, is a delay line per lane: a slice leaves the NIC when its tokens
 *   allow, then reaches the socket `latencyMs` later from a timer queue. Sends do not wait for
 *   delivery, so latency does not cut throughput (the line holds up to the bandwidth-delay
 *   product, bounded by `DELAY_LINE_BYTES_MAX`).
 * - Unlimited and no latency: a send is one `socket.write` of the caller's bytes, no slicing,
 *   no copy, no timer; only backpressure. The migration sender must reach at least 0.8 of raw
 *   loopback TCP (about 1.4 GB/s) on this path.
 *
 * Zero copy. Slices are `subarray` views of the caller's chunk and `socket.write` does not
 * copy a Uint8Array either, so the caller hands ownership of `chunk` to the shaper: it must
 * not modify the bytes after calling `send` (allocate a fresh buffer per record).
 *
 * Counting. Bytes are counted when they leave the NIC (when written to the socket, or when
 * put on the delay line), per traffic class, and reported to an optional sampler.
 *
 * Non-goals: loss, jitter and reordering (TCP carries the bytes, and the design claims no
 * survival of a lossy link); ingress shaping (the peer's egress shaper models its NIC);
 * changing the rate of a running shaper.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import type { Clock, TimerHandle } from '../core/clock.ts';
import { LinkError } from './link-errors.ts';

/** What a byte on the link is for; the sampler and counters break traffic down by it. */
export type TrafficClass = 'migration' | 'intervm' | 'external' | 'control';

/** Every traffic class, in report order. */
export const TRAFFIC_CLASSES: readonly TrafficClass[] = [
  'migration',
  'intervm',
  'external',
  'control',
];

/** The paper's link between PCs: 1 Gbit/s, in bytes per second. */
export const LINK_BYTES_PER_SEC_DEFAULT = 125_000_000;

/**
 * The largest slice the shaper writes at once when shaping (bytes). It is the pacing grain:
 * 64 KiB at 1 Gbit/s is 0.52 ms, so a 4 MiB migration record is spread over 64 slices and
 * an inter-VM frame on another socket of the same NIC waits at most one slice behind it.
 * 64 KiB is also the write size at which loopback TCP was measured (machine-limits §3).
 */
export const SLICE_BYTES_MAX = 64 * 1024;

/** The smallest default burst (bytes): one whole slice, see `TokenBucket`. */
export const BURST_BYTES_MIN = 64 * 1024;

/** The default burst as time at the bucket's rate (ms), see `TokenBucket`. */
export const BURST_MS_DEFAULT = 2;

/**
 * The most bytes one socket's delay line may hold (bytes). With a rate, the line holds about
 * rate x latency (1 Gbit/s x 10 ms = 1.25 MB); an unlimited link with latency would otherwise
 * queue without bound. 32 MiB covers 1.4 GB/s x 20 ms and is small beside guest memory.
 */
export const DELAY_LINE_BYTES_MAX = 32 * 1024 * 1024;

/**
 * The most lateness of a token wait that a backlogged link is credited for (ms).
 *
 * Why: a token wait ends late when the timer fires late, and on a 2-vCPU machine shared by
 * two hosts' processes and their guests, the event loop is often descheduled for several ms.
 * A plain bucket caps the tokens earned meanwhile at the burst (2 ms), so each longer stall
 * was lost link time: 1 GiB at 1 Gbit/s came out at 0.90-0.97 Gbit/s under load. A real NIC
 * keeps sending from its TX ring while the CPU is late; crediting the stall lets the backlog
 * catch up, so a link-bound migration stays at the link rate. The bound keeps the catch-up
 * burst after a long stall (20 ms = 2.5 MB at 1 Gbit/s) short beside a 100 ms sample.
 */
export const LATE_CREDIT_MS_MAX = 20;

/** A fresh record of zero bytes for every traffic class. */
export function emptyTrafficCounts(): Record<TrafficClass, number> {
  return { migration: 0, intervm: 0, external: 0, control: 0 };
}

/**
 * The time (ms) a link of `bytesPerSec` needs to carry `bytes` at its steady rate, ignoring
 * the bucket's burst and any latency; 0 when the link is unlimited (`null`).
 */
export function shapedDurationMs(bytes: number, bytesPerSec: number | null): number {
  assert(bytes >= 0, `bytes must not be negative, got ${bytes}`);
  if (bytesPerSec === null) return 0;
  assert(bytesPerSec > 0, `bytesPerSec must be above zero, got ${bytesPerSec}`);
  return (bytes / bytesPerSec) * 1000;
}

/** Options of a `TokenBucket`. */
export interface TokenBucketInit {
  /** The sustained rate (bytes per second); above zero. */
  bytesPerSec: number;
  /**
   * How many bytes may leave at once after an idle period (bytes).
   * @default max(`BURST_BYTES_MIN` = 64 KiB, `BURST_MS_DEFAULT` = 2 ms of `bytesPerSec`)
   */
  burstBytes?: number;
}

/**
 * A token bucket with debt: pure arithmetic on the times the caller passes in.
 *
 * The bucket starts full. `take(bytes, nowMs)` first refills `(nowMs - last) x rate` tokens,
 * capped at `burstBytes`, then removes `bytes` even if that leaves the bucket negative, and
 * returns the wait until the balance is back to zero, which is when those bytes may leave.
 * A sender that always waits what it is told sends `N` bytes in `(N - burstBytes) / rate`.
 *
 * Why the default burst is max(64 KiB, 2 ms of rate):
 * - at least one slice (`SLICE_BYTES_MAX`), so an idle link lets a small frame (an SMTP
 *   command between guests) out at once instead of pacing it;
 * - at least 2 ms of rate, because timers fire late (setTimeout has 1 ms granularity plus
 *   event-loop jitter), and tokens earned while oversleeping are kept only up to the burst:
 *   a smaller bucket would throw them away and run the link below its rate. It is what `tc
 *   tbf rate 1gbit burst 256kb` does (about 2 ms at 1 Gbit/s), which held 0.956 Gbit/s here.
 */
export class TokenBucket {
  /** The sustained rate (bytes per second). */
  readonly bytesPerSec: number;
  /** The capacity of the bucket (bytes). */
  readonly burstBytes: number;
  private tokenBytes: number;
  private lastMs: number | null = null;

  constructor(init: TokenBucketInit) {
    assert(
      Number.isFinite(init.bytesPerSec) && init.bytesPerSec > 0,
      `bytesPerSec must be a finite rate above zero, got ${init.bytesPerSec}`,
    );
    this.bytesPerSec = init.bytesPerSec;
    this.burstBytes =
      init.burstBytes ?? Math.max(BURST_BYTES_MIN, (init.bytesPerSec * BURST_MS_DEFAULT) / 1000);
    assert(this.burstBytes > 0, `burstBytes must be above zero, got ${this.burstBytes}`);
    this.tokenBytes = this.burstBytes;
  }

  /** The balance after the last `take` (bytes); negative while in debt. */
  get tokenBalanceBytes(): number {
    return this.tokenBytes;
  }

  /**
   * Takes `bytes` at time `nowMs` (ms, on the caller's monotonic clock); returns how long the
   * caller must wait (ms) before those bytes may leave: 0 when the bucket covered them.
   * Tokens may go negative (debt), so large writes are paced, not refused.
   *
   * `lateMs` (ms, default 0): how late the caller's last wait on this bucket ended, while it
   * had bytes waiting. The link was busy, not idle, during that time, so the tokens it earned
   * are kept beyond the burst (up to `LATE_CREDIT_MS_MAX`) and the backlog catches up; see
   * `LATE_CREDIT_MS_MAX` for why.
   */
  take(bytes: number, nowMs: number, options?: { lateMs?: number }): number {
    assert(bytes >= 0, `bytes must not be negative, got ${bytes}`);
    if (this.lastMs !== null && nowMs > this.lastMs) {
      const elapsedMs = nowMs - this.lastMs;
      const creditMs = Math.min(options?.lateMs ?? 0, LATE_CREDIT_MS_MAX, elapsedMs);
      const capBytes = this.burstBytes + (creditMs * this.bytesPerSec) / 1000;
      // The cap limits what is earned; it never takes back credit not yet spent.
      if (this.tokenBytes < capBytes) {
        const earnedBytes = (elapsedMs * this.bytesPerSec) / 1000;
        this.tokenBytes = Math.min(capBytes, this.tokenBytes + earnedBytes);
      }
    }
    // A time before the last one (never from a monotonic clock) earns nothing.
    if (this.lastMs === null || nowMs > this.lastMs) this.lastMs = nowMs;
    this.tokenBytes -= bytes;
    return this.tokenBytes >= 0 ? 0 : (-this.tokenBytes / this.bytesPerSec) * 1000;
  }
}

/** Receives every byte count as it leaves the NIC; `LinkSampler` implements it. */
export interface EgressRecorder {
  record(trafficClass: TrafficClass, bytes: number): void;
}

/** Injected dependencies of an `EgressShaper`. */
export interface EgressShaperComponents {
  /** Times token waits and the delay line. */
  clock: Clock;
  /** Told of every byte that leaves, when attached. */
  sampler?: EgressRecorder;
}

/** Options of an `EgressShaper`. */
export interface EgressShaperInit {
  /**
   * The NIC's rate (bytes per second), shared by every socket of the host; `null` for an
   * unlimited link. The paper's 1 Gbit/s is `LINK_BYTES_PER_SEC_DEFAULT`.
   */
  bytesPerSec: number | null;
  /**
   * The token bucket's burst (bytes); see `TokenBucket` for the default and its reasons. A
   * larger burst rides out longer stalls of a busy event loop, at the cost of longer bursts.
   * @default max(64 KiB, 2 ms of `bytesPerSec`)
   */
  burstBytes?: number;
  /**
   * One-way delay added to every byte (ms), without reducing throughput.
   * @default 0
   */
  latencyMs?: number;
}

/** What has left the NIC since it was created. */
export interface EgressCounters {
  /** Every byte sent, all classes together (bytes). */
  sentBytes: number;
  /** Bytes sent per traffic class (bytes). */
  sentBytesByClass: Record<TrafficClass, number>;
}

/** One `send` call waiting in a lane. */
interface SendJob {
  readonly chunk: Uint8Array;
  readonly trafficClass: TrafficClass;
  /** Bytes of `chunk` that have left the NIC. */
  offsetBytes: number;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  /** The caller's `onReleased`, until it is handed to the write of the chunk's last bytes. */
  onReleased: (() => void) | undefined;
}

/** A slice on the delay line: it reaches the socket at `dueMs`. */
interface DelayedSlice {
  readonly bytes: Uint8Array;
  readonly dueMs: number;
  /** The send's `onReleased`, on the slice that ends its chunk. */
  readonly onReleased: (() => void) | undefined;
}

/**
 * The per-socket state while a socket has sends waiting or slices on its delay line. A lane
 * listens to the socket's 'close' and 'error' only while it exists, so an idle socket's error
 * handling is left to its owner.
 */
interface Lane {
  readonly socket: Socket;
  readonly jobs: SendJob[];
  pumping: boolean;
  failed: boolean;
  /** What the lane's jobs were rejected with, once `failed`. */
  failure: unknown;
  /** Rejects the one wait the pump is in (tokens, drain, or room on the delay line). */
  interrupt: ((error: unknown) => void) | null;
  delayLine: DelayedSlice[];
  delayLineBytes: number;
  deliveryTimer: TimerHandle | null;
  /** Wakes the pump when the delay line delivered. */
  onDelivered: (() => void) | null;
  /** `flush` callers, settled when the lane goes idle or fails. */
  readonly flushWaiters: { resolve: () => void; reject: (error: unknown) => void }[];
  readonly onClose: () => void;
  readonly onError: (error: Error) => void;
}

const RESOLVED: Promise<void> = Promise.resolve();

/**
 * The egress of one host: a NIC shared by all the host's sockets to other hosts.
 *
 * `send` resolves once every byte of the chunk has left the NIC and the socket is below its
 * high-water mark again (the caller may send more); it rejects with a `LinkError` of code
 * `LINK_CLOSED` if the socket is, or becomes, closed, ended or failed first.
 */
export class EgressShaper {
  private readonly clock: Clock;
  private readonly sampler: EgressRecorder | undefined;
  private readonly bucket: TokenBucket | null;
  /** One-way added delay (ms). */
  readonly latencyMs: number;
  /** Unlimited and no latency: write the caller's chunk as it is. */
  private readonly direct: boolean;
  private readonly lanes = new Map<Socket, Lane>();
  private sentBytes = 0;
  private readonly sentBytesByClass = emptyTrafficCounts();
  /**
   * How late the last token wait of any lane ended (ms), credited to the next take. It is
   * per NIC, not per lane: lanes woken late by one stall of the event loop share that stall.
   */
  private lateMs = 0;

  constructor(components: EgressShaperComponents, init: EgressShaperInit) {
    this.clock = components.clock;
    this.sampler = components.sampler;
    this.bucket =
      init.bytesPerSec === null
        ? null
        : new TokenBucket({ bytesPerSec: init.bytesPerSec, burstBytes: init.burstBytes });
    this.latencyMs = init.latencyMs ?? 0;
    assert(
      Number.isFinite(this.latencyMs) && this.latencyMs >= 0,
      `latencyMs must be a finite time of zero or more, got ${this.latencyMs}`,
    );
    this.direct = this.bucket === null && this.latencyMs === 0;
  }

  /** The NIC's rate (bytes per second), or `null` when unlimited. */
  get bytesPerSec(): number | null {
    return this.bucket === null ? null : this.bucket.bytesPerSec;
  }

  /** A snapshot of the bytes sent so far. */
  get counters(): EgressCounters {
    return { sentBytes: this.sentBytes, sentBytesByClass: { ...this.sentBytesByClass } };
  }

  /** Sockets with sends waiting or bytes on the delay line (0 when all is flushed). */
  get busySocketCount(): number {
    return this.lanes.size;
  }

  /**
   * Sends `chunk` on `socket` through this NIC, after any earlier send on the same socket.
   * Ownership of `chunk` passes to the shaper: it is not copied, so do not modify it after
   * the call. Resolves when the bytes have left and the socket can take more; rejects with
   * `LINK_CLOSED` when the socket closes, ends or fails first, never hangs on a dead socket.
   *
   * With latency, the bytes reach the socket up to `latencyMs` after this resolves: call
   * `flush(socket)` before ending the socket, or the bytes still on the wire are dropped.
   *
   * Resolving does not give `chunk` back: its last bytes may still wait in Node's write queue
   * or on the delay line. A caller that wants to reuse the memory passes `onReleased`, called
   * once nothing will read `chunk` any more (its last byte handed to the kernel, or the send
   * failed). The migration sender reuses its record buffers that way; it once reused them on
   * resolve, and a small record queued behind a full socket buffer was overwritten before it
   * left (a soak saw the target refuse a batch for its checksum).
   */
  send(
    socket: Socket,
    chunk: Uint8Array,
    trafficClass: TrafficClass,
    onReleased?: () => void,
  ): Promise<void> {
    if (this.direct && !this.lanes.has(socket)) {
      // The fast path: nothing queued on this socket, so a write now keeps the order.
      const closed = closedError(socket, 'before the send');
      if (closed !== null) {
        onReleased?.();
        return Promise.reject(closed);
      }
      if (!socket.writableNeedDrain) {
        this.count(trafficClass, chunk.byteLength);
        if (chunk.byteLength === 0) {
          onReleased?.();
          return RESOLVED;
        }
        if (socket.write(chunk, releaseCallback(onReleased))) return RESOLVED;
        // Written but over the high-water mark: queue a job that only waits for 'drain'.
        return this.enqueue(socket, chunk, trafficClass, chunk.byteLength, undefined);
      }
    }
    return this.enqueue(socket, chunk, trafficClass, 0, onReleased);
  }

  /**
   * Resolves when `socket` has nothing left in the shaper: every send written to the socket
   * and its delay line empty. Rejects with `LINK_CLOSED` if the socket fails first. Call it
   * before `socket.end()` when the shaper has latency (it is immediate otherwise, once the
   * sends have resolved).
   */
  flush(socket: Socket): Promise<void> {
    const lane = this.lanes.get(socket);
    if (lane === undefined) return RESOLVED;
    return new Promise<void>((resolve, reject) => lane.flushWaiters.push({ resolve, reject }));
  }

  private enqueue(
    socket: Socket,
    chunk: Uint8Array,
    trafficClass: TrafficClass,
    offsetBytes: number,
    onReleased: (() => void) | undefined,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let lane = this.lanes.get(socket);
      if (lane === undefined) {
        const closed = closedError(socket, 'before the send');
        if (closed !== null) {
          onReleased?.();
          reject(closed);
          return;
        }
        lane = this.openLane(socket);
      }
      lane.jobs.push({ chunk, trafficClass, offsetBytes, resolve, reject, onReleased });
      if (!lane.pumping) void this.pump(lane);
    });
  }

  private openLane(socket: Socket): Lane {
    const lane: Lane = {
      socket,
      jobs: [],
      pumping: false,
      failed: false,
      failure: undefined,
      interrupt: null,
      delayLine: [],
      delayLineBytes: 0,
      deliveryTimer: null,
      onDelivered: null,
      flushWaiters: [],
      onClose: () => this.fail(lane, closedError(socket, 'while sending', true)),
      onError: (error) =>
        this.fail(
          lane,
          new LinkError('LINK_CLOSED', `${describeSocket(socket)} failed: ${error.message}`, {
            cause: error,
          }),
        ),
    };
    socket.on('close', lane.onClose);
    socket.on('error', lane.onError);
    this.lanes.set(socket, lane);
    return lane;
  }

  /** Drains the lane's jobs in order; the only code that writes a lane's bytes. */
  private async pump(lane: Lane): Promise<void> {
    lane.pumping = true;
    try {
      while (lane.jobs.length > 0 && !lane.failed) {
        const job = lane.jobs[0]!;
        await this.sendJob(lane, job);
        lane.jobs.shift();
        job.resolve();
      }
    } catch (error) {
      this.fail(lane, error);
      return;
    }
    lane.pumping = false;
    this.retireIfIdle(lane);
  }

  private async sendJob(lane: Lane, job: SendJob): Promise<void> {
    const lengthBytes = job.chunk.byteLength;
    while (job.offsetBytes < lengthBytes) {
      if (!this.canWrite(lane)) await this.waitWritable(lane);
      const remainingBytes = lengthBytes - job.offsetBytes;
      const sliceBytes = this.direct ? remainingBytes : Math.min(SLICE_BYTES_MAX, remainingBytes);
      if (this.bucket !== null) {
        const takeMs = this.clock.nowMs();
        const waitMs = this.bucket.take(sliceBytes, takeMs, { lateMs: this.lateMs });
        this.lateMs = 0;
        if (waitMs > 0) {
          await this.sleep(lane, waitMs);
          this.lateMs = Math.max(this.lateMs, this.clock.nowMs() - takeMs - waitMs);
        }
      }
      throwIfClosed(lane);
      const slice = job.chunk.subarray(job.offsetBytes, job.offsetBytes + sliceBytes);
      job.offsetBytes += sliceBytes;
      this.count(job.trafficClass, sliceBytes);
      // The chunk's last slice carries the release: writes complete in order.
      const onReleased = job.offsetBytes === lengthBytes ? job.onReleased : undefined;
      if (onReleased) job.onReleased = undefined;
      if (this.latencyMs > 0) this.putOnDelayLine(lane, slice, onReleased);
      else lane.socket.write(slice, releaseCallback(onReleased));
    }
    // Backpressure: resolve only when the caller may send more.
    if (!this.canWrite(lane)) await this.waitWritable(lane);
  }

  /** True when the socket is open, below its high-water mark, and the delay line has room. */
  private canWrite(lane: Lane): boolean {
    return (
      !lane.failed &&
      isOpen(lane.socket) &&
      !lane.socket.writableNeedDrain &&
      lane.delayLineBytes < DELAY_LINE_BYTES_MAX
    );
  }

  private async waitWritable(lane: Lane): Promise<void> {
    const socket = lane.socket;
    for (;;) {
      throwIfClosed(lane);
      if (socket.writableNeedDrain) {
        await this.waitUntil(lane, (wake) => {
          socket.once('drain', wake);
          return () => socket.off('drain', wake);
        });
      } else if (lane.delayLineBytes >= DELAY_LINE_BYTES_MAX) {
        await this.waitUntil(lane, (wake) => {
          lane.onDelivered = wake;
          return () => {
            lane.onDelivered = null;
          };
        });
      } else {
        return;
      }
    }
  }

  private sleep(lane: Lane, delayMs: number): Promise<void> {
    return this.waitUntil(lane, (wake) => {
      const timer = this.clock.setTimer(delayMs, wake);
      return () => timer.cancel();
    });
  }

  /**
   * Waits for the event that `arm` subscribes `wake` to; `arm` returns its unsubscribe. A
   * failure of the lane (close, error) rejects the wait instead, so no wait outlives its
   * socket.
   */
  private waitUntil(lane: Lane, arm: (wake: () => void) => () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const disarm = arm(() => {
        lane.interrupt = null;
        disarm();
        resolve();
      });
      lane.interrupt = (error) => {
        lane.interrupt = null;
        disarm();
        reject(error);
      };
    });
  }

  private putOnDelayLine(lane: Lane, slice: Uint8Array, onReleased?: () => void): void {
    lane.delayLine.push({ bytes: slice, dueMs: this.clock.nowMs() + this.latencyMs, onReleased });
    lane.delayLineBytes += slice.byteLength;
    if (lane.deliveryTimer === null) {
      lane.deliveryTimer = this.clock.setTimer(this.latencyMs, () => this.deliver(lane));
    }
  }

  /** Writes every due slice, in order, and re-arms the timer for the next one. */
  private deliver(lane: Lane): void {
    lane.deliveryTimer = null;
    if (lane.failed) return;
    const closed = closedError(lane.socket, 'with bytes on the delay line');
    if (closed !== null) {
      this.fail(lane, closed);
      return;
    }
    const nowMs = this.clock.nowMs();
    let head = lane.delayLine[0];
    let deliveredCount = 0;
    while (head !== undefined && head.dueMs <= nowMs) {
      lane.delayLineBytes -= head.bytes.byteLength;
      // Slices already on the wire reach the socket even above its high-water mark; the
      // pump stops admitting new ones until 'drain', which bounds the socket's buffer.
      lane.socket.write(head.bytes, releaseCallback(head.onReleased));
      deliveredCount++;
      head = lane.delayLine[deliveredCount];
    }
    // The line is at most DELAY_LINE_BYTES_MAX / slice entries, so one splice per timer.
    lane.delayLine.splice(0, deliveredCount);
    if (head !== undefined) {
      lane.deliveryTimer = this.clock.setTimer(head.dueMs - nowMs, () => this.deliver(lane));
    }
    lane.onDelivered?.();
    this.retireIfIdle(lane);
  }

  private count(trafficClass: TrafficClass, bytes: number): void {
    this.sentBytes += bytes;
    this.sentBytesByClass[trafficClass] += bytes;
    if (bytes > 0) this.sampler?.record(trafficClass, bytes);
  }

  /** Fails the lane once: rejects every job, drops the delay line, stops listening. */
  private fail(lane: Lane, error: unknown): void {
    if (lane.failed) return;
    lane.failed = true;
    lane.failure = error;
    this.closeLane(lane);
    lane.deliveryTimer?.cancel();
    lane.deliveryTimer = null;
    // Nothing will read what was never written: give it back.
    for (const slice of lane.delayLine) slice.onReleased?.();
    lane.delayLine = [];
    lane.delayLineBytes = 0;
    for (const job of lane.jobs.splice(0)) {
      job.onReleased?.();
      job.reject(error);
    }
    for (const waiter of lane.flushWaiters.splice(0)) waiter.reject(error);
    lane.interrupt?.(error);
  }

  private retireIfIdle(lane: Lane): void {
    if (lane.failed || lane.pumping || lane.jobs.length > 0 || lane.delayLine.length > 0) return;
    this.closeLane(lane);
    for (const waiter of lane.flushWaiters.splice(0)) waiter.resolve();
  }

  private closeLane(lane: Lane): void {
    lane.socket.off('close', lane.onClose);
    lane.socket.off('error', lane.onError);
    if (this.lanes.get(lane.socket) === lane) this.lanes.delete(lane.socket);
  }
}

/** A socket write callback that calls `onReleased` whatever the outcome (an error too). */
function releaseCallback(onReleased: (() => void) | undefined): (() => void) | undefined {
  return onReleased === undefined ? undefined : () => onReleased();
}

/** Throws the lane's failure, or `LINK_CLOSED` if its socket can no longer take writes. */
function throwIfClosed(lane: Lane): void {
  if (lane.failed) throw lane.failure;
  const closed = closedError(lane.socket, 'while sending');
  if (closed !== null) throw closed;
}

function isOpen(socket: Socket): boolean {
  return !socket.destroyed && socket.writable;
}

/**
 * A `LINK_CLOSED` error when `socket` can no longer take writes, else `null`. With `always`
 * it returns the error even for a socket that still looks open (its 'close' event fired).
 */
function closedError(socket: Socket, when: string, always: true): LinkError;
function closedError(socket: Socket, when: string): LinkError | null;
function closedError(socket: Socket, when: string, always = false): LinkError | null {
  if (!always && isOpen(socket)) return null;
  const state = socket.destroyed ? 'destroyed' : socket.writableEnded ? 'ended' : 'closed';
  return new LinkError('LINK_CLOSED', `${describeSocket(socket)} is ${state} ${when}`.trim());
}

/** A destroyed socket no longer knows its peer's address. */
function describeSocket(socket: Socket): string {
  return socket.remoteAddress === undefined
    ? 'the link to the peer host'
    : `the link to ${socket.remoteAddress}:${socket.remotePort}`;
}
