/**
 * The guest side of XENVMC, the paper's six modules in one kernel module (§9), with the
 * Advance-XENVMC modification (§10):
 *
 * - VM State Publisher client: keeps this guest's `CoResidents` table (the paper's `VMs[]`)
 *   from Dom0's notices;
 * - System Call Analyzer: the `StreamCarrier` hook the socket layer calls on every write and
 *   read; a stream to a co-resident peer of the same tenant gets a channel, others keep
 *   netfront, and the program cannot tell;
 * - Connection Manager: a `Connection` (the paper's `conn_t`) per stream, set up with the
 *   paper's handshake (region granted, event channel allocated, offer sent through the
 *   message manager, peer maps, binds and answers ready) and torn down in order;
 * - Data Transfer Manager: two `SharedFifo`s per connection in the granted region (one per
 *   direction); the program's bytes go straight in and out of them (no socket buffer);
 * - Event and Message Manager: hypercalls to Dom0, messages relayed by Dom0, and an event
 *   channel (a MessagePort pair) per connection for "data ready" and "room free";
 * - Live Migration Assistant: the modes. `xenvmc` cancels a connection as soon as either end
 *   starts migrating; `xenvmc-suspend` cancels at the final pause; `advance` keeps it through
 *   pre-copy and runs `finish_mig` when the migration ends.
 *
 * Exactly-once (principle 2): a channel direction starts only when nothing is in flight on
 * netfront (its base is the sender's written offset); at tear-down the reader stops and its
 * consumed offset is final, and the sender takes back what was never read and resends it over
 * netfront from that offset (more than its send buffer holds waits in the stream's
 * `sendOverflow`). The reader keeps the region until the sender marked those bytes taken
 * back: a sender paused and migrated before it could leaves them to the reader, which then
 * delivers them itself. In Advance mode the peer that stays behind does the same once its
 * partner is gone: it drains what the departed domain wrote, and takes back what the
 * departed domain never read.
 *
 * State: the `XenvmcState` is plain data and travels in the GuestState; the shared regions,
 * FIFO objects and event-channel ports are not (the regions are not guest memory), so after a
 * migration the migrated side's connections have no runtime left: that is how it knows to run
 * its half of `finish_mig`.
 */
import type { MessagePort } from 'node:worker_threads';
import type { CarriedStream, CarrierModule } from '../guest/carrier.ts';
import type { StreamConnection } from '../guest/stream.ts';
import { u32ToIp } from '../net/frame.ts';
import { fifoBytesNeeded, SharedFifo } from './fifo.ts';
import type {
  ChannelKey,
  ChannelMessage,
  CoResidentsNotice,
  MigrationNotice,
  PeerRecord,
  XenvmcCall,
  XenvmcMessageNotice,
  XenvmcMode,
  XenvmcReply,
} from './protocol.ts';

/**
 * Data bytes per direction (a power of two): XenLoop used 64 KiB, XenVMC's release 512 KiB.
 * The FIFO sets how much moves per wake-up of the peer, and a wake-up is dear here: 13 us of
 * CPU on each side on a quiet machine and 25 us on a busy one (MessagePort ping-pong between
 * two workers), plus the kernel's poll, plus on a busy machine a wait for a turn on the CPU.
 * 64 KiB writes between two domains moved 1.45x as many bytes/s through 1 MiB as through
 * 256 KiB, with a third less CPU per byte (medians of 5, interleaved), and 1.4x through
 * 4 MiB: 1 MiB takes most of it for 2 MiB of shared memory per channel. It may exceed the
 * socket buffers: what a tear-down takes back beyond the sender's send buffer waits in the
 * stream (`StreamState.sendOverflow`).
 */
export const CHANNEL_FIFO_BYTES_MAX = 1024 * 1024;

/** Smallest FIFO an accepter takes. */
const CHANNEL_FIFO_BYTES_MIN = 4096;

/**
 * Most bytes the program gets from a channel before one read comes back empty, as a program's
 * own write budget per event (NETBENCH_SEND_BYTES_PER_EVENT_MAX). A program reads until a read
 * is empty, and a writer on the other CPU can keep a FIFO from ever emptying: a sink was
 * seen never to leave its first read loop during a whole 1 GiB transfer, with Dom0's
 * messages (a pause request among them) waiting behind it.
 */
export const CHANNEL_READ_BURST_BYTES = 4 * 1024 * 1024;
/** XENVMC events kept for the statistics (bounded). */
const EVENT_LOG_MAX = 256;

/**
 * Most connections (channels live or being set up, either role) a domain keeps, 64. Dom0 caps
 * what one domain may have granted (GRANT_BYTES_PER_DOMAIN_MAX, 256 MiB: 127 channels of two
 * 1 MiB FIFOs), and a grant still counts against its granter until the peer unmapped it, so
 * half of that leaves room for tear-downs in progress: a domain below this limit never has a
 * grant refused for the cap. Per domain, not per peer, because Dom0's cap is per granting
 * domain, whatever its peers. It also bounds the host memory a domain's channels pin (64 x
 * 2 MiB) and the per-poll scans of the connection table. Streams beyond it keep netfront
 * (counted in `streamsOverLimit`) and get a channel when one ends.
 */
