/**
 * A guest domain as Dom0 sees it: its memory, its worker thread, and the request/reply channel
 * to the guest kernel inside. Lifecycle: boot (fresh or restored from a migration) -> running
 * <-> paused -> destroyed. A crashed guest program halts the domain, never the host.
 */
import { type MessagePort, Worker } from 'node:worker_threads';
import { describeError } from '../core/errors.ts';
import type { GuestMemory } from '../memory/guest-memory.ts';
import type { XenvmcCall } from '../xenvmc/protocol.ts';
import type {
  DomainEvent,
  DomainIdentity,
  DomainNotification,
  DomainReply,
  DomainRequest,
  DomainStart,
  DomainThreadData,
  ProgramStatsRow,
} from './domain-protocol.ts';
import { HypervisorError } from './errors.ts';
import { EventChannel } from './event-channel.ts';

export type DomainStatus = 'running' | 'paused' | 'migrating' | 'crashed' | 'destroyed';

/** How long a guest may take to answer Dom0 between two events. */
const GUEST_REPLY_TIMEOUT_MS = 10_000;
/** How long a destroyed domain may take to release its host resources before it is terminated. */
const RELEASE_WAIT_MS = 1000;
const ENTRY = new URL('./domain-entry.mjs', import.meta.url);

type Pending = { resolve: (reply: DomainReply) => void; reject: (error: Error) => void };
type RequestType = Exclude<DomainRequest['type'], 'restore'>;

export class Domain {
  readonly identity: DomainIdentity;
  readonly memory: GuestMemory;
  status: DomainStatus = 'running';
  crash: { code: string; message: string } | null = null;
  /**
   * The guest kernel runs (between a pause reply and a resume it does not). Netback touches
   * the domain's rings only while this holds: see bridge.ts.
   */
  guestRunning = false;
  /** Netfront's event channel with this domain. */
  readonly eventChannel: EventChannel;
  /** Dom0's XENVMC services (grant table, event channels, message manager) answer these. */
  onHypercall: (call: XenvmcCall) => void = (call) =>
    this.post({
      type: 'xenvmcReply',
      id: call.id,
      ok: false,
      code: 'XENVMC_DENIED',
      message: 'this host offers no XENVMC services',
    });

  /** Sends a notice or a hypercall reply to the guest (transferring MessagePorts if any). */
  post(message: DomainNotification, transfer: MessagePort[] = []): void {
    if (this.status !== 'destroyed' && this.status !== 'crashed')
      this.worker.postMessage(message, transfer);
  }

  /** Dom0's netback: called when the guest kicks the event channel. */
  onNetTx: () => void = () => {};
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextRequestId = 1;
  private readonly log: (line: string) => void;

  private constructor(
    identity: DomainIdentity,
    memory: GuestMemory,
    worker: Worker,
    log: (line: string) => void,
    eventChannel: EventChannel,
  ) {
    this.eventChannel = eventChannel;
    this.identity = identity;
    this.memory = memory;
    this.worker = worker;
    this.log = log;
  }

  /** Starts the domain's thread and resolves once the guest kernel runs its programs. */
  static boot(
    identity: DomainIdentity,
    memory: GuestMemory,
    start: DomainStart,
    log: (line: string) => void,
    diskDir: string | null = null,
  ): Promise<Domain> {
    const eventChannel = new EventChannel();
    const workerData: DomainThreadData = {
      identity,
      memory: memory.toShared(),
      start,
      eventChannel: eventChannel.buffer,
      diskDir,
    };
    const worker = new Worker(ENTRY, { workerData, name: `dom${identity.domId}-${identity.name}` });
    const domain = new Domain(identity, memory, worker, log, eventChannel);
    return new Promise((resolve, reject) => {
      let ready = false;
      worker.on('message', (message: DomainReply | DomainEvent) => {
        if (message.type === 'xenvmc') {
          // Thrown here, an error would leave the worker's message listener and end the host
          // process: one guest's hypercall must never do that.
          try {
            domain.onHypercall(message);
          } catch (error) {
            log(
              `dom${identity.domId} ${identity.name}: hypercall #${message.id} failed: ${describeError(error)}`,
            );
          }
          return;
        }
        if (!('id' in message)) {
          if (message.type === 'netTx') {
            domain.eventChannel.clear('toDom0');
            domain.onNetTx();
          } else if (message.type === 'ready') {
            ready = true;
            domain.guestRunning = start.kind === 'boot';
            resolve(domain);
          } else if (message.type === 'crashed') {
            domain.markCrashed(message.code, message.message);
            if (!ready) {
              void worker.terminate();
              reject(
                new HypervisorError(
                  'DOMAIN_BOOT_FAILED',
                  `domain ${identity.name} failed to boot: ${message.message}`,
                ),
              );
            }
          } else if (message.type === 'log') {
            log(`dom${identity.domId} ${identity.name}: ${message.message}`);
          }
          return;
        }
        const waiter = domain.pending.get(message.id);
        domain.pending.delete(message.id);
        waiter?.resolve(message);
      });
      worker.on('error', (error) => {
        domain.markCrashed('DOMAIN_CRASHED', error.message);
        if (!ready)
          reject(
            new HypervisorError(
              'DOMAIN_BOOT_FAILED',
              `domain ${identity.name} thread failed: ${error.message}`,
              { cause: error },
            ),
          );
      });
      worker.on('exit', () => {
        for (const waiter of domain.pending.values()) {
          waiter.reject(
            new HypervisorError('DOMAIN_CRASHED', `domain ${identity.name} thread exited`),
          );
        }
        domain.pending.clear();
        if (!ready)
          reject(
            new HypervisorError(
              'DOMAIN_BOOT_FAILED',
              `domain ${identity.name} thread exited during boot`,
            ),
          );
      });
    });
  }

