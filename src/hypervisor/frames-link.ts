/**
 * The inter-host data path for guest frames: one authenticated TCP link per peer host, opened
 * on first use, carrying frames (and small control messages such as a gratuitous ARP) through
 * the host's egress shaper as 'intervm' traffic.
 *
 * ```
 * message: u32 length (little-endian, kind byte + payload) | u8 kind | payload
 * kind 1: a guest frame, as it left the sender's TX ring
 * kind 2: JSON control: {type: 'hello', link}, {type: 'garp', ip, link}
 * ```
 * Frames are batched per link and written once per turn of the event loop (a shaper call per
 * frame would cost more than the frame). A link whose queue passes `QUEUE_BYTES_MAX` drops
 * frames, as a full NIC queue does; guest streams resend them.
 */
import type net from 'node:net';
import type { EgressShaper } from '../net/shaper.ts';
import type { AuthenticatedLink } from './peer-link.ts';

const KIND_FRAME = 1;
const KIND_CONTROL = 2;
/** A frame fits a ring slot; control messages are small. */
const MESSAGE_BYTES_MAX = 64 * 1024;
/** Bytes queued for one peer before frames are dropped. */
const QUEUE_BYTES_MAX = 16 * 1024 * 1024;

export interface FramesControl {
  type: 'hello' | 'garp';
  link: string;
  ip?: number;
}

interface PeerLink {
  socket: net.Socket | null;
  connecting: Promise<void> | null;
  queue: Uint8Array[];
  queuedBytes: number;
  flushing: boolean;
}

export interface FramesLinksComponents {
  shaper: EgressShaper;
  connect: (link: string) => Promise<AuthenticatedLink>;
  onFrame: (frame: Uint8Array, peerLink: string) => void;
  onControl: (message: FramesControl, peerLink: string) => void;
  log: (line: string) => void;
}

export class FramesLinks {
  /** Frames dropped because a peer's queue was full or its link could not be opened. */
  framesDropped = 0;
  private readonly components: FramesLinksComponents;
  private readonly ownLink: string;
  private readonly peers = new Map<string, PeerLink>();

  constructor(components: FramesLinksComponents, init: { ownLink: string }) {
    this.components = components;
    this.ownLink = init.ownLink;
  }

  /** Queues a frame for the host at `link`, opening the link if needed. */
  send(link: string, frame: Uint8Array): void {
    this.enqueue(link, KIND_FRAME, frame);
  }

  /** Sends a control message to every peer we have a link with (a broadcast on the switch). */
  broadcast(message: FramesControl): void {
    for (const link of this.peers.keys()) this.control(link, message);
  }

  control(link: string, message: FramesControl): void {
    this.enqueue(link, KIND_CONTROL, new TextEncoder().encode(JSON.stringify(message)));
  }

  /** Takes an incoming link (after the cluster-key handshake). */
  adopt(link: AuthenticatedLink): void {
    const leftover = link.reader.release();
    let peerLink: string | null = null;
    this.read(link.socket, leftover, (kind, payload) => {
      if (kind === KIND_CONTROL) {
        const message = parseControl(payload);
        if (!message) return;
        if (message.type === 'hello') {
          peerLink = message.link;
          const peer = this.peer(message.link);
          if (!peer.socket) {
            peer.socket = link.socket;
            this.schedule(message.link, peer);
          }
          return;
        }
        if (peerLink) this.components.onControl(message, peerLink);
      } else if (kind === KIND_FRAME && peerLink) {
        this.components.onFrame(payload, peerLink);
      }
    });
  }

  close(): void {
    for (const peer of this.peers.values()) peer.socket?.destroy();
    this.peers.clear();
  }

  private peer(link: string): PeerLink {
    let peer = this.peers.get(link);
    if (!peer) {
      peer = { socket: null, connecting: null, queue: [], queuedBytes: 0, flushing: false };
      this.peers.set(link, peer);
    }
    return peer;
  }

