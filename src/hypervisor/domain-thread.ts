/**
 * The body of a domain's worker thread: assembles the guest kernel with the guest programs
 * this build knows (the composition root of the guest side) and serves Dom0's requests.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { realClock } from '../core/clock.ts';
import { describeError, isTestbedError } from '../core/errors.ts';
import { decodeGuestState, encodeGuestState } from '../guest/guest-state.ts';
import { GuestKernel } from '../guest/kernel.ts';
import type { ProgramFactory } from '../guest/program.ts';
import { DirectoryDisk } from '../guest/shared-disk.ts';
import { GuestMemory } from '../memory/guest-memory.ts';
import { ipToU32 } from '../net/frame.ts';
import { connSwarmFactory } from '../workloads/conn-swarm.ts';
import { dirtierFactory } from '../workloads/dirtier.ts';
import { mailServerFactory } from '../workloads/mail/mail-server.ts';
import { mclientFactory } from '../workloads/mail/mclient.ts';
import { netbenchFactory } from '../workloads/netbench.ts';
import { streamerFactory } from '../workloads/streamer.ts';
import { XenvmcModule } from '../xenvmc/module.ts';
import type {
  DomainEvent,
  DomainNotification,
  DomainReply,
  DomainRequest,
  DomainThreadData,
} from './domain-protocol.ts';
import { EventChannel } from './event-channel.ts';

const port = parentPort;
if (!port) throw new Error('domain-thread must run in a worker thread');
const data = workerData as DomainThreadData;
const post = (message: DomainReply | DomainEvent): void => port.postMessage(message);

const factories = new Map<string, ProgramFactory>([
  [dirtierFactory.kind, dirtierFactory as ProgramFactory],
  [streamerFactory.kind, streamerFactory as ProgramFactory],
  [netbenchFactory.kind, netbenchFactory as ProgramFactory],
  [mailServerFactory.kind, mailServerFactory as ProgramFactory],
  [mclientFactory.kind, mclientFactory as ProgramFactory],
  [connSwarmFactory.kind, connSwarmFactory as ProgramFactory],
]);

const memory = GuestMemory.attach(data.memory);
const disk = data.diskDir === null ? null : new DirectoryDisk(data.diskDir);
const eventChannel = new EventChannel(data.eventChannel);
// The XENVMC module hooks the socket layer as the guest's carrier for co-resident peers; it
// does nothing until Dom0 says the host runs a mode other than 'off'.
const xenvmc = new XenvmcModule({
  identity: {
    domId: data.identity.domId,
    ip: data.identity.ip === null ? null : ipToU32(data.identity.ip),
    tenant: data.identity.tenant,
  },
  post: (call) => port.postMessage(call),
  kick: () => kernel.onNetworkEvent(),
  wallNowMs: () => Date.now(),
  log: (message) => post({ type: 'log', message }),
});
const kernel = new GuestKernel({
  memory,
  clock: realClock,
  factories,
  log: (message) => post({ type: 'log', message }),
  onCrash: (error) =>
    post({
      type: 'crashed',
      code: isTestbedError(error) ? error.code : 'GUEST_CRASHED',
      message: describeError(error),
    }),
  // A domain without an IP has no network at all (no rings in its kernel region).
  net:
    data.identity.ip === null
      ? undefined
      : {
          ip: data.identity.ip,
          seed: data.identity.domId,
          // Boot only: a migrated domain's stack keeps the buffers it was cut with.
          socketBufferBytes: data.start.kind === 'boot' ? data.start.socketBufferBytes : undefined,
          notifyBackend: () => {
            if (eventChannel.raise('toDom0')) post({ type: 'netTx' });
          },
        },
  carrier: xenvmc,
  disk: disk ?? undefined,
});

/** xenvmc-suspend: how long the suspend may wait for peers to release channels. */
const SUSPEND_WAIT_MS_MAX = 2000;

port.on('message', (request: DomainRequest | DomainNotification) => {
  if (request.type === 'netRx') {
    eventChannel.clear('toGuest');
    kernel.onNetworkEvent();
    return;
  }
  if (request.type === 'peerMoved') {
    kernel.onPeerMoved(request.ip);
    return;
  }
  if (
    request.type === 'coResidents' ||
    request.type === 'xenvmcMessage' ||
    request.type === 'migration' ||
    request.type === 'xenvmcReply'
  ) {
    xenvmc.onNotice(request);
    return;
  }
  if (request.type === 'prepareSuspend') {
    let answered = false;
    const answer = (channelsCancelled: number): void => {
      if (answered) return;
      answered = true;
      post({ id: request.id, type: 'suspendReady', channelsCancelled });
    };
    setTimeout(() => answer(-1), SUSPEND_WAIT_MS_MAX).unref();
    xenvmc.prepareSuspend(answer);
    kernel.onNetworkEvent();
    return;
  }
  try {
    switch (request.type) {
      case 'pause': {
        const guestState = encodeGuestState(kernel.pause());
        post({
          id: request.id,
          type: 'paused',
          guestState,
          guestStateBytes: guestState.byteLength,
        });
        break;
      }
      case 'resume':
        kernel.resume();
        post({ id: request.id, type: 'resumed' });
        break;
      case 'sync':
        post({ id: request.id, type: 'synced' });
        break;
      case 'release':
        kernel.halt();
        disk?.close();
        post({ id: request.id, type: 'released' });
        break;
      case 'restore':
        kernel.restore(decodeGuestState(request.guestState));
        kernel.resume();
        post({ id: request.id, type: 'resumed' });
        break;
      case 'stats':
        post({
          id: request.id,
          type: 'stats',
          guestTimeMs: kernel.guestNowMs(),
          programs: kernel.programStats(),
          net: kernel.netCounters(),
          pageCache: kernel.pageCacheCounters(),
          xenvmc: {
            mode: xenvmc.state.mode,
            counters: xenvmc.state.counters,
            coResidents: xenvmc.table(),
            events: xenvmc.state.events.slice(-32),
          },
        });
        break;
    }
  } catch (error) {
    post({
      id: request.id,
      type: 'failed',
      code: isTestbedError(error) ? error.code : 'GUEST_ERROR',
      message: describeError(error),
    });
  }
});

try {
  if (data.start.kind === 'boot') kernel.boot(data.start.programs);
  post({ type: 'ready' });
} catch (error) {
  post({
    type: 'crashed',
    code: isTestbedError(error) ? error.code : 'GUEST_BOOT_FAILED',
    message: describeError(error),
  });
}