  /** Pauses between two events; returns the serialised GuestState. */
  async pause(): Promise<{ guestState: Uint8Array; guestStateBytes: number }> {
    const reply = await this.request('pause');
    if (reply.type !== 'paused') throw this.unexpected(reply);
    this.guestRunning = false;
    if (this.status === 'running') this.status = 'paused';
    return { guestState: reply.guestState, guestStateBytes: reply.guestStateBytes };
  }

  async resume(): Promise<void> {
    const reply = await this.request('resume');
    if (reply.type !== 'resumed') throw this.unexpected(reply);
    this.guestRunning = true;
    if (this.status === 'paused' || this.status === 'migrating') this.status = 'running';
    this.serviceRingsOnce();
  }

  /**
   * Round trip to the guest, answered between two events. After it, every guest write made
   * before the guest saw it is visible to Dom0, and every later write sees the current
   * log-dirty switch (message passing orders both).
   */
  /** Incoming domains: hands over the migrated GuestState and runs the guest. */
  async restore(guestState: Uint8Array): Promise<void> {
    const reply = await this.request({ type: 'restore', guestState });
    if (reply.type !== 'resumed') throw this.unexpected(reply);
    this.guestRunning = true;
    this.status = 'running';
    this.serviceRingsOnce();
  }

  /**
   * Netback looks at the TX ring once the guest runs again. The guest kicks as it resumes,
   * before its `resumed` reply, while netback may not touch its rings yet: that kick is spent,
   * and the pending bit folds later kicks into it, so a guest that filled its TX ring then
   * (every stream resending after a migration) would never be serviced again.
   */
  private serviceRingsOnce(): void {
    this.onNetTx();
  }

  async sync(): Promise<void> {
    const reply = await this.request('sync');
    if (reply.type !== 'synced') throw this.unexpected(reply);
  }

  /**
   * xenvmc-suspend mode, just before the final pause: asks the guest's XENVMC module to cancel
   * every shared-memory channel (falling back to netfront), as XenVMC's suspend handler does,
   * and resolves with how many it cancelled. Bounded by the guest reply timeout.
   */
  async prepareSuspend(): Promise<number> {
    const reply = await this.request('prepareSuspend');
    if (reply.type !== 'suspendReady') throw this.unexpected(reply);
    return reply.channelsCancelled;
  }

  async stats(): Promise<{
    guestTimeMs: number;
    programs: ProgramStatsRow[];
    net: Record<string, number> | null;
    pageCache: Record<string, number> | null;
    xenvmc: unknown;
  }> {
    const reply = await this.request('stats');
    if (reply.type !== 'stats') throw this.unexpected(reply);
    return {
      guestTimeMs: reply.guestTimeMs,
      programs: reply.programs,
      net: reply.net,
      pageCache: reply.pageCache,
      xenvmc: reply.xenvmc,
    };
  }

  /** Frames are on the RX ring: kick the guest (once per burst, see EventChannel). */
  notifyRx(): void {
    if (this.eventChannel.raise('toGuest')) this.notify({ type: 'netRx' });
  }

  /** Tells the guest that `ip` moved to another host, so its streams to it resend at once. */
  notifyPeerMoved(ip: number): void {
    this.notify({ type: 'peerMoved', ip });
  }

  private notify(message: DomainNotification): void {
    if (this.status !== 'destroyed' && this.status !== 'crashed') this.worker.postMessage(message);
  }

  async destroy(): Promise<void> {
    // Let the guest close its disk's files first: descriptors belong to the host process and
    // outlive a terminated thread. A guest that does not answer soon is terminated anyway.
    if (this.status !== 'destroyed' && this.status !== 'crashed') {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.request('release').catch(() => {}),
        new Promise((resolve) => {
          timer = setTimeout(resolve, RELEASE_WAIT_MS);
        }),
      ]);
      clearTimeout(timer);
    }
    this.status = 'destroyed';
    await this.worker.terminate();
  }

  private markCrashed(code: string, message: string): void {
    this.crash = { code, message };
    if (this.status !== 'destroyed') this.status = 'crashed';
    this.log(`dom${this.identity.domId} ${this.identity.name} crashed: ${message}`);
  }

  private request(
    what: RequestType | Omit<Extract<DomainRequest, { type: 'restore' }>, 'id'>,
  ): Promise<DomainReply> {
    const body = typeof what === 'string' ? { type: what } : what;
    const type = body.type;
    if (this.status === 'destroyed' || this.status === 'crashed') {
      return Promise.reject(
        new HypervisorError(
          'DOMAIN_STATE',
          `domain ${this.identity.name} is ${this.status}${this.crash ? ` (${this.crash.message})` : ''}`,
        ),
      );
    }
    const id = this.nextRequestId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new HypervisorError(
            'DOMAIN_TIMEOUT',
            `domain ${this.identity.name} did not answer '${type}' within ${GUEST_REPLY_TIMEOUT_MS} ms`,
          ),
        );
      }, GUEST_REPLY_TIMEOUT_MS);
      this.pending.set(id, {
        resolve: (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      this.worker.postMessage({ id, ...body } as DomainRequest);
    });
  }

  private unexpected(reply: DomainReply): Error {
    if (reply.type === 'failed') {
      return new HypervisorError('DOMAIN_STATE', `domain ${this.identity.name}: ${reply.message}`);
    }
    return new Error(`domain ${this.identity.name} answered ${reply.type} unexpectedly`);
  }
}
