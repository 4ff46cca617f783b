/**
 * A link test between two hosts, like iperf: the source writes `bytes` of random data as fast
 * as its egress shaper lets it, the target counts them and answers with what it received and
 * how long it took from first to last byte. It measures the raw TCP baseline between the very
 * same two host processes that migrate, so a benchmark can state migration throughput as a
 * ratio of it.
 */
import { randomFillSync } from 'node:crypto';
import type net from 'node:net';
import { readInto } from '../net/read-into.ts';
import { type ControlReader, encodeControlMessage } from './peer-link.ts';

/** A test may move at most this much (bounded before anything is allocated or sent). */
export const LINK_TEST_BYTES_MAX = 16 * 1024 ** 3;
const LINK_TEST_CHUNK_BYTES = 4 * 1024 * 1024;
const LINK_TEST_ANSWER_TIMEOUT_MS = 600_000;
/** The receiver's reused read buffer: as large as the migration receiver's. */
const LINK_TEST_READ_BYTES = 256 * 1024;

export interface LinkTestResult {
  bytes: number;
  /** From the target's first received byte to its last. */
  receiverMs: number;
  bytesPerSec: number;
}

/** Source side: announce, blast, await the target's count. */
export async function runLinkTest(
  link: { socket: net.Socket; reader: ControlReader },
  bytes: number,
  send: (chunk: Uint8Array) => Promise<void>,
): Promise<LinkTestResult> {
  link.socket.write(encodeControlMessage({ type: 'linkTest', bytes }));
  // One random chunk, written again and again: the link neither compresses nor cares about
  // content. The shaper takes ownership of what it is given (it must not change while queued),
  // and nothing ever writes to the pattern. No copy per write: an earlier version sliced a
  // fresh 4 MiB copy for every write, and that allocation and page-faulting made this baseline
  // up to half as fast as raw TCP really is, which flattered every ratio measured against it.
  const pattern = randomFillSync(new Uint8Array(LINK_TEST_CHUNK_BYTES));
  for (let sent = 0; sent < bytes; sent += LINK_TEST_CHUNK_BYTES) {
    await send(pattern.subarray(0, Math.min(LINK_TEST_CHUNK_BYTES, bytes - sent)));
  }
  const answer = await link.reader.next(LINK_TEST_ANSWER_TIMEOUT_MS, 'link test result');
  const receiverMs = Number(answer.receiverMs);
  return { bytes, receiverMs, bytesPerSec: (bytes * 1000) / receiverMs };
}

/** Target side: count the announced bytes, answer with the time from first to last. */
export async function serveLinkTest(
  link: { socket: net.Socket; reader: ControlReader },
  nowMs: () => number,
): Promise<void> {
  const request = await link.reader.next(5000, 'link test request');
  const bytes = Number(request.bytes);
  if (
    request.type !== 'linkTest' ||
    !Number.isSafeInteger(bytes) ||
    bytes < 1 ||
    bytes > LINK_TEST_BYTES_MAX
  ) {
    link.socket.destroy();
    return;
  }
  const leftover = link.reader.release();
  let received = leftover.byteLength;
  let firstMs = received > 0 ? nowMs() : 0;
  // Read the way the migration receiver reads (one reused buffer, `readInto`), so the
  // baseline is the fastest this process can take bytes in, not a handicapped reader.
  const all = new Promise<boolean>((resolve) => {
    if (received >= bytes) return resolve(true);
    link.socket.once('close', () => resolve(false));
    readInto(link.socket, new Uint8Array(LINK_TEST_READ_BYTES), (chunk) => {
      if (received === 0) firstMs = nowMs();
      received += chunk.byteLength;
      if (received >= bytes) resolve(true);
      return true;
    });
    link.socket.resume();
  });
  if (!(await all)) return;
  const receiverMs = nowMs() - firstMs;
  await new Promise<void>((resolve) =>
    link.socket.end(encodeControlMessage({ type: 'linkTestDone', receiverMs }), () => resolve()),
  );
}
