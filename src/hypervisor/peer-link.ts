/**
 * Connections between hosts (the "physical network" of the testbed): TCP, opened with a mutual
 * HMAC challenge on the cluster key, so a host accepts a migration or frames only from a host
 * that proves it holds the key, and proves the same back (issue 8's requirement; HMAC-SHA256
 * from node:crypto, compared in constant time; no home-made cipher).
 *
 * ```
 * client -> server  {hello: 'xenvmc', purpose, host, clientNonce}
 * server -> client  {serverNonce, host, proof = HMAC(key, "xenvmc-server" \0 transcript)}
 * client -> server  {proof = HMAC(key, "xenvmc-client" \0 transcript)}
 * server -> client  {ok: true}            (or {ok: false, error} and the server closes)
 *
 * transcript = JSON [purpose, client host, clientNonce, server host, serverNonce]
 * ```
 * Nonces are 16 random bytes in hex, fresh per connection on each side, so a recorded
 * transcript replayed to either side fails. Each side proves over the whole transcript (both
 * nonces, the purpose and both host names), so a relay cannot change the purpose or a name
 * without one proof failing, and the two roles' proofs differ so one cannot be reflected as
 * the other. The server proves first, and the client sends its proof only after checking the
 * server's: a host that connects to an impostor gives it nothing to reuse.
 *
 * What this does not give: secrecy or integrity of the bytes after the handshake (there is
 * no session key; a relay on the path could alter the stream after both proofs). The
 * migration stream's CRCs catch faults, not an adversary on the path.
 *
 * Control messages are length-prefixed JSON objects (u32 little-endian length, then UTF-8),
 * bounded before allocation: `MAX_HANDSHAKE_MESSAGE_BYTES` until the peer has proved the
 * key, `MAX_CONTROL_MESSAGE_BYTES` after; a message is parsed only when it is read.
 * After the handshake the socket belongs to its purpose (a migration stream, netback frames
 * or a link test).
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import { TestbedError } from '../core/errors.ts';
import { LinkError } from '../net/link-errors.ts';

/** Control messages are small JSON objects; anything larger is an attack or a bug. */
export const MAX_CONTROL_MESSAGE_BYTES = 1 << 20;
/**
 * Handshake messages are about 200 bytes; before a peer has proved the key it may make us
 * buffer no more than this (plus one socket read).
 */
export const MAX_HANDSHAKE_MESSAGE_BYTES = 4096;
/** A peer that does not finish the handshake in this time is dropped. */
export const HANDSHAKE_TIMEOUT_MS = 5000;
/** A TCP connect that has not completed in this time has failed (a black-holed address). */
export const CONNECT_TIMEOUT_MS = 5000;
/** 16 random bytes in lowercase hex. */
const NONCE_PATTERN = /^[0-9a-f]{32}$/;

/**
 * migration: a pre-copy stream; frames: netback traffic; linkTest: a throughput test; outcome:
 * a source in doubt asks what became of a domain it sent (see `Host.askOutcome`).
 */
export type LinkPurpose = 'migration' | 'frames' | 'linkTest' | 'outcome';
const LINK_PURPOSES: readonly string[] = ['migration', 'frames', 'linkTest', 'outcome'];

export function encodeControlMessage(message: object): Buffer {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const header = Buffer.alloc(4);
  header.writeUInt32LE(body.byteLength, 0);
  return Buffer.concat([header, body]);
}

/**
 * Reads length-prefixed JSON messages from a socket, one per `next()` call. Bytes are parsed
 * only when a message is asked for: what follows the last message asked for (the start of a
 * migration stream, link-test data) stays raw, and `release()` hands it over with the socket.
 * A peer that sends more than a message's worth of unasked bytes is paused (TCP backpressure),
 * so the reader holds at most `maxMessageBytes` plus one socket read.
 */
export class ControlReader {
  /** The largest message accepted now; raised once the peer has proved the key. */
  maxMessageBytes: number;
  private buffered: Buffer = Buffer.alloc(0);
  private waiter: {
    resolve: (m: Record<string, unknown>) => void;
    reject: (e: Error) => void;
  } | null = null;
  /** The link closed or failed; complete messages received before still count. */
  private failure: Error | null = null;
  /** The peer broke the protocol: nothing more is read. */
  private refused: LinkError | null = null;
  private readonly socket: net.Socket;
  private readonly onData = (chunk: Buffer): void => this.push(chunk);
  private readonly onEnd = (): void =>
    this.fail(new LinkError('LINK_CLOSED', 'the peer host closed the connection'));
  private readonly onError = (error: Error): void =>
    this.fail(new LinkError('LINK_CLOSED', `link to the peer host failed: ${error.message}`));

