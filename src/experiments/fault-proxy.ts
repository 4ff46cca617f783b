/**
 * A TCP relay placed between two hosts to inject link faults into a migration stream: cut the
 * link, stall it, or corrupt, truncate or drop bytes once a given number of bytes from the
 * source has passed. Used by the integration tests and fault runs; it listens on loopback
 * only.
 *
 * The cluster-key handshake passes through untouched (it is the first few hundred bytes);
 * faults are placed after `afterBytes` bytes of the source's stream.
 */
import net from 'node:net';
import { RecordRelay } from './record-relay.ts';

export type LinkFault =
  | { kind: 'none' }
  /** Close both sides. */
  | { kind: 'cut'; afterBytes: number }
  /** Stop forwarding (both ways) but keep the sockets open. */
  | { kind: 'stall'; afterBytes: number }
  /** Flip one bit of the byte at this position of the source's stream. */
  | { kind: 'corrupt'; afterBytes: number }
  /** Forward up to this byte, then close the target side cleanly (a truncated stream). */
  | { kind: 'truncate'; afterBytes: number }
  /**
   * Forward the source's stream whole, but cut both sides at the target's first message after
   * this byte of it: past the reservation, that is the notice that the domain resumed there.
   */
  | { kind: 'cut-reply'; afterBytes: number }
  /**
   * Forward the source's stream whole, but at the target's first message after this byte of it
   * (the resumed notice, past the reservation) partition the hosts for `healAfterMs`: nothing
   * passes on open connections any more, and new connections are accepted but never answered,
   * as behind a failed switch. After that, new connections pass again.
   */
  | { kind: 'partition'; afterBytes: number; healAfterMs: number }
  /**
   * Hold back the PAGE_BATCH record holding this byte (or the next one) and send it after the
   * record that follows it.
   */
  | { kind: 'reorder'; afterBytes: number }
  /** Drop the PAGE_BATCH record holding this byte (or the next one). */
  | { kind: 'drop'; afterBytes: number };

export class FaultProxy {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private fault: LinkFault;
  /** Bytes forwarded from the source side, over all connections. */
  forwardedBytes = 0;
  faultFired = false;
  /** Until this time (performance.now()), the relay is partitioned; see `partition`. */
  private partitionedUntilMs = 0;
  /** Client sockets caught open by the partition: they never pass a byte again. */
  private readonly severed = new WeakSet<net.Socket>();

  private constructor(server: net.Server, fault: LinkFault) {
    this.server = server;
    this.fault = fault;
  }

  /** Starts a relay to `target` on an ephemeral loopback port. */
  static async start(
    target: { host: string; port: number },
    fault: LinkFault,
  ): Promise<FaultProxy> {
    const server = net.createServer();
    const proxy = new FaultProxy(server, fault);
    server.on('connection', (client) => proxy.relay(client, target));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    return proxy;
  }

  get address(): string {
    const address = this.server.address() as net.AddressInfo;
    return `127.0.0.1:${address.port}`;
  }

  setFault(fault: LinkFault): void {
    this.fault = fault;
    this.faultFired = false;
    this.forwardedBytes = 0;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Whether the hosts are partitioned now. */
  get partitioned(): boolean {
    return performance.now() < this.partitionedUntilMs;
  }

  private relay(client: net.Socket, target: { host: string; port: number }): void {
    this.sockets.add(client);
    if (this.partitioned) {
      // Accepted, then silence: the peer's handshake times out, as across a partition.
      this.severed.add(client);
      client.on('error', () => {});
      client.resume();
      return;
    }
    const upstream = net.connect(target.port, target.host);
    this.sockets.add(upstream);
    const closeBoth = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', closeBoth);
    upstream.on('error', closeBoth);
    // Across a partition not even a close gets through.
    client.on('close', () => this.severed.has(client) || upstream.end());
    upstream.on('close', () => this.severed.has(client) || client.end());
    const initial = this.fault;
    if (initial.kind === 'reorder' || initial.kind === 'drop') {
      this.relayRecords(client, upstream, new RecordRelay(initial.kind, initial.afterBytes));
      return;
    }
    let stalled = false;
    upstream.on('data', (chunk: Buffer) => {
      const fault = this.fault;
      if (
        (fault.kind === 'cut-reply' || fault.kind === 'partition') &&
        !this.faultFired &&
        this.forwardedBytes > fault.afterBytes
      ) {
        this.faultFired = true;
        if (fault.kind === 'cut-reply') {
          closeBoth();
          return;
        }
        this.partitionedUntilMs = performance.now() + fault.healAfterMs;
        for (const socket of this.sockets) this.severed.add(socket);
      }
      if (!stalled && !this.severed.has(client)) client.write(chunk);
    });
    client.on('data', (chunk: Buffer) => {
      if (stalled || client.destroyed || this.severed.has(client)) return;
      const fault = this.fault;
      const start = this.forwardedBytes;
      this.forwardedBytes += chunk.length;
      if (
        fault.kind === 'none' ||
        fault.kind === 'cut-reply' ||
        fault.kind === 'partition' ||
        this.faultFired ||
        this.forwardedBytes <= fault.afterBytes
      ) {
        upstream.write(chunk);
        return;
      }
      this.faultFired = true;
      const at = fault.afterBytes - start;
      switch (fault.kind) {
        case 'cut':
          upstream.write(chunk.subarray(0, at));
          closeBoth();
          return;
        case 'stall':
          upstream.write(chunk.subarray(0, at));
          stalled = true;
          return;
        case 'corrupt': {
          const copy = Buffer.from(chunk);
          copy[at] = copy[at]! ^ 0x10;
          upstream.write(copy);
          return;
        }
        case 'truncate':
          upstream.end(chunk.subarray(0, at));
          client.destroy();
          return;
      }
    });
  }

  /** A relay that passes the source's stream whole records at a time (`RecordRelay`). */
  private relayRecords(client: net.Socket, upstream: net.Socket, records: RecordRelay): void {
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    client.on('data', (chunk: Buffer) => {
      this.forwardedBytes += chunk.length;
      for (const bytes of records.push(chunk)) upstream.write(bytes);
      if (records.fired) this.faultFired = true;
    });
  }
}