export const CHANNELS_PER_DOMAIN_MAX = 64;

/**
 * After a set-up that failed (refused by Dom0 or by the peer), the stream waits this long
 * before it is offered again, doubling per failure up to SETUP_RETRY_MS_MAX: a refusal that
 * lasts (a cap reached, a peer that will not accept) then costs a hypercall and a log line
 * every few seconds, not every poll (once per millisecond under load, seen in the soak).
 */
const SETUP_RETRY_MS_MIN = 100;
const SETUP_RETRY_MS_MAX = 10_000;

export type ConnectionPhase = 'offering' | 'accepting' | 'ready' | 'cancelling' | 'finishing';

/** The paper's `conn_t`: one stream's channel between this domain and a co-resident peer. */
export interface Connection {
  keyText: string;
  key: ChannelKey;
  socket: number;
  peerDomId: number;
  peerIp: number;
  role: 'offerer' | 'accepter';
  phase: ConnectionPhase;
  grantRef: number | null;
  port: number | null;
  /** Data bytes of each direction's FIFO. */
  fifoBytes: number;
  /** Our outgoing FIFO has been created (this direction is on the channel). */
  sending: boolean;
  /** Our outgoing direction's unread bytes were taken back (tear-down, or finish_mig). */
  reclaimed: boolean;
  /** Our incoming direction is finished with (reader acknowledged, or drained after the peer left). */
  receiveDone: boolean;
  bytesSent: number;
  bytesReceived: number;
}

export interface CoResident extends PeerRecord {
  /** Keys of our connections with this peer (the paper's per-VM hash table). */
  connections: string[];
}

export interface XenvmcCounters {
  channelsSetUp: number;
  channelsRefused: number;
  channelsCancelled: number;
  channelsFinished: number;
  channelBytesSent: number;
  channelBytesReceived: number;
  /** Bytes written into a channel, never read there, and resent over netfront. */
  reclaimedBytes: number;
  /** Of those, the ones resent by `finish_mig` (Advance mode, after a migration). */
  finishMigBytes: number;
  /** The limit CHANNELS_PER_DOMAIN_MAX, shown with the counters so statistics name it. */
  channelsPerDomainMax: number;
  /** Streams that would get a channel but keep netfront because of that limit (last poll). */
  streamsOverLimit: number;
}

export interface XenvmcEvent {
  atMs: number;
  what: string;
}

export interface XenvmcState {
  mode: XenvmcMode;
  migrating: boolean;
  coResidents: PeerRecord[];
  connections: Connection[];
  counters: XenvmcCounters;
  events: XenvmcEvent[];
}

interface Runtime {
  region: SharedArrayBuffer;
  out: SharedFifo | null;
  in: SharedFifo | null;
  endpoint: MessagePort | null;
  /** Bytes handed to the program since a read last came back empty. */
  burstBytes: number;
}

type CallBody = XenvmcCall extends infer C
  ? C extends XenvmcCall
    ? Omit<C, 'id' | 'type'>
    : never
  : never;

export interface XenvmcComponents {
  /** This domain, as Dom0 knows it on this host. */
  identity: { domId: number; ip: number | null; tenant: string };
  /** Posts a hypercall to Dom0 (with `type` and `id` filled in). */
  post: (call: XenvmcCall) => void;
  /** Asks the kernel to poll (something changed outside a guest event). */
  kick: () => void;
  /** Wall-clock ms, for the event log. */
  wallNowMs: () => number;
  log: (line: string) => void;
}

export class XenvmcModule implements CarrierModule {
  readonly state: XenvmcState;
  private readonly components: XenvmcComponents;
  private readonly runtime = new Map<string, Runtime>();
  private readonly calls = new Map<number, (reply: XenvmcReply) => void>();
  private nextCallId = 1;
  private suspendWaiter: ((cancelled: number) => void) | null = null;
  private suspendCancelled = 0;
  /**
   * Connections this module made (not brought by a migration's GuestState): their set-up
   * hypercalls are answered here, so `finish_mig` on arrival must leave them alone.
   */
  private readonly madeHere = new WeakSet<Connection>();
  /**
   * Restored on a new host and not yet told the migration ended: the co-resident table is
   * still the old host's (its domIds mean other domains here), so no channel until then.
   */
  private arrived = false;
  /** Streams whose last set-up failed, by key: failures and when to offer again. */
  private readonly setupRetry = new Map<string, { failures: number; atMs: number }>();
  /** Guest time of the last poll (set-up replies come between polls). */
  private nowMs = 0;

