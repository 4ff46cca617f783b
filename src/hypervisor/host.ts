/**
 * A physical host: Dom0 on this process's main thread, guest domains on worker threads, a
 * listener for links from other hosts (migration streams), and an egress shaper that stands
 * for the NIC, so every byte leaving for another host is paced at the link rate.
 *
 * The host is the I/O edge: the decisions it applies come from pure cores (the stop policy,
 * the stream codec) and its domains' kernels.
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type Clock, sleepMs } from '../core/clock.ts';
import { describeError, InputError, isTestbedError } from '../core/errors.ts';
import { formatBytes, PAGE_SIZE_BYTES } from '../core/units.ts';
import type { ProgramSpec } from '../guest/kernel.ts';
import { socketBufferPlan } from '../guest/netstack.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { defaultLayout, type MemoryLayout, type RegionName } from '../memory/layout.ts';
import { ChannelPagesTracker } from '../migration/channel-pages.ts';
import type { DomainInfo } from '../migration/codec.ts';
import { policyByName } from '../migration/policy.ts';
import { receiveMigration, STALL_TIMEOUT_MS } from '../migration/receiver.ts';
import { type IncomingOutcome, sendMigration } from '../migration/sender.ts';
import type { MigrationProgress, MigrationStats } from '../migration/stats.ts';
import { ipToU32 } from '../net/frame.ts';
import { LinkSampler } from '../net/sampler.ts';
import { EgressShaper } from '../net/shaper.ts';
import { XENVMC_MODES, type XenvmcMode } from '../xenvmc/protocol.ts';
import { Bridge } from './bridge.ts';
import { Dom0Net, type ForwardView } from './dom0-net.ts';
import { Domain, type DomainStatus } from './domain.ts';
import type { DomainIdentity } from './domain-protocol.ts';
import { HypervisorError } from './errors.ts';
import { FramesLinks } from './frames-link.ts';
import { type ChannelPolicy, GrantTable, type GrantTableCounters } from './grant-table.ts';
import { serveHypercall } from './hypercalls.ts';
import {
  LINK_TEST_BYTES_MAX,
  type LinkTestResult,
  runLinkTest,
  serveLinkTest,
} from './link-test.ts';
import {
  type AuthenticatedLink,
  acceptPeer,
  connectToPeer,
  encodeControlMessage,
  parseAddress,
} from './peer-link.ts';
import { type PublishedDomain, type PublisherEvent, StatePublisher } from './publisher.ts';

export interface HostInit {
  name: string;
  /** Where other hosts reach this one (migration streams, frames). */
  linkListen: { host: string; port: number };
  clusterKey: Buffer;
  /** Egress rate towards other hosts; null = unlimited. @default 1 Gbit/s */
  linkBytesPerSec: number | null;
  /** Total guest memory this host may hold. @default 75 % of the machine's memory */
  memoryLimitBytes?: number;
  /** A link that moves no migration data for this long has failed. @default 30 s */
  stallTimeoutMs?: number;
  /**
   * Send the XENVMC channel regions a domain granted along with it, as real Xen would (its
   * grant pages are its own memory, marked dirty when a mapping is removed). @default false:
   * the paper's premise, channel memory is not migrated.
   */
  migrateChannelPages?: boolean;
  /** The link sampler's interval. @default 100 ms */
  sampleIntervalMs?: number;
  /**
   * Dom0's own IP on the testbed network (port forwarding). Must differ between hosts.
   * @default 10.77.255.N, N from a hash of the host name
   */
  dom0Ip?: string;
  /**
   * The XENVMC mode, the same for every domain of the host and reported in its statistics:
   * `off` netfront only (no publisher, every hypercall denied); `xenvmc` channels cancelled
   * when a migration starts; `xenvmc-suspend` cancelled at the final pause; `advance` kept
   * through the migration (Advance-XENVMC). @default 'off'
   */
  xenvmcMode?: XenvmcMode;
  /** Which domains may share a channel. @default same tenant only */
  channelPolicy?: ChannelPolicy;
  /**
   * Shared storage: domain `name`'s disk is the directory `storageDir/name`, which must be the
   * same directory on every host (as the paper's NFS machine). None: domains have no disk.
   */
  storageDir?: string;
  log?: (line: string) => void;
}

