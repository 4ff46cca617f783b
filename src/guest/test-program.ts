/**
 * Test support (used by tests only): a tiny guest "program" driven by hand, for tests that put
 * network stacks side by side in one thread. It writes a stream whose byte at offset `o` is a
 * function of (seed, o), so any prefix can be regenerated, reads everything, ends when done,
 * and keeps running CRC-32s of both directions.
 */
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import type { Netstack } from './netstack.ts';
import type { GuestNet, SocketEvent, SocketId } from './socket-api.ts';

/** The state of one test endpoint (its stack and net are replaced after a migration). */
export interface TestEndpoint {
  name: string;
  stack: Netstack;
  net: GuestNet;
  events: SocketEvent[];
  socket: SocketId | null;
  paused: boolean;
  seed: number;
  toSend: number;
  sent: number;
  sendCrc: number;
  received: number;
  receiveCrc: number;
  ended: boolean;
  peerEnded: boolean;
}

/** The program's initial counters. */
export function freshProgram(seed: number, toSend: number) {
  return {
    seed,
    toSend,
    sent: 0,
    sendCrc: 0,
    received: 0,
    receiveCrc: 0,
    ended: false,
    peerEnded: false,
  };
}

/** Byte `o` of a test stream is a function of (seed, o). */
export function streamBytes(seed: number, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    const o = offset + i;
    let x = Math.imul((o >>> 2) ^ seed, 0x9e3779b1);
    x ^= x >>> 15;
    x = Math.imul(x, 0x85ebca77);
    out[i] = (x >>> ((o & 3) * 8)) & 0xff;
  }
  return out;
}

/**
 * One event of the program: poll, take socket events, read everything, write up to
 * `writesMax` chunks (like a program filling its socket until it pushes back), end when done.
 */
export function runTestProgram(
  endpoint: TestEndpoint,
  options: { chunkBytes: number; readBytes: number; writesMax: number },
): void {
  if (endpoint.paused) return;
  endpoint.stack.poll();
  for (const event of endpoint.events.splice(0)) {
    if (event.type === 'connected' || event.type === 'accepted') endpoint.socket = event.socket;
    if (event.type === 'end') endpoint.peerEnded = true;
    if (event.type === 'error') assert.fail(`${endpoint.name} saw ${event.code}: ${event.message}`);
  }
  const socket = endpoint.socket;
  if (socket === null) return;
  for (;;) {
    const bytes = endpoint.net.read(socket, options.readBytes);
    if (bytes.byteLength === 0) break;
    endpoint.received += bytes.byteLength;
    endpoint.receiveCrc = crc32(bytes, endpoint.receiveCrc);
  }
  for (let writes = 0; writes < options.writesMax && endpoint.sent < endpoint.toSend; writes++) {
    const size = Math.min(options.chunkBytes, endpoint.toSend - endpoint.sent);
    const chunk = streamBytes(endpoint.seed, endpoint.sent, size);
    const taken = endpoint.net.write(socket, chunk);
    endpoint.sent += taken;
    endpoint.sendCrc = crc32(chunk.subarray(0, taken), endpoint.sendCrc);
    if (taken < size) break;
  }
  if (endpoint.sent >= endpoint.toSend && !endpoint.ended) {
    endpoint.ended = true;
    endpoint.net.end(socket);
  }
  endpoint.stack.poll();
}