  constructor(components: XenvmcComponents, state?: XenvmcState) {
    this.components = components;
    this.state = state ?? {
      mode: 'off',
      migrating: false,
      coResidents: [],
      connections: [],
      counters: {
        channelsSetUp: 0,
        channelsRefused: 0,
        channelsCancelled: 0,
        channelsFinished: 0,
        channelBytesSent: 0,
        channelBytesReceived: 0,
        reclaimedBytes: 0,
        finishMigBytes: 0,
        channelsPerDomainMax: CHANNELS_PER_DOMAIN_MAX,
        streamsOverLimit: 0,
      },
      events: [],
    };
  }

  saveState(): XenvmcState {
    return this.state;
  }

  /** Restores the state a migration brought (the module runs on the target host now). */
  loadState(state: unknown): void {
    Object.assign(this.state, state as XenvmcState);
    this.state.counters.channelsPerDomainMax = CHANNELS_PER_DOMAIN_MAX;
    this.state.counters.streamsOverLimit ??= 0;
    this.arrived = true;
  }

  // ---- notices from Dom0 -----------------------------------------------------------------------

  onNotice(notice: CoResidentsNotice | XenvmcMessageNotice | MigrationNotice | XenvmcReply): void {
    switch (notice.type) {
      case 'xenvmcReply': {
        const waiter = this.calls.get(notice.id);
        this.calls.delete(notice.id);
        waiter?.(notice);
        break;
      }
      case 'coResidents':
        this.onCoResidents(notice);
        break;
      case 'xenvmcMessage':
        this.onMessage(notice.fromDomId, notice.message);
        break;
      case 'migration':
        this.onMigration(notice.phase);
        break;
    }
    this.components.kick();
  }

  /** xenvmc-suspend: tear every channel down, then answer (bounded by the caller's timeout). */
  prepareSuspend(done: (cancelled: number) => void): void {
    const live = this.state.connections.filter((c) => c.phase !== 'finishing');
    this.suspendCancelled = live.length;
    for (const connection of live)
      this.cancel(connection, 'the domain is suspending (xenvmc-suspend)');
    this.suspendWaiter = done;
    this.checkSuspend();
  }

  /** The co-residency table as the paper keeps it: each peer with its connections. */
  table(): CoResident[] {
    return this.state.coResidents.map((peer) => ({
      ...peer,
      connections: this.state.connections.filter((c) => c.peerIp === peer.ip).map((c) => c.keyText),
    }));
  }

  private onCoResidents(notice: CoResidentsNotice): void {
    this.state.mode = notice.mode;
    this.state.coResidents = notice.peers;
    const subject = notice.subject;
    if (!subject) return;
    if (notice.event === 'migrating' && this.state.mode === 'xenvmc') {
      this.cancelWithPeer(subject.ip, `peer ${u32ToIp(subject.ip)} started migrating (xenvmc)`);
    }
    if (notice.event === 'migratedOut' || notice.event === 'destroyed') {
      // The peer left: finish our half of every connection with it (finish_mig / tear-down).
      for (const connection of this.state.connections) {
        if (connection.peerIp === subject.ip)
          this.finish(connection, `peer ${u32ToIp(subject.ip)} ${notice.event}`);
      }
    }
  }

  /**
   * No new channel while this domain migrates, except in `advance` mode: Advance-XENVMC's
   * keep-con-with-migration phase "finds or creates the connection" (the paper, section 10),
   * so a connection opened during pre-copy gets a channel too; finish_mig ends it like the
   * others when the migration completes.
   */
  private blockedByMigration(): boolean {
    return this.arrived || (this.state.migrating && this.state.mode !== 'advance');
  }

  private onMigration(phase: MigrationNotice['phase']): void {
    if (phase === 'started') {
      this.state.migrating = true;
      this.record('migration started');
      if (this.state.mode === 'xenvmc') {
        for (const connection of [...this.state.connections])
          this.cancel(connection, 'this domain started migrating (xenvmc)');
      }
    } else if (phase === 'aborted') {
      this.state.migrating = false;
      this.record('migration aborted');
    } else {
      // End-of-migration notice on the target: finish_mig for every connection the GuestState
      // brought (their regions stayed on the old host). Not for one set up here: its set-up
      // is still answered here, and dropping it would drop the grant its answer brings.
      this.state.migrating = false;
      this.arrived = false;
      this.record('migration ended');
      for (const connection of [...this.state.connections]) {
        if (!this.madeHere.has(connection)) this.finishMigrated(connection);
      }
    }
  }

  // ---- the carrier hook (System Call Analyzer + Data Transfer Manager) --------------------------