  constructor(socket: net.Socket, options: { maxMessageBytes?: number } = {}) {
    this.maxMessageBytes = options.maxMessageBytes ?? MAX_CONTROL_MESSAGE_BYTES;
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
  }

  next(timeoutMs: number, what: string): Promise<Record<string, unknown>> {
    if (this.waiter) return Promise.reject(new Error('ControlReader.next: already waiting'));
    let message: Record<string, unknown> | null;
    try {
      message = this.take();
    } catch (error) {
      return Promise.reject(error);
    }
    if (message !== null) return Promise.resolve(message);
    if (this.failure) return Promise.reject(this.failure);
    if (this.socket.isPaused()) this.socket.resume();
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
          resolve(m);
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
    if (this.refused) return;
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
    if (this.waiter) {
      let message: Record<string, unknown> | null;
      try {
        message = this.take();
      } catch (error) {
        const waiter = this.waiter;
        this.waiter = null;
        waiter.reject(error as Error);
        return;
      }
      if (message === null) return;
      const waiter = this.waiter;
      this.waiter = null;
      waiter.resolve(message);
    }
    // Nobody asked for more: hold at most one message's worth, then let TCP push back.
    if (this.buffered.length > 4 + this.maxMessageBytes) this.socket.pause();
  }

  /** The next complete message in the buffer, or null; throws (and drops the link) on garbage. */
  private take(): Record<string, unknown> | null {
    if (this.refused) throw this.refused;
    if (this.buffered.length < 4) return null;
    const length = this.buffered.readUInt32LE(0);
    if (length > this.maxMessageBytes) {
      throw this.refuse(
        `control message of ${length} B exceeds the limit of ${this.maxMessageBytes} B`,
      );
    }
    if (this.buffered.length < 4 + length) return null;
    const body = this.buffered.subarray(4, 4 + length);
    this.buffered = this.buffered.subarray(4 + length);
    let message: unknown;
    try {
      message = JSON.parse(body.toString('utf8'));
    } catch {
      throw this.refuse('control message is not JSON');
    }
    if (typeof message !== 'object' || message === null || Array.isArray(message)) {
      throw this.refuse(`control message is JSON ${describeJsonType(message)}, not an object`);
    }
    return message as Record<string, unknown>;
  }