/** `GET /v1/host`'s `xenvmc` block: the mode and the grant table's counters. */
export interface XenvmcHostView extends GrantTableCounters {
  mode: XenvmcMode;
  /** Co-residency and migration notices posted to this host's domains. */
  noticesPosted: number;
}

export interface DomainCreateRequest {
  name: string;
  memoryBytes: number;
  ip?: string | null;
  tenant?: string;
  programs?: ProgramSpec[];
  regionPages?: Partial<Record<RegionName, number>>;
  /** Each socket buffer, per direction (see `socketBufferPlan`); default: a share of sockbuf. */
  socketBufferBytes?: number;
}

export interface DomainSummary {
  domId: number;
  name: string;
  ip: string | null;
  tenant: string;
  status: DomainStatus;
  memoryBytes: number;
  pageCount: number;
  layout: MemoryLayout;
  crash: { code: string; message: string } | null;
}

export type MigrationStatus = 'running' | 'completed' | 'failed';

type IncomingOutcomeRecord =
  | { state: 'receiving' | 'discarded' }
  | { state: 'resumed'; pageCrcDigest: string };
/** Incoming outcomes kept for sources in doubt. */
const OUTCOMES_KEPT = 256;
const OUTCOME_QUESTION_TIMEOUT_MS = 5000;
/** A source in doubt asks again after this, doubling up to the maximum. */
const OUTCOME_RETRY_MS = 100;
const OUTCOME_RETRY_MAX_MS = 2000;
/** How often a source in doubt logs that it still waits for the target's answer. */
const OUTCOME_LOG_INTERVAL_MS = 10_000;

export interface MigrationRecordView {
  id: string;
  domain: string;
  target: string;
  status: MigrationStatus;
  /** The source host's XENVMC mode during this migration. */
  mode: XenvmcMode;
  /** xenvmc-suspend: channels the guest cancelled just before the pause (null otherwise). */
  channelsCancelled: number | null;
  progress: MigrationProgress | null;
  stats: MigrationStats | null;
  error: { code: string; message: string } | null;
}

interface DomainEntry {
  domain: Domain;
  programs: ProgramSpec[];
}

export class Host {
  readonly name: string;
  private readonly clock: Clock;
  private readonly init: HostInit;
  private readonly domains = new Map<string, DomainEntry>();
  /** Domains reserved for incoming migrations (memory held, thread starting), by name. */
  private readonly incoming = new Map<string, { bytes: number; domain: Promise<Domain> }>();
  private readonly migrations = new Map<string, MigrationRecordView>();
  /** What became of recent incoming migrations, by `source host/domain` (see `askOutcome`). */
  private readonly outcomes = new Map<string, IncomingOutcomeRecord>();
  private readonly shaper: EgressShaper;
  /** NMON-like: bytes leaving this host per interval and traffic class. */
  readonly sampler: LinkSampler;
  private readonly log: (line: string) => void;
  private server: net.Server | null = null;
  readonly bridge: Bridge;
  private readonly dom0: Dom0Net;
  private frames: FramesLinks | null = null;
  private nextDomId = 1;
  private readonly memoryLimitBytes: number;
  readonly xenvmcMode: XenvmcMode;
  /** XENVMC's grant table and inter-domain event channels. */
  readonly grants: GrantTable;
  private readonly publisher: StatePublisher;

  constructor(components: { clock: Clock }, init: HostInit) {
    this.clock = components.clock;
    this.init = init;
    this.name = init.name;
    this.log = init.log ?? (() => {});
    this.sampler = new LinkSampler(
      { clock: this.clock },
      { intervalMs: init.sampleIntervalMs ?? 100 },
    );
    this.shaper = new EgressShaper(
      { clock: this.clock, sampler: this.sampler },
      { bytesPerSec: init.linkBytesPerSec },
    );
    this.memoryLimitBytes = init.memoryLimitBytes ?? Math.floor(os.totalmem() * 0.75);
    this.bridge = new Bridge({
      sendRemote: (link, frame) => this.frames?.send(link, frame),
      log: this.log,
    });
    this.dom0 = new Dom0Net({ clock: this.clock }, { ip: init.dom0Ip ?? defaultDom0Ip(init.name) });
    this.bridge.attach(this.dom0);
    this.xenvmcMode = init.xenvmcMode ?? 'off';
    if (!XENVMC_MODES.includes(this.xenvmcMode)) {
      throw new InputError(
        `XENVMC mode '${this.xenvmcMode}' is not one of ${XENVMC_MODES.join(', ')}`,
      );
    }
    this.grants = new GrantTable({ policy: init.channelPolicy });
    this.publisher = new StatePublisher(
      {
        residents: () => this.residents(),
        deliver: ({ domId, message }) => this.residentById(domId)?.post(message),
      },
      { mode: this.xenvmcMode },
    );
  }

