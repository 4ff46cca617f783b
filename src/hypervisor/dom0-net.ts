/**
 * Dom0's own network endpoint and port forwarding: a host port that a real client outside the
 * testbed (nodemailer, `nc`, Python's smtplib) connects to, relayed to a port of a guest
 * domain through the same bridge and netfront path as any guest traffic.
 *
 * Dom0 runs the guest network stack itself (netstack.ts) on its main thread, over a small
 * memory of its own that is never migrated, attached to the bridge like a domain. Each
 * forwarded connection is a `net.Socket` piped to a `GuestSocketDuplex`. The forward keeps the
 * domain's IP, so it keeps working after the domain migrates to another host: the bridge then
 * routes its frames over the link.
 */
import net from 'node:net';
import type { Clock, TimerHandle } from '../core/clock.ts';
import { InputError } from '../core/errors.ts';
import type { Netstack } from '../guest/netstack.ts';
import { Netstack as NetstackClass } from '../guest/netstack.ts';
import type { GuestNet, SocketEvent, SocketId } from '../guest/socket-api.ts';
import { connectDuplex, type GuestSocketDuplex } from '../guest/socket-duplex.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout, MIN_DOMAIN_PAGES } from '../memory/layout.ts';
import type { BridgeEndpoint } from './bridge.ts';

/** Forwarded connections open at once, per host (each holds two socket buffers in Dom0). */
const FORWARD_SESSIONS_MAX = 64;

export interface ForwardView {
  listen: string;
  targetIp: string;
  targetPort: number;
  sessionsOpen: number;
  sessionsTotal: number;
  bytesIn: number;
  bytesOut: number;
}

interface Forward {
  server: net.Server;
  view: ForwardView;
}

/** Dom0 as a network endpoint on its host's bridge. */
export class Dom0Net implements BridgeEndpoint {
  readonly identity: { ip: string; name: string };
  readonly memory: GuestMemory;
  readonly guestRunning = true;
  onNetTx: () => void = () => {};
  private readonly stack: Netstack;
  private readonly net: GuestNet;
  private readonly clock: Clock;
  private readonly duplexes = new Map<SocketId, GuestSocketDuplex>();
  private readonly forwards: Forward[] = [];
  private pollScheduled = false;
  private timer: TimerHandle | null = null;

  constructor(components: { clock: Clock }, init: { ip: string }) {
    this.clock = components.clock;
    this.identity = { ip: init.ip, name: 'dom0' };
    // The smallest domain layout: 2 MiB of socket buffers, enough for 64 sessions of 16 KiB.
    this.memory = GuestMemory.create(defaultLayout(MIN_DOMAIN_PAGES * 2, { sockbuf: 2048 }));
    this.stack = NetstackClass.boot(
      {
        memory: this.memory,
        nowMs: () => this.clock.nowMs(),
        notifyBackend: () => this.onNetTx(),
        deliver: (_programId, event) => this.deliver(event),
        setTimer: (dueMs) => this.armTimer(dueMs),
      },
      { ip: init.ip, seed: 0 },
    );
    const stackNet = this.stack.netFor(1);
    // Every call a Duplex makes is followed by a poll on the next turn (batched).
    const polled =
      <A extends unknown[], R>(call: (...args: A) => R) =>
      (...args: A): R => {
        const result = call(...args);
        this.schedulePoll();
        return result;
      };
    this.net = {
      ip: stackNet.ip,
      listen: polled(stackNet.listen),
      unlisten: polled(stackNet.unlisten),
      connect: polled(stackNet.connect),
      write: polled(stackNet.write),
      read: polled(stackNet.read),
      end: polled(stackNet.end),
      close: polled(stackNet.close),
      info: stackNet.info,
    };
  }

  notifyRx(): void {
    this.schedulePoll();
  }

  notifyPeerMoved(ip: number): void {
    this.stack.rewindAll(ip);
    this.schedulePoll();
  }

  /** Relays `listen` (host:port on this machine) to `targetIp:targetPort` inside the testbed. */
  async addForward(
    listen: { host: string; port: number },
    targetIp: string,
    targetPort: number,
  ): Promise<ForwardView> {
    if (!Number.isInteger(targetPort) || targetPort < 1 || targetPort > 65535) {
      throw new InputError(`forward target port ${targetPort} is not in 1..65535`);
    }
    const view: ForwardView = {
      listen: '',
      targetIp,
      targetPort,
      sessionsOpen: 0,
      sessionsTotal: 0,
      bytesIn: 0,
      bytesOut: 0,
    };
    // Half-open, like the guest socket: the client may go on sending after the guest ended.
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.relay(socket, view));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error) =>
        reject(
          new InputError(
            `cannot listen on ${listen.host}:${listen.port} for the forward: ${error.message}`,
          ),
        ),
      );
      server.listen(listen.port, listen.host, () => resolve());
    });
    const address = server.address() as net.AddressInfo;
    view.listen = `${address.address}:${address.port}`;
    this.forwards.push({ server, view });
    return view;
  }

  listForwards(): ForwardView[] {
    return this.forwards.map((f) => f.view);
  }

  close(): void {
    for (const forward of this.forwards) forward.server.close();
    for (const duplex of this.duplexes.values()) duplex.destroy();
    this.timer?.cancel();
  }

  private relay(socket: net.Socket, view: ForwardView): void {
    if (view.sessionsOpen >= FORWARD_SESSIONS_MAX) {
      socket.destroy();
      return;
    }
    let duplex: GuestSocketDuplex;
    try {
      duplex = connectDuplex(this.net, view.targetIp, view.targetPort);
    } catch {
      socket.destroy();
      return;
    }
    this.duplexes.set(duplex.socket, duplex);
    view.sessionsOpen++;
    view.sessionsTotal++;
    socket.on('data', (chunk: Buffer) => {
      view.bytesIn += chunk.byteLength;
    });
    duplex.on('data', (chunk: Buffer) => {
      view.bytesOut += chunk.byteLength;
    });
    // Errors tear both sides down. A clean close of the client's socket does not: the guest
    // socket may still hold bytes the client sent (waiting for room in the guest's window),
    // and the pipe has already called `end()` on it, so it closes once they are all taken.
    const abort = (): void => {
      socket.destroy();
      duplex.destroy();
    };
    socket.on('error', abort);
    duplex.on('error', abort);
    duplex.on('close', () => {
      if (!this.duplexes.delete(duplex.socket)) return;
      view.sessionsOpen--;
      socket.destroy();
    });
    socket.pipe(duplex).pipe(socket);
  }

  /** Socket events are held until the poll that produced them is over, as the kernel does. */
  private readonly events: SocketEvent[] = [];

  private deliver(event: SocketEvent): void {
    this.events.push(event);
  }

  private schedulePoll(): void {
    if (this.pollScheduled) return;
    this.pollScheduled = true;
    setImmediate(() => {
      this.pollScheduled = false;
      this.stack.poll();
      for (const event of this.events.splice(0))
        this.duplexes.get(event.socket)?.handleEvent(event);
    });
  }

  private armTimer(dueMs: number | null): void {
    this.timer?.cancel();
    this.timer =
      dueMs === null
        ? null
        : this.clock.setTimer(dueMs - this.clock.nowMs(), () => this.schedulePoll(), {
            unref: true,
          });
  }
}
