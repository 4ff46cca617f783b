// Worker for guest-memory.test.ts: a guest vCPU writing whole pages through GuestMemory (with
// log-dirty marks) as fast as it can until told to stop. Plain JavaScript: a worker cannot
// start from a .ts file by itself (see src/hypervisor/domain-entry.mjs).
import { parentPort, workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
const { GuestMemory } = await import('../guest-memory.ts');
const memory = GuestMemory.attach(workerData.shared);
const stop = new Int32Array(workerData.stop);
const page = new Uint8Array(4096);
const stamp = new Uint32Array(page.buffer, 0, 1);
let seed = workerData.seed >>> 0;
let writes = 0;
// Say when the writing starts: loading tsx and the module can take a while on a busy machine.
parentPort.postMessage({ started: true });
while (Atomics.load(stop, 0) === 0) {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  page.fill(writes & 0xff);
  stamp[0] = writes;
  memory.write((seed % memory.pageCount) * 4096, page);
  writes++;
}
parentPort.postMessage({ writes });