  write(carried: CarriedStream, bytes: Uint8Array): number | null {
    const connection = this.connectionOf(carried);
    if (!connection) return null;
    const runtime = this.runtime.get(connection.keyText);
    if (connection.phase === 'cancelling' || connection.phase === 'finishing') {
      // Bytes already in the channel must be taken back before netfront may carry more.
      return connection.sending && !connection.reclaimed ? 0 : null;
    }
    if (connection.phase !== 'ready' || !runtime) return connection.sending ? 0 : null;
    let fresh = false;
    if (!connection.sending) {
      // The channel is ready but netfront still has bytes in flight: hold new bytes back
      // until netfront has delivered them all, else a busy stream would never switch over.
      if (!carried.stream.sendQuiescent) return canSwitch(carried.stream) ? 0 : null;
      runtime.out = SharedFifo.create(this.placement(runtime, connection, 'out'), {
        baseOffset: carried.stream.state.sendWritten,
      });
      connection.sending = true;
      fresh = true;
    }
    if (runtime.out!.state !== 'open') {
      // The peer stopped reading (it cancelled; its message may still be on its way).
      this.cancel(connection, 'the peer closed the channel', false);
      return 0;
    }
    // Write until the FIFO refuses: only a write that finds it full raises the waiting flag
    // that makes the reader wake us (a partial write alone would leave us waiting forever).
    let taken = 0;
    while (taken < bytes.byteLength) {
      const count = runtime.out!.tryWrite(taken === 0 ? bytes : bytes.subarray(taken));
      if (count === 0) break;
      taken += count;
    }
    if (taken > 0) {
      carried.stream.sentByCarrier(taken);
      connection.bytesSent += taken;
      this.state.counters.channelBytesSent += taken;
      // A fresh FIFO: the reader never found it, so it raised no waiting flag; wake it anyway.
      if (runtime.out!.takeReceiverWaiting() || fresh) runtime.endpoint?.postMessage(0);
    }
    return taken;
  }

  read(carried: CarriedStream, maxBytes: number): Uint8Array {
    const connection = this.readableConnection(carried);
    if (!connection) return EMPTY;
    const fifo = this.runtime.get(connection.keyText)!.in!; // readableConnection found it
    const bytes = fifo.tryRead(maxBytes);
    this.delivered(connection, carried.stream, fifo, bytes.byteLength);
    return bytes;
  }

  /**
   * `read` into the program's own array: the same bytes at the same offsets, without a new
   * array per read (a 256 KiB allocation and its garbage cost a channel reader as much CPU as
   * the copy itself when profiled).
   */
  readInto(carried: CarriedStream, target: Uint8Array): number {
    const connection = this.readableConnection(carried);
    if (!connection) return 0;
    const fifo = this.runtime.get(connection.keyText)!.in!;
    const count = fifo.readInto(target);
    this.delivered(connection, carried.stream, fifo, count);
    return count;
  }

  /**
   * The connection whose incoming FIFO the program may read now (aligned with the stream, not
   * finished with), or null; also ends a read burst (see CHANNEL_READ_BURST_BYTES).
   */
  private readableConnection(carried: CarriedStream): Connection | null {
    const connection = this.connectionOf(carried);
    const fifo = connection ? this.incoming(connection, carried.stream) : null;
    if (!connection || !fifo || connection.receiveDone) return null;
    const runtime = this.runtime.get(connection.keyText)!; // incoming() found it
    if (runtime.burstBytes >= CHANNEL_READ_BURST_BYTES) {
      // One empty read ends the program's read-until-empty loop; the bytes still pending make
      // the next poll say readable again, after the kernel let Dom0 have its turn.
      runtime.burstBytes = 0;
      return null;
    }
    return connection;
  }

  /** Book-keeping after a channel read of `count` bytes: offsets, counters, the writer's wake-up. */
  private delivered(
    connection: Connection,
    stream: StreamConnection,
    fifo: SharedFifo,
    count: number,
  ): void {
    const runtime = this.runtime.get(connection.keyText)!;
    runtime.burstBytes = count === 0 ? 0 : runtime.burstBytes + count;
    if (count === 0) return;
    stream.receivedByCarrier(count);
    connection.bytesReceived += count;
    this.state.counters.channelBytesReceived += count;
    // Wake a writer that found the FIFO full only once half of it is free again (the
    // program reads until empty, so this always comes): fewer wake-ups, longer batches.
    if (fifo.pendingBytes <= connection.fifoBytes / 2 && fifo.takeSenderWaiting()) {
      runtime.endpoint?.postMessage(0);
    }
  }

  pendingBytes(carried: CarriedStream): number {
    const connection = this.connectionOf(carried);
    const fifo =
      connection && !connection.receiveDone ? this.incoming(connection, carried.stream) : null;
    if (!fifo) return 0;
    // A wake-up that finds nothing consumed the waiting flag: ask again, or the next write
    // would find no flag and post nothing.
    return fifo.pendingBytes || fifo.armReceiverWaiting();
  }

  freeBytes(carried: CarriedStream): number | null {
    const connection = this.connectionOf(carried);
    if (connection?.phase === 'ready' && !connection.sending && canSwitch(carried.stream)) {
      // Waiting for netfront to drain before the switch: writable once it has.
      return carried.stream.sendQuiescent ? connection.fifoBytes : 0;
    }
    if (!connection?.sending || connection.reclaimed) return null;
    if (connection.phase !== 'ready') return 0;
    const out = this.runtime.get(connection.keyText)?.out;
    return out ? out.freeBytes || out.armSenderWaiting() : 0;
  }

