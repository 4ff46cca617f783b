/**
 * The ceiling of a two-thread SharedArrayBuffer byte ring in Node 20 on this machine, against
 * the channel benchmark's memcpy baseline (issue 4: the channel at >= 0.5 of memcpy for 64 KiB
 * messages). Not a test and not part of `npm run bench`: a standalone measurement whose figures
 * the channel benchmark's report cites.
 *
 *   node --import tsx bench/net/ring-ceiling.ts            # 1 GiB per ring sample, 5 rounds
 *   RING_GIB=4 RING_ROUNDS=7 node --import tsx bench/net/ring-ceiling.ts
 *   RING_KIB=256 RING_SPIN_US=0 ...    # another ring size (KiB), another spin before sleeping
 *
 * Method. One round measures, back to back (so load changes hit every series alike):
 * - single-thread copies of 64 KiB messages with `TypedArray.set` into successive slots of a
 *   256 KiB destination, as channel.bench.ts's `memcpyRate` does (ArrayBuffer to ArrayBuffer,
 *   its baseline), and the same with a SharedArrayBuffer on one side: a FIFO write copies into
 *   shared memory and a read copies out of it, and V8 copies shared memory with relaxed
 *   word-by-word moves instead of libc memcpy;
 * - the bare ring: the SharedFifo's protocol without the guest around it. Two worker threads,
 *   a 1 MiB ring (CHANNEL_FIFO_BYTES_MAX) in a SharedArrayBuffer, counters on their own cache
 *   lines, each side caching the other's counter, `Atomics.wait`/`notify` behind a waiting flag
 *   after a 5 us spin. The writer copies each 64 KiB message in (one copy in); the reader takes
 *   everything pending (up to 256 KiB, the netbench's read size) and
 *     `fresh`   copies it into a new array per read (the channel's `read` today),
 *     `into`    copies it into one reused 256 KiB array (`readInto`),
 *     `view`    looks at it in place, one load per 64-byte line (a zero-copy reader that uses
 *               its bytes: every line still travels from the writer's core),
 *     `none`    publishes it unread (the writer's copy alone: an upper bound, not a channel).
 *   Throughput is bytes over the reader's first-to-last read, as the netbench sink times it.
 * Figures: medians over the rounds, each with its ratio to the memcpy median, and the load
 * average before and after.
 */
import os from 'node:os';
import { Worker } from 'node:worker_threads';

const MESSAGE_BYTES = 64 * 1024;
const RING_BYTES = Number(process.env.RING_KIB ?? 1024) * 1024;
const READ_BYTES_MAX = 256 * 1024;
const COPY_DESTINATION_BYTES = 256 * 1024;
const SPIN_MICROS = Number(process.env.RING_SPIN_US ?? 5);
const GIB = 1024 * 1024 * 1024;
const totalBytes = Math.round(Number(process.env.RING_GIB ?? 1) * GIB);
const rounds = Number(process.env.RING_ROUNDS ?? 5);

type CopyKind = 'ab->ab' | 'ab->sab' | 'sab->ab';
type ReadKind = 'fresh' | 'into' | 'view' | 'none';

/** Single-thread copy rate in bytes/s, as channel.bench.ts's memcpyRate (warm pass first). */
function copyRate(kind: CopyKind, bytes: number): number {
  const sourceBuffer = kind === 'sab->ab' ? new SharedArrayBuffer(MESSAGE_BYTES) : undefined;
  const source = sourceBuffer ? new Uint8Array(sourceBuffer) : new Uint8Array(MESSAGE_BYTES);
  for (let i = 0; i < MESSAGE_BYTES; i++) source[i] = i & 0xff;
  const destination =
    kind === 'ab->sab'
      ? new Uint8Array(new SharedArrayBuffer(COPY_DESTINATION_BYTES))
      : new Uint8Array(COPY_DESTINATION_BYTES);
  const slots = COPY_DESTINATION_BYTES / MESSAGE_BYTES;
  for (let slot = 0; slot < slots; slot++) destination.set(source, slot * MESSAGE_BYTES);
  const copies = bytes / MESSAGE_BYTES;
  const start = performance.now();
  for (let i = 0; i < copies; i++) destination.set(source, (i % slots) * MESSAGE_BYTES);
  const elapsedMs = performance.now() - start;
  if (destination[12345] !== (12345 & 0xff)) throw new Error('copy went wrong');
  return (bytes * 1000) / elapsedMs;
}