  private enqueue(link: string, kind: number, payload: Uint8Array): void {
    const peer = this.peer(link);
    if (peer.queuedBytes + payload.byteLength > QUEUE_BYTES_MAX) {
      this.framesDropped++;
      return;
    }
    const message = new Uint8Array(5 + payload.byteLength);
    new DataView(message.buffer).setUint32(0, 1 + payload.byteLength, true);
    message[4] = kind;
    message.set(payload, 5);
    peer.queue.push(message);
    peer.queuedBytes += message.byteLength;
    if (!peer.socket && !peer.connecting) this.open(link, peer);
    else this.schedule(link, peer);
  }

  private open(link: string, peer: PeerLink): void {
    peer.connecting = this.components
      .connect(link)
      .then((authenticated) => {
        peer.socket = authenticated.socket;
        // We opened it: say who we are, then read what the peer sends back on it.
        const hello = new TextEncoder().encode(
          JSON.stringify({ type: 'hello', link: this.ownLink }),
        );
        const message = new Uint8Array(5 + hello.byteLength);
        new DataView(message.buffer).setUint32(0, 1 + hello.byteLength, true);
        message[4] = KIND_CONTROL;
        message.set(hello, 5);
        peer.queue.unshift(message);
        peer.queuedBytes += message.byteLength;
        const leftover = authenticated.reader.release();
        this.read(authenticated.socket, leftover, (kind, payload) => {
          if (kind === KIND_FRAME) this.components.onFrame(payload, link);
          else {
            const control = parseControl(payload);
            if (control && control.type !== 'hello') this.components.onControl(control, link);
          }
        });
        this.schedule(link, peer);
      })
      .catch((error: Error) => {
        this.framesDropped += peer.queue.length;
        peer.queue = [];
        peer.queuedBytes = 0;
        this.components.log(`frames link to ${link} failed: ${error.message}`);
      })
      .finally(() => {
        peer.connecting = null;
      });
  }

  private schedule(link: string, peer: PeerLink): void {
    if (peer.flushing || !peer.socket) return;
    peer.flushing = true;
    setImmediate(() => void this.flush(link, peer));
  }

  private async flush(link: string, peer: PeerLink): Promise<void> {
    try {
      while (peer.queue.length > 0 && peer.socket) {
        const batch = concat(peer.queue);
        peer.queue = [];
        peer.queuedBytes = 0;
        await this.components.shaper.send(peer.socket, batch, 'intervm');
      }
    } catch (error) {
      this.components.log(`frames link to ${link} closed: ${(error as Error).message}`);
      peer.socket?.destroy();
      peer.socket = null;
    } finally {
      peer.flushing = false;
    }
  }

  private read(
    socket: net.Socket,
    leftover: Uint8Array,
    onMessage: (kind: number, payload: Uint8Array) => void,
  ): void {
    let buffered: Uint8Array = leftover;
    const onData = (chunk: Uint8Array): void => {
      buffered = buffered.byteLength ? concat([buffered, chunk]) : chunk;
      let offset = 0;
      while (buffered.byteLength - offset >= 5) {
        const length = new DataView(buffered.buffer, buffered.byteOffset + offset).getUint32(
          0,
          true,
        );
        if (length < 1 || length > MESSAGE_BYTES_MAX) {
          this.components.log(`frames link sent a message of ${length} B: closing it`);
          socket.destroy();
          return;
        }
        if (buffered.byteLength - offset < 4 + length) break;
        const kind = buffered[offset + 4]!;
        onMessage(kind, buffered.slice(offset + 5, offset + 4 + length));
        offset += 4 + length;
      }
      buffered = buffered.subarray(offset);
    };
    socket.on('data', onData);
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      for (const [link, peer] of this.peers) {
        if (peer.socket === socket) {
          peer.socket = null;
          this.peers.delete(link);
        }
      }
    });
    socket.resume();
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  let total = 0;
  for (const part of parts) total += part.byteLength;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

function parseControl(payload: Uint8Array): FramesControl | null {
  try {
    const message = JSON.parse(new TextDecoder().decode(payload)) as FramesControl;
    if ((message.type === 'hello' || message.type === 'garp') && typeof message.link === 'string')
      return message;
  } catch {
    // Not JSON: ignored, like any malformed frame.
  }
  return null;
}