  carrierOf(carried: CarriedStream): 'netfront' | 'xenvmc' {
    const connection = this.connectionOf(carried);
    return connection?.phase === 'ready' && connection.sending ? 'xenvmc' : 'netfront';
  }

  poll(streams: readonly CarriedStream[], nowMs: number): void {
    this.lastStreams = streams;
    this.nowMs = nowMs;
    for (const connection of [...this.state.connections]) {
      const carried = streams.find((s) => s.socket === connection.socket);
      if (!carried) {
        this.release(connection);
        continue;
      }
      if (connection.phase === 'cancelling' || connection.phase === 'finishing')
        this.progressTeardown(connection, carried.stream);
    }
    if (this.setupRetry.size > 0) this.forgetRetries(streams);
    this.state.counters.streamsOverLimit = 0;
    if (this.state.mode === 'off' || this.blockedByMigration()) return;
    for (const carried of streams) this.analyze(carried);
    this.checkSuspend();
  }

  /** Drops the retry times of streams that are gone (the map stays as small as the streams). */
  private forgetRetries(streams: readonly CarriedStream[]): void {
    const live = new Set(streams.map((carried) => keyToText(offerKey(carried.stream))));
    for (const keyText of this.setupRetry.keys())
      if (!live.has(keyText)) this.setupRetry.delete(keyText);
  }

  forget(carried: CarriedStream): void {
    const connection = this.connectionOf(carried);
    if (connection) this.release(connection);
  }

  // ---- System Call Analyzer: does this stream deserve a channel? --------------------------------

  private analyze(carried: CarriedStream): void {
    const stream = carried.stream;
    const s = stream.state;
    if (s.role !== 'connector' || s.phase !== 'established' || this.connectionOf(carried)) return;
    const peer = this.state.coResidents.find((p) => p.ip === s.remoteIp);
    if (!peer || peer.tenant !== this.components.identity.tenant) return;
    if (peer.migrating && this.state.mode !== 'advance') return;
    if (this.state.connections.length >= CHANNELS_PER_DOMAIN_MAX) {
      this.state.counters.streamsOverLimit++;
      return;
    }
    const key = offerKey(stream);
    const retry = this.setupRetry.get(keyToText(key));
    if (retry && this.nowMs < retry.atMs) return;
    this.offer(carried, peer, key);
  }

  /** A set-up of the stream `keyText` failed: offer it again later, later each time. */
  private setupFailed(keyText: string): void {
    const failures = (this.setupRetry.get(keyText)?.failures ?? 0) + 1;
    const waitMs = Math.min(SETUP_RETRY_MS_MIN * 2 ** (failures - 1), SETUP_RETRY_MS_MAX);
    this.setupRetry.set(keyText, { failures, atMs: this.nowMs + waitMs });
  }

  // ---- Connection Manager: set-up ----------------------------------------------------------------

  /**
   * Every set-up step checks, when its answer comes, that the connection still exists: it may
   * have been dropped meanwhile (stream gone, peer gone, refused), and then what the answer
   * brings (a grant, an event channel) is handed back here, or nobody would ever release it.
   */
  private offer(carried: CarriedStream, peer: PeerRecord, key: ChannelKey): void {
    const fifoBytes = CHANNEL_FIFO_BYTES_MAX;
    const connection = this.newConnection(key, carried.socket, peer, 'offerer', fifoBytes);
    const bytes = 2 * fifoStride(fifoBytes);
    this.call({ op: 'grant', peerDomId: peer.domId, bytes }, (grant) => {
      if (!this.isLive(connection)) {
        // Dropped before the region arrived: `release` had no grant to end.
        if (grant.ok && grant.grantRef !== undefined)
          this.call({ op: 'release', grantRef: grant.grantRef }, () => {});
        return;
      }
      if (!grant.ok || !grant.region || grant.grantRef === undefined)
        return this.abandon(connection, grant);
      connection.grantRef = grant.grantRef;
      this.runtime.set(connection.keyText, {
        region: grant.region,
        out: null,
        in: null,
        endpoint: null,
        burstBytes: 0,
      });
      this.call({ op: 'evtchnAlloc', peerDomId: peer.domId }, (evtchn) => {
        if (!this.isLive(connection)) {
          // Dropped before the event channel arrived: `release` had no port to close, and
          // no offer went out, so nobody binds it.
          if (evtchn.ok && evtchn.port !== undefined)
            this.closeEvtchn(evtchn.port, evtchn.endpoint ?? null);
          return;
        }
        if (!evtchn.ok || !evtchn.endpoint || evtchn.port === undefined)
          return this.abandon(connection, evtchn);
        connection.port = evtchn.port;
        this.bindEndpoint(connection, evtchn.endpoint);
        this.send(peer.domId, {
          kind: 'offer',
          key,
          granterDomId: this.components.identity.domId,
          grantRef: grant.grantRef!,
          port: evtchn.port,
          fifoBytes,
        });
      });
    });
  }

