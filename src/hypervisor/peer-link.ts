/**
 * Connections between hosts (the "physical network" of the testbed): TCP, opened with a mutual
 * HMAC challenge on the cluster key, so a host accepts a migration or frames only from a host
 * that proves it holds the key, and proves the same back (issue 8's requirement; HMAC-SHA256
 * from node:crypto, compared in constant time; no home-made cipher).
 *
 * ```
 * client -> server  {hello, purpose, host, clientNonce}
 * server -> client  {serverNonce, proof = HMAC(key, "server" | clientNonce | serverNonce)}
 * client -> server  {proof = HMAC(key, "client" | serverNonce | clientNonce)}
 * server -> client  {ok: true}
 * ```
 * Control messages are length-prefixed JSON (u32 little-endian length, then UTF-8), bounded
 * by `MAX_CONTROL_MESSAGE_BYTES` before allocation. After the handshake the socket belongs to
 * its purpose (a migration stream, or netback frames).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import { TestbedError } from '../core/errors.ts';
import { LinkError } from '../net/link-errors.ts';

/** Control messages are small JSON objects; anything larger is an attack or a bug. */
export const MAX_CONTROL_MESSAGE_BYTES = 1 << 20;
/** A peer that does not finish the handshake in this time is dropped. */
export const HANDSHAKE_TIMEOUT_MS = 5000;

/** migration: a pre-copy stream; frames: netback traffic; linkTest: a throughput test. */
export type LinkPurpose = 'migration' | 'frames' | 'linkTest';
const LINK_PURPOSES: readonly string[] = ['migration', 'frames', 'linkTest'];

export function encodeControlMessage(message: object): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const header = Buffer.alloc(4);
  header.writeUInt32LE(body.byteLength, 0);
  return Buffer.concat([header, body]);
}

/**
 * Reads length-prefixed JSON messages from a socket. `next()` resolves with the next message;
 * `release()` stops reading and returns the bytes received beyond the last message (the start
 * of a migration stream that followed the handshake).
 */
export class ControlReader {
  private buffered: Buffer = Buffer.alloc(0);
  private readonly messages: unknown[] = [];
  private waiter: { resolve: (m: unknown) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private readonly socket: net.Socket;
  private readonly onData = (chunk: Buffer): void => this.push(chunk);
  private readonly onEnd = (): void =>
    this.fail(new LinkError('LINK_CLOSED', 'the peer host closed the connection'));
  private readonly onError = (error: Error): void =>
    this.fail(new LinkError('LINK_CLOSED', `link to the peer host failed: ${error.message}`));

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  next(timeoutMs: number, what: string): Promise<Record<string, unknown>> {
    if (this.messages.length > 0) {
      return Promise.resolve(this.messages.shift() as Record<string, unknown>);
    }
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(
          new LinkError('LINK_TIMEOUT', `no ${what} from the peer host within ${timeoutMs} ms`),
        );
      }, timeoutMs);
      this.waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m as Record<string, unknown>);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  release(): Buffer {
    // Stop the flow first: with no 'data' listener left, a flowing socket would drop bytes.
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    const rest = this.buffered;
    this.buffered = Buffer.alloc(0);
    return rest;
  }

  private push(chunk: Buffer): void {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    while (this.buffered.length >= 4) {
      const length = this.buffered.readUInt32LE(0);
      if (length > MAX_CONTROL_MESSAGE_BYTES) {
        this.fail(
          new LinkError('LINK_MALFORMED', `control message of ${length} B exceeds the limit`),
        );
        this.socket.destroy();
        return;
      }
      if (this.buffered.length < 4 + length) return;
      const body = this.buffered.subarray(4, 4 + length);
      this.buffered = this.buffered.subarray(4 + length);
      let message: unknown;
      try {
        message = JSON.parse(body.toString('utf8'));
      } catch {
        this.fail(new LinkError('LINK_MALFORMED', 'control message is not JSON'));
        this.socket.destroy();
        return;
      }
      if (this.waiter) {
        const waiter = this.waiter;
        this.waiter = null;
        waiter.resolve(message);
      } else {
        this.messages.push(message);
      }
    }
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    if (this.waiter) {
      const waiter = this.waiter;
      this.waiter = null;
      waiter.reject(error);
    }
  }
}

function proof(key: Buffer, role: string, first: string, second: string): string {
  return createHmac('sha256', key).update(`${role}|${first}|${second}`).digest('hex');
}

