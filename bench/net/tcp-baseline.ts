/**
 * Node's kernel TCP loopback between two worker threads of this process: the baseline the
 * network benchmarks (bench/net/netfront.bench.ts, bench/net/channel.bench.ts) measure in the
 * same run as the paths they compare with it.
 *
 * Method. Throughput: a source worker listens and writes `bytes` in `messageBytes` writes,
 * honouring backpressure; the sink worker connects, reads into one reused buffer (`onread`,
 * which Node offers to the sockets it connects) and times the bytes after its first arrival
 * over its first-to-last arrival interval, as the netbench sink does (src/workloads/netbench.ts).
 * Latency: a ping worker against an echo worker, both with `setNoDelay`, one message in
 * flight; the round trips after the warm-up are returned.
 */
import { Worker } from 'node:worker_threads';

/** Message size of the latency figures unless told otherwise. */
export const TCP_PING_MESSAGE_BYTES_DEFAULT = 64;

/**
 * The workers' code: plain JavaScript evaluated in each worker (no TypeScript loader needed
 * there). Roles: `source` and `echo` listen on 127.0.0.1 port 0 and post their port; `sink`
 * and `ping` connect to it. The sink times its arrivals as the netbench sink does.
 */
const TCP_WORKER_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
const net = require('node:net');
const { role, port, bytes, messageBytes, rounds, warmupRounds } = workerData;
if (role === 'echo') {
  const server = net.createServer((socket) => {
    server.close();
    socket.setNoDelay(true);
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('end', () => socket.end());
  });
  server.listen(0, '127.0.0.1', () => parentPort.postMessage({ port: server.address().port }));
} else if (role === 'sink') {
  // Reads into one reused buffer (onread), as the channel's and netfront's sinks do: Node's
  // 'data' events cost a fresh 64 KiB Buffer per read and made this baseline slower.
  let received = 0, firstMs = -1, lastMs = -1, firstBytes = 0;
  const buffer = Buffer.alloc(256 * 1024);
  const socket = net.connect({ port, host: '127.0.0.1', onread: { buffer, callback: (length) => {
    const nowMs = performance.now();
    if (firstMs < 0) { firstMs = nowMs; firstBytes = length; }
    lastMs = nowMs;
    received += length;
    return true;
  } } });
  socket.on('end', () => {
    socket.end();
    parentPort.postMessage({ received, firstBytes, elapsedMs: lastMs - firstMs });
  });
} else if (role === 'source') {
  // Listens, and writes to the sink that connects.
  const message = Buffer.alloc(messageBytes, 7);
  let sent = 0;
  const server = net.createServer((socket) => {
    server.close();
    socket.on('close', () => parentPort.postMessage({ sent }));
    const pump = () => {
      while (sent < bytes) {
        const size = Math.min(messageBytes, bytes - sent);
        sent += size;
        if (!socket.write(size === messageBytes ? message : message.subarray(0, size))) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    pump();
    socket.resume();
  });
  server.listen(0, '127.0.0.1', () => parentPort.postMessage({ port: server.address().port }));
} else {
  const message = Buffer.alloc(messageBytes, 7);
  const rttMs = [];
  let done = 0, roundBytes = 0, roundStartMs = 0;
  const socket = net.connect(port, '127.0.0.1', () => {
    socket.setNoDelay(true);
    roundStartMs = performance.now();
    socket.write(message);
  });
  socket.on('data', (chunk) => {
    roundBytes += chunk.length;
    if (roundBytes < messageBytes) return;
    const nowMs = performance.now();
    if (done >= warmupRounds) rttMs.push(nowMs - roundStartMs);
    done++;
    roundBytes = 0;
    if (done === warmupRounds + rounds) { socket.end(); return; }
    roundStartMs = nowMs;
    socket.write(message);
  });
  socket.on('close', () => parentPort.postMessage({ rttMs }));
}
`;

/** Runs one worker of `TCP_WORKER_CODE`; `messages` yields what it posts, in order. */
function startTcpWorker(data: Record<string, number | string>): {
  worker: Worker;
  next: <T>() => Promise<T>;
} {
  const worker = new Worker(TCP_WORKER_CODE, { eval: true, workerData: data });
  const queue: unknown[] = [];
  const waiters: { resolve: (value: unknown) => void; reject: (error: Error) => void }[] = [];
  let failure: Error | null = null;
  worker.on('message', (message) => {
    const waiter = waiters.shift();
    if (waiter) waiter.resolve(message);
    else queue.push(message);
  });
  worker.on('error', (error) => {
    failure = error;
    for (const waiter of waiters.splice(0)) waiter.reject(error);
  });
  const next = <T>(): Promise<T> => {
    if (queue.length > 0) return Promise.resolve(queue.shift() as T);
    if (failure) return Promise.reject(failure);
    return new Promise<T>((resolve, reject) =>
      waiters.push({ resolve: resolve as (value: unknown) => void, reject }),
    );
  };
  return { worker, next };
}

/** Kernel TCP loopback throughput in bytes/s, timed by the sink like the netbench sink. */
export async function tcpThroughput(messageBytes: number, bytes: number): Promise<number> {
  const source = startTcpWorker({ role: 'source', bytes, messageBytes });
  try {
    const { port } = await source.next<{ port: number }>();
    const sink = startTcpWorker({ role: 'sink', port });
    try {
      const result = await sink.next<{ received: number; firstBytes: number; elapsedMs: number }>();
      if (result.received !== bytes)
        throw new Error(`kernel TCP sink got ${result.received} of ${bytes} B`);
      return ((result.received - result.firstBytes) * 1000) / result.elapsedMs;
    } finally {
      await sink.worker.terminate();
    }
  } finally {
    await source.worker.terminate();
  }
}

/** Kernel TCP loopback round-trip times in ms (ping-pong with setNoDelay). */
export async function tcpRoundTrips(
  rounds: number,
  warmupRounds: number,
  messageBytes: number = TCP_PING_MESSAGE_BYTES_DEFAULT,
): Promise<number[]> {
  const echo = startTcpWorker({ role: 'echo' });
  try {
    const { port } = await echo.next<{ port: number }>();
    const ping = startTcpWorker({
      role: 'ping',
      port,
      messageBytes,
      rounds,
      warmupRounds,
    });
    try {
      const { rttMs } = await ping.next<{ rttMs: number[] }>();
      if (rttMs.length !== rounds) throw new Error(`kernel TCP ping made ${rttMs.length} rounds`);
      return rttMs;
    } finally {
      await ping.worker.terminate();
    }
  } finally {
    await echo.worker.terminate();
  }
}

/** The nearest-rank `fraction` quantile. */
export function quantile(values: number[], fraction: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(1, Math.ceil(fraction * sorted.length)) - 1]!;
}
