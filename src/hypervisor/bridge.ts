/**
 * Dom0's bridge and netback: moves frames from each domain's TX ring to the RX ring of the
 * domain that owns the target IP on this host (a grant copy, which dirties the receiver's RX
 * ring pages, as GNTTABOP_copy does in Xen), or onto the link to the host that owns it.
 *
 * Like a learning switch: local IPs come from the domains attached here; remote ones from the
 * hosts' announcements (a gratuitous ARP after a migration), from the source addresses of
 * frames that arrive over a link, and from the forwarding table a migrating domain brings.
 * A frame for an IP nobody knows is answered with UNREACHABLE.
 *
 * Netback never touches a paused domain's rings: after the final pause of a migration, every
 * write into its memory would be missing from the target (and from the memory check). Frames
 * for it are dropped and counted; the sender's stream resends them (principle 2).
 */

import { netfrontPlacement } from '../guest/netstack.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  ipToU32,
  isFrameDecodeError,
  refusalFor,
  u32ToIp,
} from '../net/frame.ts';
import { NetfrontRing } from '../net/netfront-ring.ts';

/** What the bridge needs of an endpoint: a guest domain, or Dom0's own stack. */
export interface BridgeEndpoint {
  readonly identity: { ip: string | null; name: string };
  readonly memory: GuestMemory;
  /** Netback touches the rings only while this holds. */
  readonly guestRunning: boolean;
  onNetTx: () => void;
  notifyRx(): void;
  notifyPeerMoved(ip: number): void;
}

/** Frames Dom0 holds for a domain whose RX ring is full, before it drops (bounded memory). */
const BACKLOG_FRAMES_MAX = 4096;

export interface BridgeCounters {
  framesSwitchedLocal: number;
  framesToRemote: number;
  framesFromRemote: number;
  bytesSwitchedLocal: number;
  framesDroppedPaused: number;
  framesDroppedBacklog: number;
  framesMalformed: number;
  framesUnreachable: number;
  framesUnroutable: number;
}

interface NetbackPort {
  domain: BridgeEndpoint;
  ip: number;
  tx: NetfrontRing;
  rx: NetfrontRing;
  backlog: Uint8Array[];
}

type Route = { kind: 'local'; port: NetbackPort } | { kind: 'remote'; link: string };

export interface BridgeComponents {
  /** Sends an encoded frame to the host at `link` (host:port); false if that is impossible. */
  sendRemote: (link: string, frame: Uint8Array) => void;
  log: (line: string) => void;
}

export class Bridge {
  readonly counters: BridgeCounters = {
    framesSwitchedLocal: 0,
    framesToRemote: 0,
    framesFromRemote: 0,
    bytesSwitchedLocal: 0,
    framesDroppedPaused: 0,
    framesDroppedBacklog: 0,
    framesMalformed: 0,
    framesUnreachable: 0,
    framesUnroutable: 0,
  };
  private readonly components: BridgeComponents;
  private readonly routes = new Map<number, Route>();
  private readonly ports = new Map<BridgeEndpoint, NetbackPort>();

  constructor(components: BridgeComponents) {
    this.components = components;
  }

  /** Connects a domain's netfront to the bridge; its IP now routes here. */
  attach(domain: BridgeEndpoint): void {
    if (domain.identity.ip === null) return;
    const memory = domain.memory;
    const placement = netfrontPlacement(memory);
    const ringInit = { slotCount: placement.slotCount, slotSizeBytes: placement.slotSizeBytes };
    const port: NetbackPort = {
      domain,
      ip: ipToU32(domain.identity.ip),
      tx: new NetfrontRing(memory, { address: placement.txAddress, ...ringInit }),
      rx: new NetfrontRing(memory, { address: placement.rxAddress, ...ringInit }),
      backlog: [],
    };
    this.ports.set(domain, port);
    this.routes.set(port.ip, { kind: 'local', port });
    domain.onNetTx = () => this.service(port);
    // Kicks that came before this reached the no-op `onNetTx` and were lost; the pending bit
    // folded the guest's later kicks into them, and a guest whose TX ring filled meanwhile
    // never kicks again (a booting client's SYN retransmits did, with many boots at once).
    // So look at the ring once now. A domain not running yet (restored by a migration) is
    // looked at when it resumes (`kick`).
    this.service(port);
  }

  /** Disconnects a domain (destroyed, or migrated away: then `moved` says where it went). */
  detach(domain: BridgeEndpoint, moved?: { link: string }): void {
    const port = this.ports.get(domain);
    if (!port) return;
    this.ports.delete(domain);
    domain.onNetTx = () => {};
    if (moved) {
      this.routes.set(port.ip, { kind: 'remote', link: moved.link });
      this.announceMove(port.ip);
    } else if (this.routes.get(port.ip)?.kind === 'local') {
      this.routes.delete(port.ip);
    }
  }