function sameProof(expected: string, got: unknown): boolean {
  if (typeof got !== 'string' || got.length !== expected.length) return false;
  return timingSafeEqual(Buffer.from(expected), Buffer.from(got));
}

export interface AuthenticatedLink {
  socket: net.Socket;
  reader: ControlReader;
  peerHost: string;
}

/** Opens a link to another host and authenticates both ends. */
export async function connectToPeer(
  address: { host: string; port: number },
  init: { clusterKey: Buffer; localHost: string; purpose: LinkPurpose },
): Promise<AuthenticatedLink> {
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect(address.port, address.host);
    s.once('connect', () => resolve(s));
    s.once('error', (error) =>
      reject(
        new LinkError(
          'LINK_CLOSED',
          `cannot reach host at ${address.host}:${address.port} (${error.message}); is \`xenvmc host\` running there?`,
          { cause: error },
        ),
      ),
    );
  });
  socket.setNoDelay(true);
  const reader = new ControlReader(socket);
  try {
    const clientNonce = randomBytes(16).toString('hex');
    socket.write(
      encodeControlMessage({
        hello: 'xenvmc',
        purpose: init.purpose,
        host: init.localHost,
        clientNonce,
      }),
    );
    const challenge = await reader.next(HANDSHAKE_TIMEOUT_MS, 'handshake challenge');
    const serverNonce = String(challenge.serverNonce ?? '');
    if (!sameProof(proof(init.clusterKey, 'server', clientNonce, serverNonce), challenge.proof)) {
      throw new LinkError(
        'LINK_AUTH_FAILED',
        `host at ${address.host}:${address.port} did not prove it holds the cluster key; check that both hosts share the same key`,
      );
    }
    socket.write(
      encodeControlMessage({ proof: proof(init.clusterKey, 'client', serverNonce, clientNonce) }),
    );
    const verdict = await reader.next(HANDSHAKE_TIMEOUT_MS, 'handshake verdict');
    if (verdict.ok !== true) {
      throw new LinkError(
        'LINK_AUTH_FAILED',
        `host at ${address.host}:${address.port} refused our cluster key: ${String(verdict.error ?? 'no reason')}`,
      );
    }
    return { socket, reader, peerHost: String(challenge.host ?? '') };
  } catch (error) {
    socket.destroy();
    throw error;
  }
}

/** Runs the server side of the handshake on an accepted socket. */
export async function acceptPeer(
  socket: net.Socket,
  init: { clusterKey: Buffer; localHost: string },
): Promise<AuthenticatedLink & { purpose: LinkPurpose }> {
  socket.setNoDelay(true);
  const reader = new ControlReader(socket);
  try {
    const hello = await reader.next(HANDSHAKE_TIMEOUT_MS, 'hello');
    const purpose = hello.purpose;
    if (
      hello.hello !== 'xenvmc' ||
      typeof purpose !== 'string' ||
      !LINK_PURPOSES.includes(purpose)
    ) {
      throw new LinkError('LINK_MALFORMED', 'peer did not open with a xenvmc hello');
    }
    const clientNonce = String(hello.clientNonce ?? '');
    const serverNonce = randomBytes(16).toString('hex');
    socket.write(
      encodeControlMessage({
        serverNonce,
        host: init.localHost,
        proof: proof(init.clusterKey, 'server', clientNonce, serverNonce),
      }),
    );
    const answer = await reader.next(HANDSHAKE_TIMEOUT_MS, 'handshake proof');
    if (!sameProof(proof(init.clusterKey, 'client', serverNonce, clientNonce), answer.proof)) {
      socket.end(encodeControlMessage({ ok: false, error: 'cluster key mismatch' }));
      throw new LinkError(
        'LINK_AUTH_FAILED',
        `host '${String(hello.host)}' at ${socket.remoteAddress}:${socket.remotePort} failed the cluster-key challenge`,
      );
    }
    socket.write(encodeControlMessage({ ok: true }));
    return { socket, reader, peerHost: String(hello.host ?? ''), purpose: purpose as LinkPurpose };
  } catch (error) {
    socket.destroy();
    throw error;
  }
}

/** Parses `host:port` (IPv4, [IPv6] or a name). */
export function parseAddress(text: string, what = 'address'): { host: string; port: number } {
  const match = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[2]) : Number.NaN;
  if (!match || port > 65535) {
    throw new TestbedError(
      'INPUT_INVALID',
      `${what} '${text}' is not host:port (e.g. 127.0.0.1:7001)`,
    );
  }
  return { host: match[1]!, port };
}