  private onMessage(fromDomId: number, message: ChannelMessage): void {
    const keyText = keyToText(message.key);
    const connection = this.state.connections.find((c) => c.keyText === keyText);
    switch (message.kind) {
      case 'offer':
        return this.accept(fromDomId, message);
      case 'ready':
        if (connection?.phase === 'offering' && connection.port === message.port) {
          connection.phase = 'ready';
          this.state.counters.channelsSetUp++;
          this.setupRetry.delete(keyText);
          this.record(`channel ${keyText} ready`);
        }
        return;
      case 'refuse':
        // Only this offer, in set-up, can be refused: a late refusal of an earlier offer of
        // the same stream must not drop a channel that carries bytes now.
        if (connection?.phase === 'offering' && connection.port === message.port) {
          this.state.counters.channelsRefused++;
          this.setupFailed(keyText);
          this.record(`channel ${keyText} refused: ${message.reason}`);
          this.release(connection);
        }
        return;
      case 'cancel':
        if (connection) this.cancel(connection, `peer cancelled: ${message.reason}`, false);
        return;
    }
  }

  private accept(fromDomId: number, offer: Extract<ChannelMessage, { kind: 'offer' }>): void {
    const key = offer.key;
    const peer = this.state.coResidents.find((p) => p.domId === fromDomId);
    const refuse = (reason: string): void => {
      this.state.counters.channelsRefused++;
      this.send(fromDomId, { kind: 'refuse', key, port: offer.port, reason });
    };
    if (this.state.mode === 'off' || this.blockedByMigration())
      return refuse(`mode ${this.state.mode}${this.state.migrating ? ', migrating' : ''}`);
    if (!peer || peer.tenant !== this.components.identity.tenant)
      return refuse('not a co-resident of the same tenant');
    if (this.state.connections.length >= CHANNELS_PER_DOMAIN_MAX)
      return refuse(`${CHANNELS_PER_DOMAIN_MAX} channels already (CHANNELS_PER_DOMAIN_MAX)`);
    // The runtime is keyed by the stream: an older connection of this stream still tearing
    // down here must end before a new one starts.
    if (this.state.connections.some((c) => c.keyText === keyToText(key)))
      return refuse('the previous channel of this stream is still being torn down');
    const socket = this.lastStreams.find(({ stream }) => {
      const s = stream.state;
      return (
        s.localIp === key.accepterIp &&
        s.localPort === key.accepterPort &&
        s.remoteIp === key.offererIp &&
        s.remotePort === key.offererPort &&
        s.nonce === key.nonce
      );
    })?.socket;
    if (socket === undefined) return refuse('no such stream');
    const size = offer.fifoBytes;
    if (
      !Number.isInteger(size) ||
      size < CHANNEL_FIFO_BYTES_MIN ||
      size > CHANNEL_FIFO_BYTES_MAX ||
      (size & (size - 1)) !== 0
    ) {
      return refuse(
        `a FIFO of ${size} B is not a power of two in [${CHANNEL_FIFO_BYTES_MIN}, ${CHANNEL_FIFO_BYTES_MAX}] B`,
      );
    }
    const connection = this.newConnection(key, socket, peer, 'accepter', offer.fifoBytes);
    this.call({ op: 'map', granterDomId: fromDomId, grantRef: offer.grantRef }, (mapped) => {
      if (!this.isLive(connection)) {
        // Dropped before the mapping arrived: unmap, and let the offerer release its part.
        if (mapped.ok) this.call({ op: 'release', grantRef: offer.grantRef }, () => {});
        return refuse('the stream ended during set-up');
      }
      if (!mapped.ok || !mapped.region) {
        refuse(mapped.ok ? 'no region' : mapped.message);
        return this.abandon(connection, mapped);
      }
      connection.grantRef = offer.grantRef;
      this.runtime.set(connection.keyText, {
        region: mapped.region,
        out: null,
        in: null,
        endpoint: null,
        burstBytes: 0,
      });
      this.call({ op: 'evtchnBind', peerDomId: fromDomId, port: offer.port }, (bound) => {
        if (!this.isLive(connection)) {
          // `release` unmapped the region already; the offerer closes the channel.
          if (bound.ok) bound.endpoint?.close();
          return refuse('the stream ended during set-up');
        }
        if (!bound.ok || !bound.endpoint) {
          refuse(bound.ok ? 'no endpoint' : bound.message);
          return this.abandon(connection, bound);
        }
        connection.port = offer.port;
        this.bindEndpoint(connection, bound.endpoint);
        connection.phase = 'ready';
        this.state.counters.channelsSetUp++;
        this.record(`channel ${connection.keyText} ready`);
        this.send(fromDomId, { kind: 'ready', key, port: offer.port });
      });
    });
  }

  /** The streams of the last poll: where an offer finds its stream. */
  private lastStreams: readonly CarriedStream[] = [];

  // ---- Live Migration Assistant: tear-down and finish_mig -------------------------------------