// The workers run plain JavaScript (eval): the tsx loader is not needed for this much code.
// Header words (Int32): 0 written, 16 consumed, 32 readerWaiting, 33 writerWaiting, 34 event.
const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const { buffer, role, readKind, total, messageBytes, ringBytes, readMax, spinMicros } = workerData;
const words = new Int32Array(buffer, 0, 64);
const data = new Uint8Array(buffer, 256, ringBytes);
const mask = ringBytes - 1;
const W = 0, C = 16, RW = 32, WW = 33, EV = 34;
function spin(ready) {
  const until = performance.now() + spinMicros / 1000;
  do { if (ready()) return true; } while (performance.now() < until);
  return false;
}
function wake() { Atomics.add(words, EV, 1); Atomics.notify(words, EV); }
if (role === 'writer') {
  const message = new Uint8Array(messageBytes);
  for (let i = 0; i < messageBytes; i++) message[i] = i & 0xff;
  let written = 0, consumedSeen = 0, sent = 0;
  const room = () => ringBytes - (written - (consumedSeen = Atomics.load(words, C)));
  while (sent < total) {
    if (ringBytes - (written - consumedSeen) < messageBytes && room() < messageBytes) {
      if (!spin(() => room() >= messageBytes)) {
        const event = Atomics.load(words, EV);
        Atomics.store(words, WW, 1);
        if (room() < messageBytes) Atomics.wait(words, EV, event);
        Atomics.store(words, WW, 0);
        continue;
      }
    }
    // Messages fit the ring an integral number of times: never split at the wrap.
    data.set(message, written & mask);
    written += messageBytes;
    Atomics.store(words, W, written | 0);
    sent += messageBytes;
    if (Atomics.load(words, RW) !== 0 && Atomics.exchange(words, RW, 0) !== 0) wake();
  }
  parentPort.postMessage({ done: true });
} else {
  const into = new Uint8Array(readMax);
  let consumed = 0, writtenSeen = 0, received = 0, firstBytes = 0, first = 0, last = 0, sum = 0;
  const pending = () => ((writtenSeen = Atomics.load(words, W)) - consumed) | 0;
  while (received < total) {
    let count = (writtenSeen - consumed) | 0;
    if (count === 0) count = pending();
    if (count === 0) {
      if (!spin(() => pending() > 0)) {
        const event = Atomics.load(words, EV);
        Atomics.store(words, RW, 1);
        if (pending() === 0) Atomics.wait(words, EV, event);
        Atomics.store(words, RW, 0);
      }
      continue;
    }
    if (count > readMax) count = readMax;
    const index = consumed & mask;
    const n = Math.min(count, ringBytes - index);
    if (readKind === 'fresh') { const out = new Uint8Array(n); out.set(data.subarray(index, index + n)); sum += out[n - 1]; }
    else if (readKind === 'into') { into.set(data.subarray(index, index + n)); sum += into[n - 1]; }
    else if (readKind === 'view') { for (let i = index; i < index + n; i += 64) sum += data[i]; }
    consumed += n;
    Atomics.store(words, C, consumed | 0);
    if (Atomics.load(words, WW) !== 0 && Atomics.exchange(words, WW, 0) !== 0) wake();
    const now = performance.now();
    if (received === 0) { first = now; firstBytes = n; } else last = now;
    received += n;
  }
  parentPort.postMessage({ rate: ((received - firstBytes) * 1000) / (last - first), sum });
}
`;

/** One ring sample: a writer and a reader worker move `bytes`; returns the reader's rate. */
async function ringRate(readKind: ReadKind, bytes: number): Promise<number> {
  const buffer = new SharedArrayBuffer(256 + RING_BYTES);
  const common = {
    buffer,
    readKind,
    total: bytes,
    messageBytes: MESSAGE_BYTES,
    ringBytes: RING_BYTES,
    readMax: READ_BYTES_MAX,
    spinMicros: SPIN_MICROS,
  };
  const start = (role: 'writer' | 'reader') =>
    new Promise<{ rate?: number }>((resolve, reject) => {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ...common, role } });
      worker.once('message', resolve);
      worker.once('error', reject);
    });
  const reader = start('reader');
  const [, result] = await Promise.all([start('writer'), reader]);
  return result.rate!;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

const load = () =>
  os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
const loadBefore = load();
const copies: Record<CopyKind, number[]> = { 'ab->ab': [], 'ab->sab': [], 'sab->ab': [] };
const rings: Record<ReadKind, number[]> = { fresh: [], into: [], view: [], none: [] };
for (let round = 0; round < rounds; round++) {
  for (const kind of Object.keys(copies) as CopyKind[])
    copies[kind].push(copyRate(kind, Math.min(totalBytes, 4 * GIB)));
  for (const kind of Object.keys(rings) as ReadKind[])
    rings[kind].push(await ringRate(kind, totalBytes));
  process.stderr.write(`round ${round + 1}/${rounds} done (load ${load()})\n`);
}
const memcpy = median(copies['ab->ab']);
const row = (label: string, samples: number[]): string =>
  `${label.padEnd(44)} ${(median(samples) / 1e6).toFixed(0).padStart(7)} MB/s  ` +
  `${(median(samples) / memcpy).toFixed(3)} of memcpy  [${samples.map((r) => (r / 1e6).toFixed(0)).join(', ')}]`;
process.stdout.write(
  `ring ceiling, 64 KiB messages, ${totalBytes / GIB} GiB per ring sample, ${rounds} rounds, ` +
    `${os.cpus().length} CPUs, node ${process.version}\nload before ${loadBefore}, after ${load()}\n` +
    `${row('memcpy AB->AB (channel bench baseline)', copies['ab->ab'])}\n` +
    `${row('copy AB->SAB (a FIFO write, one thread)', copies['ab->sab'])}\n` +
    `${row('copy SAB->AB (a FIFO read, one thread)', copies['sab->ab'])}\n` +
    `${row('ring: copy in, copy out to a fresh array', rings.fresh)}\n` +
    `${row('ring: copy in, copy out to a reused array', rings.into)}\n` +
    `${row('ring: copy in, zero-copy view (1 load/line)', rings.view)}\n` +
    `${row('ring: copy in, bytes never looked at', rings.none)}\n`,
);
