/**
 * How fast can a migration target take bytes in on this machine, whatever the engine does?
 * A ceiling, not a benchmark of xenvmc: two processes on loopback, a sender that only writes a
 * 4 MiB pattern again and again, and a receiver that, per mode,
 * - `discard`: reads into one reused buffer and drops the bytes (raw TCP);
 * - `land`: reads into one reused buffer, copies every byte into a 1 GiB SharedArrayBuffer
 *   (guest memory) and checks a CRC-32C per 4 KiB page: the least issue 2 asks of a target;
 * - `land-data-events`: the same, reading with Node's 'data' events (a fresh 64 KiB Buffer per
 *   read), as the migration receiver did before session 4.
 * Prints GB/s per mode and trial. Run: `node --import tsx bench/migration/landing-ceiling.ts`
 * (about a minute; `LANDING_TRIALS` sets the trials per mode, default 3).
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { crc32c } from '../../src/core/checksum.ts';
import { PAGE_SIZE_BYTES } from '../../src/core/units.ts';
import { readInto } from '../../src/net/read-into.ts';

const TOTAL_BYTES = 1024 ** 3;
const MODES = ['discard', 'land', 'land-data-events'] as const;
type Mode = (typeof MODES)[number];

/** Child: connects to the port it is sent and writes TOTAL_BYTES, then ends. */
function runSender(): void {
  const pattern = Buffer.alloc(4 * 1024 * 1024, 7);
  process.once('message', (port: number) => {
    const socket = net.connect(port, '127.0.0.1', () => {
      let sent = 0;
      const pump = (): void => {
        while (sent < TOTAL_BYTES) {
          sent += pattern.byteLength;
          if (!socket.write(pattern)) {
            socket.once('drain', pump);
            return;
          }
        }
        socket.end(() => process.exit(0));
      };
      pump();
    });
  });
}

async function receiveOnce(mode: Mode, memory: Uint8Array): Promise<number> {
  const server = net.createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const sender = fork(fileURLToPath(import.meta.url), ['sender'], {
    execArgv: ['--import', 'tsx'],
  });
  sender.send((server.address() as net.AddressInfo).port);
  const [socket] = (await once(server, 'connection')) as [net.Socket];
  server.close();
  let received = 0;
  let startMs = 0;
  const land = (bytes: Uint8Array): boolean => {
    if (startMs === 0) startMs = performance.now();
    if (mode !== 'discard') {
      Buffer.from(memory.buffer, received, bytes.byteLength).fill(bytes);
      const end = received + bytes.byteLength;
      const firstWhole = Math.ceil(received / PAGE_SIZE_BYTES) * PAGE_SIZE_BYTES;
      for (let page = firstWhole; page + PAGE_SIZE_BYTES <= end; page += PAGE_SIZE_BYTES) {
        crc32c(memory.subarray(page, page + PAGE_SIZE_BYTES));
      }
    }
    received += bytes.byteLength;
    return true;
  };
  readInto(socket, new Uint8Array(256 * 1024), land, {
    path: mode === 'land-data-events' ? 'data-events' : 'reused-buffer',
  });
  const ended = once(socket, 'end');
  socket.resume();
  await ended;
  socket.destroy();
  return received / ((performance.now() - startMs) * 1e6);
}

async function main(): Promise<void> {
  const trials = Number(process.env.LANDING_TRIALS ?? 3);
  const memory = new Uint8Array(new SharedArrayBuffer(TOTAL_BYTES));
  // First touch outside the timed part (3.6 s per GiB here).
  for (let offset = 0; offset < TOTAL_BYTES; offset += PAGE_SIZE_BYTES) memory[offset] = 1;
  for (let trial = 0; trial < trials; trial++) {
    for (const mode of MODES) {
      const gbPerSec = await receiveOnce(mode, memory);
      console.log(`trial ${trial + 1} ${mode.padEnd(17)} ${gbPerSec.toFixed(2)} GB/s`);
    }
  }
}

if (process.argv[2] === 'sender') runSender();
else await main();