  /** Domain `name`'s disk on shared storage, or null when this host has none. */
  private diskDir(name: string): string | null {
    return this.init.storageDir === undefined ? null : path.join(this.init.storageDir, name);
  }

  /** Relays a port of this machine to `port` of a domain (by name here, or by IP). */
  async addForward(request: {
    listen: string;
    domain: string;
    port: number;
  }): Promise<ForwardView> {
    const ip = /^\d+\.\d+\.\d+\.\d+$/.test(request.domain)
      ? request.domain
      : this.entry(request.domain).domain.identity.ip;
    if (ip === null)
      throw new InputError(`domain ${request.domain} has no IP address to forward to`);
    const view = await this.dom0.addForward(
      parseAddress(request.listen, 'forward listen address'),
      ip,
      request.port,
    );
    this.log(`forwarding ${view.listen} to ${ip}:${request.port}`);
    return view;
  }

  listForwards(): ForwardView[] {
    return this.dom0.listForwards();
  }

  /** `host:port` other hosts use for this one. */
  ownLink(): string {
    const { host, port } = this.linkAddress();
    return `${host}:${port}`;
  }

  /** Starts listening for other hosts; resolves with the bound address. */
  async listen(): Promise<{ host: string; port: number }> {
    this.sampler.start();
    const server = net.createServer((socket) => this.acceptLink(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.init.linkListen.port, this.init.linkListen.host, () => resolve());
    });
    this.frames = new FramesLinks(
      {
        shaper: this.shaper,
        connect: (link) =>
          connectToPeer(parseAddress(link, 'peer host'), {
            clusterKey: this.init.clusterKey,
            localHost: this.name,
            purpose: 'frames',
          }),
        onFrame: (frame, peerLink) => this.bridge.fromRemote(frame, peerLink),
        onControl: (message, peerLink) => {
          if (message.type === 'garp' && typeof message.ip === 'number')
            this.bridge.learn(message.ip, message.link, true);
          else this.log(`frames link ${peerLink}: ignored control ${message.type}`);
        },
        log: this.log,
      },
      { ownLink: this.ownLink() },
    );
    return this.linkAddress();
  }

  linkAddress(): { host: string; port: number } {
    const address = this.server?.address();
    if (!address || typeof address === 'string') throw new Error('host is not listening');
    return { host: address.address, port: address.port };
  }

  get linkBytesPerSec(): number | null {
    return this.init.linkBytesPerSec;
  }

  memoryUsedBytes(): number {
    let used = 0;
    for (const { domain } of this.domains.values()) used += domain.memory.sizeBytes;
    for (const { bytes } of this.incoming.values()) used += bytes;
    return used;
  }

  memoryLimit(): number {
    return this.memoryLimitBytes;
  }

  // ---- domain lifecycle ----------------------------------------------------------------------

  async createDomain(request: DomainCreateRequest): Promise<DomainSummary> {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(request.name)) {
      throw new InputError(
        `domain name '${request.name}' must be 1-64 letters, digits, '.', '_' or '-'`,
      );
    }
    if (this.domains.has(request.name) || this.incoming.has(request.name)) {
      throw new HypervisorError(
        'DOMAIN_EXISTS',
        `a domain named ${request.name} already exists on ${this.name}`,
      );
    }
    if (request.memoryBytes % PAGE_SIZE_BYTES !== 0) {
      throw new InputError(
        `domain memory ${request.memoryBytes} B is not a whole number of 4 KiB pages`,
      );
    }
    const layout = defaultLayout(request.memoryBytes / PAGE_SIZE_BYTES, request.regionPages);
    socketBufferPlan(layout, request.socketBufferBytes); // refused here, not as a boot failure
    this.checkMemory(request.name, request.memoryBytes);
    const memory = GuestMemory.create(layout);
    // Pre-touch outside every timed phase: first-touch faults cost 3.6 s/GiB here.
    memory.pretouch();
    const identity: DomainIdentity = {
      domId: this.nextDomId++,
      name: request.name,
      ip: request.ip ?? null,
      tenant: request.tenant ?? 'default',
    };
    const programs = request.programs ?? [];
    const domain = await Domain.boot(
      identity,
      memory,
      { kind: 'boot', programs, socketBufferBytes: request.socketBufferBytes },
      this.log,
      this.diskDir(request.name),
    );
    this.serveXenvmc(domain);
    this.domains.set(request.name, { domain, programs });
    this.bridge.attach(domain);
    this.announce(domain.identity.ip);
    this.publish('created', domain);
    this.log(
      `created dom${identity.domId} ${request.name} (${formatBytes(request.memoryBytes)}, ${programs.map((p) => p.kind).join(', ') || 'no programs'})`,
    );
    return this.summary(request.name);
  }

  listDomains(): DomainSummary[] {
    return [...this.domains.keys()].map((name) => this.summary(name));
  }

  summary(name: string): DomainSummary {
    const { domain } = this.entry(name);
    return {
      ...domain.identity,
      status: domain.status,
      memoryBytes: domain.memory.sizeBytes,
      pageCount: domain.memory.pageCount,
      layout: domain.memory.layout,
      crash: domain.crash,
    };
  }

  async domainStats(name: string): Promise<Awaited<ReturnType<Domain['stats']>>> {
    return this.entry(name).domain.stats();
  }

  async pauseDomain(name: string): Promise<DomainSummary> {
    const { domain } = this.entry(name);
    this.requireStatus(domain, ['running', 'paused']);
    await domain.pause();
    return this.summary(name);
  }

  async resumeDomain(name: string): Promise<DomainSummary> {
    const { domain } = this.entry(name);
    this.requireStatus(domain, ['running', 'paused']);
    await domain.resume();
    this.bridge.kick(domain);
    return this.summary(name);
  }

  async destroyDomain(name: string): Promise<void> {
    const { domain } = this.entry(name);
    this.requireStatus(domain, ['running', 'paused', 'crashed']);
    this.domains.delete(name);
    this.bridge.detach(domain);
    this.grants.releaseAll(domain.identity.domId);
    this.publish('destroyed', domain);
    await domain.destroy();
    this.log(`destroyed dom${domain.identity.domId} ${name}`);
  }

  // ---- migration ----------------------------------------------------------------------------

  /** Starts migrating `name` to the host listening at `target`; returns at once. */
  startMigration(
    name: string,
    target: string,
    options: { policy?: string; policyOptions?: Record<string, number> } = {},
  ): MigrationRecordView {
    const entry = this.entry(name);
    this.requireStatus(entry.domain, ['running', 'paused']);
    const targetAddress = parseAddress(target, 'target host');
    const policy = policyByName(options.policy ?? 'paper', options.policyOptions);
    const record: MigrationRecordView = {
      id: randomUUID(),
      domain: name,
      target,
      status: 'running',
      mode: this.xenvmcMode,
      channelsCancelled: null,
      progress: null,
      stats: null,
      error: null,
    };
    this.migrations.set(record.id, record);
    // A paused domain migrates too (a cold snapshot); after a failure it stays paused.
    const wasPaused = entry.domain.status === 'paused';
    entry.domain.status = 'migrating';
    // Before the first round: in mode xenvmc the guests cancel their channels at once.
    this.publish('migrating', entry.domain);
    void this.runMigration(entry, targetAddress, policy, record, wasPaused);
    return record;
  }

  /** Measures raw TCP throughput through this host's shaper to another host (like iperf). */
  async linkTest(target: string, bytes: number): Promise<LinkTestResult> {
    if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > LINK_TEST_BYTES_MAX) {
      throw new InputError(
        `a link test moves 1 B to ${formatBytes(LINK_TEST_BYTES_MAX)}; got ${bytes}`,
      );
    }
    const link = await connectToPeer(parseAddress(target, 'target host'), {
      clusterKey: this.init.clusterKey,
      localHost: this.name,
      purpose: 'linkTest',
    });
    try {
      return await runLinkTest(link, bytes, (chunk) =>
        this.shaper.send(link.socket, chunk, 'control'),
      );
    } finally {
      link.socket.destroy();
    }
  }

  migration(id: string): MigrationRecordView {
    const record = this.migrations.get(id);
    if (!record) throw new HypervisorError('DOMAIN_UNKNOWN', `no migration ${id} on ${this.name}`);
    return record;
  }

  private async runMigration(
    entry: DomainEntry,
    targetAddress: { host: string; port: number },
    policy: ReturnType<typeof policyByName>,
    record: MigrationRecordView,
    wasPaused: boolean,
  ): Promise<void> {
    const { domain } = entry;
    const setupStartedMs = this.clock.nowMs();
    const startedAt = new Date().toISOString();
    const targetLabel = `${targetAddress.host}:${targetAddress.port}`;
    this.log(`migrating ${domain.identity.name} to ${targetLabel} (policy ${policy.name})`);
    try {
      const link = await connectToPeer(targetAddress, {
        clusterKey: this.init.clusterKey,
        localHost: this.name,
        purpose: 'migration',
      });
      const info: DomainInfo = {
        ...domain.identity,
        pageCount: domain.memory.pageCount,
        layout: domain.memory.layout,
        programs: entry.programs,
        routes: this.bridge.table(this.ownLink()),
      };
      try {
        record.stats = await sendMigration(
          {
            clock: this.clock,
            send: (chunk, onReleased) =>
              this.shaper.send(link.socket, chunk, 'migration', onReleased),
            reader: link.reader,
            close: () => link.socket.destroy(),
            stallTimeoutMs: this.init.stallTimeoutMs ?? STALL_TIMEOUT_MS,
            askOutcome: () => this.askOutcome(targetAddress, domain.identity.name),
          },
          {
            domain: {
              info,
              memory: domain.memory,
              pause: async () => {
                // XenVMC's suspend handler blocks until the channels are released, so the
                // cancel is part of the downtime; in the other modes nothing happens here.
                if (this.xenvmcMode === 'xenvmc-suspend') {
                  record.channelsCancelled = await domain.prepareSuspend();
                }
                return domain.pause();
              },
              resume: async () => {
                if (wasPaused) return;
                await domain.resume();
                this.bridge.kick(domain);
              },
              sync: () => domain.sync(),
            },
            policy,
            xenvmcMode: this.xenvmcMode,
            channelPages: this.init.migrateChannelPages
              ? new ChannelPagesTracker(() => this.grants.regionsGrantedBy(domain.identity.domId))
              : undefined,
            sourceHost: this.name,
            targetHost: link.peerHost || targetLabel,
            linkBytesPerSec: this.init.linkBytesPerSec,
            onProgress: (progress) => {
              record.progress = progress;
            },
            setupStartedMs,
            startedAt,
          },
        );
      } finally {
        link.socket.end();
      }
      // The domain runs on the target now: forward its IP there, destroy the source copy.
      this.domains.delete(domain.identity.name);
      this.bridge.detach(domain, { link: targetLabel });
      // Only the table entries go: a peer that stays keeps its regions to drain (advance).
      this.grants.releaseAll(domain.identity.domId);
      this.publish('migratedOut', domain, { migrating: true });
      await domain.destroy();
      record.status = 'completed';
      const stats = record.stats;
      this.log(
        `migrated ${domain.identity.name} to ${targetLabel}: Tmig ${stats.totalMigrationTimeMs.toFixed(0)} ms, downtime ${stats.downtimeMs.toFixed(1)} ms, ${stats.pagesSent} pages in ${stats.roundCount} rounds`,
      );
    } catch (error) {
      const code = isTestbedError(error) ? error.code : 'MIGRATION_FAILED';
      // In doubt, the sender left the guest paused: the target may be running it.
      const inDoubt = code === 'MIGRATION_IN_DOUBT';
      if (domain.status === 'migrating') {
        domain.status = wasPaused || inDoubt ? 'paused' : 'running';
      }
      if (this.domains.get(domain.identity.name)?.domain === domain) {
        this.publish('migrationAborted', domain);
      }
      record.status = 'failed';
      record.error = {
        code,
        message: inDoubt
          ? `${describeError(error)}; ${domain.identity.name} stays paused on ${this.name}: resume it only once sure it does not run on the target`
          : `${describeError(error)}; ${domain.identity.name} keeps running on ${this.name}`,
      };
      this.log(`migration of ${domain.identity.name} failed: ${record.error.message}`);
    }
  }

  private acceptLink(socket: net.Socket): void {
    socket.on('error', () => {});
    acceptPeer(socket, { clusterKey: this.init.clusterKey, localHost: this.name })
      .then(async (link) => {
        if (link.purpose === 'linkTest') return serveLinkTest(link, () => this.clock.nowMs());
        if (link.purpose === 'frames') return this.frames?.adopt(link);
        if (link.purpose === 'outcome') return this.serveOutcome(link);
        if (link.purpose !== 'migration') {
          socket.destroy();
          return;
        }
        const leftover = link.reader.release();
        const key = (info: DomainInfo): string => `${link.peerHost}/${info.name}`;
        const result = await receiveMigration(
          socket,
          leftover,
          {
            reserve: (info) => {
              this.recordOutcome(key(info), { state: 'receiving' });
              return this.reserve(info);
            },
            activate: async (info, guestState, pageCrcDigest) => {
              await this.activate(info, guestState);
              this.recordOutcome(key(info), { state: 'resumed', pageCrcDigest });
            },
            discard: (info) => {
              // Only a copy that never ran is discarded; a resumed domain stays.
              if (info && this.outcomes.get(key(info))?.state === 'receiving')
                this.recordOutcome(key(info), { state: 'discarded' });
              this.discardIncoming(info);
            },
          },
          { stallTimeoutMs: this.init.stallTimeoutMs },
        );
        this.log(
          `received ${result.info.name} from ${link.peerHost}: ${result.pagesReceived} pages, state ${result.guestStateBytes} B`,
        );
      })
      .catch((error: unknown) => {
        this.log(
          `incoming link from ${socket.remoteAddress}:${socket.remotePort} failed: ${describeError(error)}`,
        );
      });
  }

  private async reserve(info: DomainInfo): Promise<GuestMemory> {
    if (this.domains.has(info.name) || this.incoming.has(info.name)) {
      throw new HypervisorError(
        'DOMAIN_EXISTS',
        `host ${this.name} already has a domain named ${info.name}`,
      );
    }
    const bytes = info.pageCount * PAGE_SIZE_BYTES;
    this.checkMemory(info.name, bytes);
    const memory = GuestMemory.create(info.layout);
    const identity: DomainIdentity = {
      domId: this.nextDomId++,
      name: info.name,
      ip: info.ip,
      tenant: info.tenant,
    };
    const pending = Domain.boot(
      identity,
      memory,
      { kind: 'incoming' },
      this.log,
      this.diskDir(info.name),
    );
    this.incoming.set(info.name, { bytes, domain: pending });
    memory.pretouch();
    await pending;
    return memory;
  }

  private async activate(info: DomainInfo, guestState: Uint8Array): Promise<void> {
    const reservation = this.incoming.get(info.name);
    if (!reservation)
      throw new HypervisorError(
        'DOMAIN_UNKNOWN',
        `no reservation for ${info.name} on ${this.name}`,
      );
    const domain = await reservation.domain;
    // Learn where the domain's peers are before it sends its first frame.
    const own = this.ownLink();
    for (const route of info.routes ?? []) {
      if (route.link !== own) this.bridge.learn(ipToU32(route.ip), route.link, false);
    }
    this.bridge.attach(domain);
    this.serveXenvmc(domain);
    await domain.restore(guestState);
    this.incoming.delete(info.name);
    this.domains.set(info.name, { domain, programs: (info.programs as ProgramSpec[]) ?? [] });
    // A snapshot, then the end-of-migration notice (Advance-XENVMC's finish_mig runs on it).
    this.publish('migratedIn', domain);
    // A gratuitous ARP: every host we know hears that this IP lives here now.
    this.announce(info.ip);
  }

  /** Other hosts this one was told about (`--peer`, /v1/peers) or learned from routes. */
  private readonly peerLinks = new Set<string>();

  /** Adds peer hosts (host:port link addresses) and tells them where our domains are. */
  addPeers(links: string[]): string[] {
    const own = this.ownLink();
    for (const link of links) {
      parseAddress(link, 'peer host');
      if (link === own || this.peerLinks.has(link)) continue;
      this.peerLinks.add(link);
      for (const { domain } of this.domains.values()) {
        const ip = domain.identity.ip;
        if (ip !== null) this.frames?.control(link, { type: 'garp', ip: ipToU32(ip), link: own });
      }
    }
    return [...this.peerLinks];
  }

  /**
   * A gratuitous ARP for `ip`: every host we know (configured peers, and hosts our routes point
   * to) hears that it lives here, so a domain on another host reaches it from the first frame.
   */
  private announce(ip: string | null): void {
    if (ip === null) return;
    const garp = { type: 'garp' as const, ip: ipToU32(ip), link: this.ownLink() };
    for (const link of new Set([...this.peerLinks, ...this.bridge.knownLinks()]))
      this.frames?.control(link, garp);
  }

  private recordOutcome(key: string, outcome: IncomingOutcomeRecord): void {
    this.outcomes.delete(key);
    this.outcomes.set(key, outcome);
    // Bounded: a source asks within seconds of its migration; keep the latest few hundred.
    if (this.outcomes.size > OUTCOMES_KEPT) {
      this.outcomes.delete(this.outcomes.keys().next().value!);
    }
  }

  /** Answers a source in doubt: what became of the domain it sent us? */
  private async serveOutcome(link: AuthenticatedLink): Promise<void> {
    try {
      const question = await link.reader.next(OUTCOME_QUESTION_TIMEOUT_MS, 'outcome question');
      const name = typeof question.domain === 'string' ? question.domain : '';
      const outcome = this.outcomes.get(`${link.peerHost}/${name}`) ?? { state: 'unknown' };
      link.socket.end(encodeControlMessage(outcome));
    } catch {
      link.socket.destroy();
    }
  }

  /**
   * The source's side of "never both": after the GuestState may have reached the target but its
   * resumed notice did not come back, asks the target (on a new authenticated link) until it
   * says 'resumed', 'discarded' or 'unknown'. A target still finishing ('receiving') is asked
   * again; its own stall timeout bounds that. A target that cannot be reached is asked again
   * too, however long it takes (a partition), while the source's copy stays paused: resuming it
   * while the target may run the domain would run it twice. Only a refused connection ends the
   * wait without an answer: no process listens at the target's address, so the copy it held
   * died with it.
   */
  private async askOutcome(
    target: { host: string; port: number },
    name: string,
  ): Promise<IncomingOutcome> {
    let retryMs = OUTCOME_RETRY_MS;
    let lastLoggedMs = Number.NEGATIVE_INFINITY;
    for (;;) {
      try {
        const answer = await this.askOutcomeOnce(target, name);
        if (answer) return answer;
      } catch (error) {
        if (connectionRefused(error)) {
          this.log(`${name}: nothing listens at the target any more (${describeError(error)})`);
          return { state: 'unreachable' };
        }
        if (this.clock.nowMs() - lastLoggedMs >= OUTCOME_LOG_INTERVAL_MS) {
          lastLoggedMs = this.clock.nowMs();
          this.log(
            `${name} stays paused here: the target may run it but cannot say (${describeError(error)}); asking again until it answers`,
          );
        }
      }
      await sleepMs(retryMs);
      retryMs = Math.min(2 * retryMs, OUTCOME_RETRY_MAX_MS);
    }
  }

  /** One question to the target; null while it is still receiving the domain. */
  private async askOutcomeOnce(
    target: { host: string; port: number },
    name: string,
  ): Promise<IncomingOutcome | null> {
    const link = await connectToPeer(target, {
      clusterKey: this.init.clusterKey,
      localHost: this.name,
      purpose: 'outcome',
    });
    try {
      link.socket.write(encodeControlMessage({ domain: name }));
      const answer = await link.reader.next(OUTCOME_QUESTION_TIMEOUT_MS, 'outcome');
      this.log(`asked ${link.peerHost} what became of ${name}: ${String(answer.state)}`);
      if (answer.state === 'resumed' && typeof answer.pageCrcDigest === 'string')
        return { state: 'resumed', pageCrcDigest: answer.pageCrcDigest };
      if (answer.state === 'discarded' || answer.state === 'unknown')
        return { state: answer.state };
      return null;
    } finally {
      link.socket.destroy();
    }
  }

  private discardIncoming(info: DomainInfo | null): void {
    const reservation = info ? this.incoming.get(info.name) : undefined;
    if (!info || !reservation) return;
    this.incoming.delete(info.name);
    reservation.domain
      .then((domain) => {
        this.grants.releaseAll(domain.identity.domId);
        return domain.destroy();
      })
      .catch((error: unknown) => {
        this.log(`discarding incoming ${info.name} failed: ${describeError(error)}`);
      });
  }

  private checkMemory(name: string, bytes: number): void {
    const used = this.memoryUsedBytes();
    if (used + bytes > this.memoryLimitBytes) {
      throw new HypervisorError(
        'HOST_NO_MEMORY',
        `host ${this.name} cannot hold ${name} (${formatBytes(bytes)}): ${formatBytes(used)} of ${formatBytes(this.memoryLimitBytes)} already in use`,
      );
    }
  }

  private entry(name: string): DomainEntry {
    const entry = this.domains.get(name);
    if (!entry) {
      const known = [...this.domains.keys()].join(', ') || 'none';
      throw new HypervisorError(
        'DOMAIN_UNKNOWN',
        `no domain named ${name} on host ${this.name} (domains: ${known})`,
      );
    }
    return entry;
  }

  private requireStatus(domain: Domain, allowed: DomainStatus[]): void {
    if (!allowed.includes(domain.status)) {
      throw new HypervisorError(
        'DOMAIN_STATE',
        `domain ${domain.identity.name} is ${domain.status}; this needs it ${allowed.join(' or ')}`,
      );
    }
  }

  xenvmcView(): XenvmcHostView {
    return {
      mode: this.xenvmcMode,
      ...this.grants.counters,
      noticesPosted: this.publisher.noticesPosted,
    };
  }

  // ---- XENVMC services ----------------------------------------------------------------------

  /** Dom0 answers this domain's XENVMC hypercalls (mode off: the domain's default denies). */
  private serveXenvmc(domain: Domain): void {
    if (this.xenvmcMode === 'off') return;
    const components = {
      grants: this.grants,
      findPeer: (domId: number) => this.residentById(domId),
      log: this.log,
    };
    // serveHypercall never throws: an answer that cannot be posted (an event-channel end
    // detached meanwhile) becomes an error reply and a log line, never the host's exit.
    domain.onHypercall = (call) =>
      serveHypercall(components, domain.identity, call, (reply, transfer) =>
        domain.post(reply, transfer),
      );
  }

  private residentById(domId: number): Domain | null {
    for (const { domain } of this.domains.values()) {
      if (domain.identity.domId === domId && isResident(domain)) return domain;
    }
    return null;
  }

  /** The domains the publisher lists: on this host and alive (incoming ones come later). */
  private residents(): PublishedDomain[] {
    const residents: PublishedDomain[] = [];
    for (const { domain } of this.domains.values()) {
      if (isResident(domain)) residents.push(publishedOf(domain));
    }
    return residents;
  }

  /**
   * Publishes `event` about `domain` once the domain list shows it. A domain that crashed in
   * the meantime is no co-resident any more, so an event that would keep it listed is dropped.
   */
  private publish(
    event: PublisherEvent,
    domain: Domain,
    overrides: { migrating?: boolean } = {},
  ): void {
    const stays = event !== 'destroyed' && event !== 'migratedOut';
    if (stays && !isResident(domain)) return;
    this.publisher.publish(event, { ...publishedOf(domain), ...overrides });
  }

  networkCounters(): Record<string, number> {
    return { ...this.bridge.counters, framesDroppedOnLinks: this.frames?.framesDropped ?? 0 };
  }

  async close(): Promise<void> {
    this.dom0.close();
    this.sampler.stop();
    this.frames?.close();
    this.server?.close();
    for (const { domain } of this.domains.values()) this.grants.releaseAll(domain.identity.domId);
    await Promise.all([...this.domains.values()].map(({ domain }) => domain.destroy()));
    this.domains.clear();
  }
}

/** A domain Dom0 can talk to: not destroyed, not crashed. */
/** No process listens at the address (the kernel refused the connection). */
function connectionRefused(error: unknown): boolean {
  const cause = error instanceof Error ? (error.cause as NodeJS.ErrnoException | undefined) : null;
  return cause?.code === 'ECONNREFUSED';
}

function isResident(domain: Domain): boolean {
  return domain.status !== 'destroyed' && domain.status !== 'crashed';
}

function publishedOf(domain: Domain): PublishedDomain {
  const { domId, ip, tenant } = domain.identity;
  return {
    domId,
    ip: ip === null ? null : ipToU32(ip),
    tenant,
    migrating: domain.status === 'migrating',
  };
}

/** 10.77.255.N with N in 1..250 from the host name, so two hosts rarely clash by default. */
function defaultDom0Ip(hostName: string): string {
  let hash = 0;
  for (const char of hostName) hash = (Math.imul(hash, 31) + char.charCodeAt(0)) >>> 0;
  return `10.77.255.${1 + (hash % 250)}`;
}