  /** The peer broke the protocol: drop the connection; returns the error to throw. */
  private refuse(reason: string): LinkError {
    this.refused = new LinkError('LINK_MALFORMED', reason);
    this.buffered = Buffer.alloc(0);
    this.socket.destroy();
    return this.refused;
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

function describeJsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}

/** What both proofs cover: everything either side said before proving (unambiguous JSON). */
interface Transcript {
  purpose: string;
  clientHost: string;
  clientNonce: string;
  serverHost: string;
  serverNonce: string;
}

function proof(key: Buffer, role: 'client' | 'server', t: Transcript): string {
  const transcript = JSON.stringify([
    t.purpose,
    t.clientHost,
    t.clientNonce,
    t.serverHost,
    t.serverNonce,
  ]);
  return createHmac('sha256', key).update(`xenvmc-${role}\0${transcript}`).digest('hex');
}

/** A string from the peer (a host name, a reason), safe to log: printable ASCII, bounded. */
function printable(value: unknown, maxLength = 64): string {
  if (typeof value !== 'string') return '';
  return value.replace(/[^\x20-\x7e]/g, '?').slice(0, maxLength);
}

/** Constant-time compare; false (not a throw) for a proof of another length in bytes. */
function sameProof(expected: string, got: unknown): boolean {
  if (typeof got !== 'string') return false;
  const expectedBytes = Buffer.from(expected, 'utf8');
  const gotBytes = Buffer.from(got, 'utf8');
  return gotBytes.length === expectedBytes.length && timingSafeEqual(expectedBytes, gotBytes);
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
  const where = `${address.host}:${address.port}`;
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    let s: net.Socket;
    try {
      s = net.connect(address.port, address.host);
    } catch (error) {
      reject(
        new LinkError('LINK_CLOSED', `cannot connect to ${where}: ${(error as Error).message}`, {
          cause: error,
        }),
      );
      return;
    }
    // A black-holed address would otherwise wait for the kernel's SYN retries (minutes).
    s.setTimeout(CONNECT_TIMEOUT_MS, () => {
      s.destroy();
      reject(
        new LinkError(
          'LINK_TIMEOUT',
          `no TCP connection to host at ${where} within ${CONNECT_TIMEOUT_MS} ms`,
        ),
      );
    });
    s.once('connect', () => {
      s.setTimeout(0);
      resolve(s);
    });
    s.once('error', (error) =>
      reject(
        new LinkError(
          'LINK_CLOSED',
          `cannot reach host at ${where} (${error.message}); is \`xenvmc host\` running there?`,
          { cause: error },
        ),
      ),
    );
  });
  socket.setNoDelay(true);
  const reader = new ControlReader(socket, { maxMessageBytes: MAX_HANDSHAKE_MESSAGE_BYTES });
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
    const serverNonce = challenge.serverNonce;
    const serverHost = challenge.host;
    if (typeof serverNonce !== 'string' || !NONCE_PATTERN.test(serverNonce)) {
      throw new LinkError(
        'LINK_MALFORMED',
        `host at ${where} answered the hello without a valid nonce: is it a xenvmc host?`,
      );
    }
    const transcript: Transcript = {
      purpose: init.purpose,
      clientHost: init.localHost,
      clientNonce,
      serverHost: typeof serverHost === 'string' ? serverHost : '',
      serverNonce,
    };
    if (!sameProof(proof(init.clusterKey, 'server', transcript), challenge.proof)) {
      throw new LinkError(
        'LINK_AUTH_FAILED',
        `host at ${where} did not prove it holds the cluster key; check that both hosts share the same key`,
      );
    }
    socket.write(encodeControlMessage({ proof: proof(init.clusterKey, 'client', transcript) }));
    const verdict = await reader.next(HANDSHAKE_TIMEOUT_MS, 'handshake verdict');
    if (verdict.ok !== true) {
      throw new LinkError(
        'LINK_AUTH_FAILED',
        `host at ${where} refused our cluster key: ${printable(verdict.error, 200) || 'no reason'}`,
      );
    }
    reader.maxMessageBytes = MAX_CONTROL_MESSAGE_BYTES;
    return { socket, reader, peerHost: printable(serverHost) };
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
  // Read (and so keep) the peer's address now: once the socket is destroyed it is gone, and
  // the host logs it with the reason it refused the peer.
  const from = `${socket.remoteAddress}:${socket.remotePort}`;
  socket.setNoDelay(true);
  const reader = new ControlReader(socket, { maxMessageBytes: MAX_HANDSHAKE_MESSAGE_BYTES });
  try {
    const hello = await reader.next(HANDSHAKE_TIMEOUT_MS, 'hello');
    const purpose = hello.purpose;
    const clientNonce = hello.clientNonce;
    const clientHost = hello.host;
    if (
      hello.hello !== 'xenvmc' ||
      typeof purpose !== 'string' ||
      !LINK_PURPOSES.includes(purpose) ||
      typeof clientHost !== 'string' ||
      typeof clientNonce !== 'string' ||
      !NONCE_PATTERN.test(clientNonce)
    ) {
      throw new LinkError(
        'LINK_MALFORMED',
        'peer did not open with a xenvmc hello (purpose, host and a 32-hex-digit nonce)',
      );
    }
    const transcript: Transcript = {
      purpose,
      clientHost,
      clientNonce,
      serverHost: init.localHost,
      serverNonce: randomBytes(16).toString('hex'),
    };
    socket.write(
      encodeControlMessage({
        serverNonce: transcript.serverNonce,
        host: init.localHost,
        proof: proof(init.clusterKey, 'server', transcript),
      }),
    );
    const answer = await reader.next(HANDSHAKE_TIMEOUT_MS, 'handshake proof');
    if (!sameProof(proof(init.clusterKey, 'client', transcript), answer.proof)) {
      socket.end(encodeControlMessage({ ok: false, error: 'cluster key mismatch' }));
      throw new LinkError(
        'LINK_AUTH_FAILED',
        `host '${printable(clientHost)}' at ${from} failed the cluster-key challenge`,
      );
    }
    socket.write(encodeControlMessage({ ok: true }));
    reader.maxMessageBytes = MAX_CONTROL_MESSAGE_BYTES;
    return {
      socket,
      reader,
      peerHost: printable(clientHost),
      purpose: purpose as LinkPurpose,
    };
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