  /** Stops using a connection; both sides then hand their unread bytes back to netfront. */
  private cancel(connection: Connection, reason: string, tellPeer = true): void {
    if (connection.phase === 'cancelling' || connection.phase === 'finishing') return;
    connection.phase = 'cancelling';
    this.state.counters.channelsCancelled++;
    this.record(`channel ${connection.keyText} cancelled: ${reason}`);
    this.runtime.get(connection.keyText)?.out?.beginClose();
    if (tellPeer) this.send(connection.peerDomId, { kind: 'cancel', key: connection.key, reason });
  }

  private cancelWithPeer(peerIp: number, reason: string): void {
    for (const connection of [...this.state.connections]) {
      if (connection.peerIp === peerIp) this.cancel(connection, reason);
    }
  }

  /** The peer is gone (migrated out, destroyed): finish our half with the region we hold. */
  private finish(connection: Connection, reason: string): void {
    if (connection.phase === 'finishing') return;
    connection.phase = 'finishing';
    this.record(`finish_mig ${connection.keyText}: ${reason}`);
  }

  /**
   * finish_mig on the migrated side: the region stayed on the old host, so there is nothing
   * to read or take back here. What we wrote, the peer drains; what we did not read, the peer
   * resends over netfront from our consumed offset. The connection just ends.
   */
  private finishMigrated(connection: Connection): void {
    connection.reclaimed = true;
    connection.receiveDone = true;
    this.state.counters.channelsFinished++;
    this.record(`finish_mig ${connection.keyText}: migrated, continuing over netfront`);
    this.removeConnection(connection);
  }

  private progressTeardown(connection: Connection, stream: StreamConnection): void {
    const runtime = this.runtime.get(connection.keyText);
    if (!runtime) {
      // Cancelled before the region arrived (set-up in flight): nothing was carried yet.
      if (!connection.sending) return this.release(connection);
      return;
    }
    const departed = connection.phase === 'finishing';
    // Our incoming direction. Cancel: stop reading now, our consumed offset is final; we are
    // done once the writer took back what we never read. finish_mig after the peer left:
    // drain first (the writer is gone, it only shrinks), and that includes what a cancelled
    // writer left behind without taking it back (it paused before it could).
    const incoming = this.incoming(connection, stream, true);
    if (!connection.receiveDone) {
      if (!incoming) connection.receiveDone = true;
      else if (departed) {
        if (incoming.state === 'closed' && !incoming.takenBack) incoming.resumeDrain();
        if (incoming.state === 'closed' || incoming.pendingBytes === 0)
          connection.receiveDone = true;
      } else {
        if (incoming.state === 'open') incoming.beginClose();
        if (incoming.state === 'closing') {
          incoming.acknowledgeClose();
          // The writer waits for this to take back what we never read: wake it.
          runtime.endpoint?.postMessage(0);
        }
        if (incoming.takenBack || incoming.pendingBytes === 0) connection.receiveDone = true;
      }
    }
    // Our outgoing direction: once the reader's consumed offset is final, take back the rest.
    if (!connection.reclaimed) {
      const out = runtime.out;
      if (!out) connection.reclaimed = true;
      else if (departed || out.state === 'closed') {
        const from = out.readOffset;
        const leftover = out.peekRange(from, out.writeOffset - from);
        out.markTakenBack();
        stream.reclaim(from, leftover);
        // The reader holds on to the region until it sees this: tell it.
        runtime.endpoint?.postMessage(0);
        connection.reclaimed = true;
        this.state.counters.reclaimedBytes += leftover.byteLength;
        if (departed) this.state.counters.finishMigBytes += leftover.byteLength;
        this.record(
          `channel ${connection.keyText}: ${leftover.byteLength} unread bytes back to netfront from offset ${from}`,
        );
        this.components.kick();
      }
    }
    if (connection.receiveDone && connection.reclaimed) {
      if (departed) this.state.counters.channelsFinished++;
      this.release(connection);
    }
  }

  /**
   * Hands back what the connection holds, each once: the grant (or mapping) and, for the
   * offerer, the event channel. Parts still being set up are handed back by their answers
   * (see `offer`), since the connection is gone by then.
   */
  private release(connection: Connection): void {
    const runtime = this.runtime.get(connection.keyText);
    this.runtime.delete(connection.keyText);
    if (runtime) {
      if (connection.grantRef !== null)
        this.call({ op: 'release', grantRef: connection.grantRef }, () => {});
      if (connection.role === 'offerer' && connection.port !== null)
        this.closeEvtchn(connection.port, runtime.endpoint);
      else runtime.endpoint?.close();
    }
    this.removeConnection(connection);
  }

  /**
   * The offerer closes its event channel: Dom0 first, our end once Dom0 answered. Closing our
   * end first would leave Dom0 holding a peer end that is already detached, and a bind still
   * on its way would be handed that dead port (Dom0 failed to post it: DataCloneError); once
   * Dom0 dropped the channel, a late bind is refused instead (XENVMC_NOT_GRANTED).
   */
  private closeEvtchn(port: number, endpoint: MessagePort | null): void {
    this.call({ op: 'evtchnClose', port }, () => endpoint?.close());
  }