  /** Runs netback for a domain that can take frames again (resumed after a pause). */
  kick(domain: BridgeEndpoint): void {
    const port = this.ports.get(domain);
    if (port) this.service(port);
  }

  /** `ip` lives on the host at `link` (learned); local domains are told if it moved. */
  learn(ip: number, link: string, announce: boolean): void {
    const current = this.routes.get(ip);
    if (current?.kind === 'local') return;
    const changed = current?.kind !== 'remote' || current.link !== link;
    this.routes.set(ip, { kind: 'remote', link });
    if (changed && announce) this.announceMove(ip);
  }

  /** Host links this bridge knows of (where a gratuitous ARP must go). */
  knownLinks(): string[] {
    const links = new Set<string>();
    for (const route of this.routes.values()) if (route.kind === 'remote') links.add(route.link);
    return [...links];
  }

  /** The forwarding table, for a migrating domain to take along (local IPs map to `ownLink`). */
  table(ownLink: string): { ip: string; link: string }[] {
    return [...this.routes].map(([ip, route]) => ({
      ip: u32ToIp(ip),
      link: route.kind === 'local' ? ownLink : route.link,
    }));
  }

  /** A frame that arrived over a link from another host. */
  fromRemote(bytes: Uint8Array, peerLink: string): void {
    this.counters.framesFromRemote++;
    const frame = decodeFrame(bytes);
    if (isFrameDecodeError(frame)) {
      this.counters.framesMalformed++;
      return;
    }
    this.learn(frame.sourceIp, peerLink, false);
    this.forward(frame, bytes, null);
  }

  // ---- netback -------------------------------------------------------------------------------

  /** Drains a domain's TX ring and retries its backlog. */
  private service(port: NetbackPort): void {
    if (!port.domain.guestRunning) return;
    this.flushBacklog(port);
    for (;;) {
      const frames = port.tx.popMany();
      if (frames.length === 0) break;
      for (const bytes of frames) {
        const frame = decodeFrame(bytes);
        if (isFrameDecodeError(frame) || frame.sourceIp !== port.ip) {
          // Malformed, or spoofing another domain's address: dropped.
          this.counters.framesMalformed++;
          continue;
        }
        this.forward(frame, bytes, port);
      }
    }
  }

  private forward(frame: Frame, bytes: Uint8Array, from: NetbackPort | null): void {
    const route = this.routes.get(frame.targetIp);
    if (route?.kind === 'local') {
      this.deliver(route.port, bytes);
    } else if (from === null) {
      // From another host, for an IP that is not here (its route is stale, the domain just
      // left): dropped, never bounced between hosts; the sender resends once it hears the
      // gratuitous ARP.
      this.counters.framesUnroutable++;
    } else if (route?.kind === 'remote') {
      this.counters.framesToRemote++;
      this.components.sendRemote(route.link, bytes);
    } else {
      // A local sender asked for an IP nobody has: UNREACHABLE, so its connect fails at once.
      this.counters.framesUnreachable++;
      const refusal = refusalFor(frame, 'unreachable');
      if (refusal) this.deliver(from, encodeFrame(refusal));
    }
  }

  /** Copies a frame into a domain's RX ring (or its backlog) and kicks its event channel. */
  private deliver(port: NetbackPort, bytes: Uint8Array): void {
    if (!port.domain.guestRunning) {
      this.counters.framesDroppedPaused++;
      return;
    }
    if (port.backlog.length > 0 || port.rx.tryPush(bytes) === 'full') {
      if (port.backlog.length >= BACKLOG_FRAMES_MAX) {
        this.counters.framesDroppedBacklog++;
        return;
      }
      port.backlog.push(bytes.slice());
    } else {
      this.counters.framesSwitchedLocal++;
      this.counters.bytesSwitchedLocal += bytes.byteLength;
    }
    port.domain.notifyRx();
  }

  private flushBacklog(port: NetbackPort): void {
    if (port.backlog.length === 0) return;
    const pushed = port.rx.pushMany(port.backlog);
    port.backlog.splice(0, pushed);
    this.counters.framesSwitchedLocal += pushed;
    if (pushed > 0) port.domain.notifyRx();
  }

  private announceMove(ip: number): void {
    for (const port of this.ports.values()) port.domain.notifyPeerMoved(ip);
    const route = this.routes.get(ip);
    this.components.log(
      `route: ${u32ToIp(ip)} is now ${route?.kind === 'remote' ? `at ${route.link}` : 'here'}`,
    );
  }
}