  private isLive(connection: Connection): boolean {
    return this.state.connections.includes(connection);
  }

  private removeConnection(connection: Connection): void {
    this.state.connections = this.state.connections.filter((c) => c !== connection);
    this.checkSuspend();
  }

  private checkSuspend(): void {
    if (!this.suspendWaiter) return;
    if (this.state.connections.some((c) => c.phase === 'cancelling')) return;
    const done = this.suspendWaiter;
    this.suspendWaiter = null;
    done(this.suspendCancelled);
  }

  // ---- helpers --------------------------------------------------------------------------------

  private newConnection(
    key: ChannelKey,
    socket: number,
    peer: PeerRecord,
    role: Connection['role'],
    fifoBytes: number,
  ): Connection {
    const connection: Connection = {
      keyText: keyToText(key),
      key,
      socket,
      peerDomId: peer.domId,
      peerIp: peer.ip,
      role,
      phase: role === 'offerer' ? 'offering' : 'accepting',
      grantRef: null,
      port: null,
      fifoBytes,
      sending: false,
      reclaimed: false,
      receiveDone: false,
      bytesSent: 0,
      bytesReceived: 0,
    };
    this.state.connections.push(connection);
    this.madeHere.add(connection);
    return connection;
  }

  /** A set-up step failed: drop the connection (the stream keeps netfront). */
  private abandon(connection: Connection, reply: XenvmcReply): void {
    this.state.counters.channelsRefused++;
    if (connection.role === 'offerer') this.setupFailed(connection.keyText);
    this.record(
      `channel ${connection.keyText} not set up: ${reply.ok ? 'incomplete reply' : `${reply.code} ${reply.message}`}`,
    );
    this.release(connection);
  }

  private connectionOf(carried: CarriedStream): Connection | undefined {
    return this.state.connections.find((c) => c.socket === carried.socket);
  }

  /** The FIFO we read, attached once its writer created it and our stream is aligned with it. */
  private incoming(
    connection: Connection,
    stream: StreamConnection,
    anyOffset = false,
  ): SharedFifo | null {
    const runtime = this.runtime.get(connection.keyText);
    if (!runtime) return null;
    if (!runtime.in) {
      const placement = this.placement(runtime, connection, 'in');
      if (!SharedFifo.isCreated(placement)) return null;
      runtime.in = SharedFifo.attach(placement);
    }
    if (anyOffset) return runtime.in;
    const fifo = runtime.in;
    // Closed: we acknowledged a cancel and read no more (unless finish_mig drains it again).
    if (fifo.closed) return null;
    return stream.receiveQuiescent && stream.state.receiveNext === fifo.readOffset ? fifo : null;
  }

  private placement(runtime: Runtime, connection: Connection, direction: 'out' | 'in') {
    // The offerer's outgoing FIFO comes first in the region, the accepter's second.
    const offererFirst = (connection.role === 'offerer') === (direction === 'out');
    return {
      buffer: runtime.region,
      byteOffset: offererFirst ? 0 : fifoStride(connection.fifoBytes),
      capacityBytes: connection.fifoBytes,
    };
  }

  private bindEndpoint(connection: Connection, endpoint: MessagePort): void {
    const runtime = this.runtime.get(connection.keyText);
    if (!runtime) {
      endpoint.close();
      return;
    }
    runtime.endpoint = endpoint;
    endpoint.on('message', () => this.components.kick());
  }

  private call(body: CallBody, then: (reply: XenvmcReply) => void): void {
    const id = this.nextCallId++;
    this.calls.set(id, then);
    this.components.post({ type: 'xenvmc', id, ...body } as XenvmcCall);
  }

  private send(peerDomId: number, message: ChannelMessage): void {
    this.call({ op: 'send', peerDomId, message }, () => {});
  }

  private record(what: string): void {
    this.state.events.push({ atMs: this.components.wallNowMs(), what });
    if (this.state.events.length > EVENT_LOG_MAX) this.state.events.shift();
    this.components.log(`xenvmc: ${what}`);
  }
}

const EMPTY = new Uint8Array(0);

/** A direction may still move onto the channel: the stream is open and not ended. */
function canSwitch(stream: StreamConnection): boolean {
  const state = stream.state;
  return state.phase === 'established' && state.sendFinOffset === null;
}

/** The channel key of a stream this domain would offer (it is the connector). */
function offerKey(stream: StreamConnection): ChannelKey {
  const s = stream.state;
  return {
    offererIp: s.localIp,
    offererPort: s.localPort,
    accepterIp: s.remoteIp,
    accepterPort: s.remotePort,
    nonce: s.nonce,
  };
}

function fifoStride(capacityBytes: number): number {
  return Math.ceil(fifoBytesNeeded(capacityBytes) / 64) * 64;
}

export function keyToText(key: ChannelKey): string {
  return `${u32ToIp(key.offererIp)}:${key.offererPort}>${u32ToIp(key.accepterIp)}:${key.accepterPort}#${key.nonce}`;
}
