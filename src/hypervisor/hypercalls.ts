/**
 * Dom0's answers to a guest's XENVMC hypercalls (src/xenvmc/protocol.ts `XenvmcCall`): the
 * grant table, the event channels, and the message manager's relay to a co-resident domain.
 *
 * Method: one function from a call to a reply and the ports to transfer with it; refusals are
 * replies too, so a guest never sees Dom0 throw; `serveHypercall` also posts the reply and
 * turns a failure to post it into an error reply. The host supplies the table and a way to find
 * a co-resident domain; nothing here touches a worker, so it is tested without one.
 */
import type { MessagePort } from 'node:worker_threads';
import { describeError } from '../core/errors.ts';
import type { XenvmcCall, XenvmcMessageNotice, XenvmcReply } from '../xenvmc/protocol.ts';
import { type DomainRef, type GrantTable, XenvmcError } from './grant-table.ts';

/** A co-resident domain as the hypercalls need it. */
export interface HypercallPeer {
  identity: DomainRef;
  /** Posts a relayed control message to the domain. */
  post(message: XenvmcMessageNotice): void;
}

export interface HypercallComponents {
  grants: GrantTable;
  /** The domain `domId` on this host (running, paused or migrating), or null. */
  findPeer: (domId: number) => HypercallPeer | null;
  /** Told of calls that failed for another reason than a refusal (malformed calls). */
  log?: (line: string) => void;
}

/** A reply and what must go in the `postMessage` transfer list with it. */
export interface HypercallAnswer {
  reply: XenvmcReply;
  transfer: MessagePort[];
}

type OkFields = Omit<Extract<XenvmcReply, { ok: true }>, 'type' | 'id' | 'ok'>;

/** Serves `call` from `self`; never throws. */
export function answerHypercall(
  components: HypercallComponents,
  self: DomainRef,
  call: XenvmcCall,
): HypercallAnswer {
  try {
    return serve(components, self, call);
  } catch (error) {
    // A refusal is an answer; anything else is a malformed call from the guest, which must
    // not take Dom0 down: log it and deny.
    const refused = error instanceof XenvmcError;
    if (!refused) {
      components.log?.(`dom${self.domId} hypercall failed: ${describeError(error)}`);
    }
    return {
      reply: {
        type: 'xenvmcReply',
        id: call.id,
        ok: false,
        code: refused ? error.code : 'XENVMC_DENIED',
        message: refused ? error.message : describeError(error),
      },
      transfer: [],
    };
  }
}

/**
 * Serves `call` and posts the answer with `post`; never throws. Posting can fail after the
 * answer was made: a port in the transfer list whose other end was closed in the meantime is
 * detached (the guest that allocated an event channel closed its end, or its thread died,
 * while the peer's bind was on its way). That guest is then answered with an error (a bind:
 * XENVMC_NOT_GRANTED, the refusal it already handles), the failure is logged, and a channel
 * that could not be handed over is dropped; no guest's call may take Dom0 down.
 */
export function serveHypercall(
  components: HypercallComponents,
  self: DomainRef,
  call: XenvmcCall,
  post: (reply: XenvmcReply, transfer: MessagePort[]) => void,
): void {
  const { reply, transfer } = answerHypercall(components, self, call);
  try {
    post(reply, transfer);
    return;
  } catch (error) {
    components.log?.(
      `dom${self.domId} hypercall ${String(call.op)} #${call.id}: its answer could not be posted ` +
        `(${describeError(error)}); answering with an error`,
    );
  }
  const bind = call.op === 'evtchnBind' && reply.ok;
  if (bind) {
    // The peer end never reached the binder: the channel is dead for both, drop it now (the
    // owner's own close then answers `unknown`).
    try {
      components.grants.evtchnClose(call.port, self);
    } catch (error) {
      components.log?.(`dom${self.domId} event channel ${call.port}: ${describeError(error)}`);
    }
  }
  try {
    post(
      {
        type: 'xenvmcReply',
        id: call.id,
        ok: false,
        code: bind ? 'XENVMC_NOT_GRANTED' : 'XENVMC_DENIED',
        message: bind
          ? `event channel port ${call.port} was closed by its owner`
          : `Dom0 could not post the answer to ${String(call.op)}`,
      },
      [],
    );
  } catch (error) {
    components.log?.(
      `dom${self.domId} hypercall #${call.id}: no answer posted: ${describeError(error)}`,
    );
  }
}

function serve(
  components: HypercallComponents,
  self: DomainRef,
  call: XenvmcCall,
): HypercallAnswer {
  const { grants } = components;
  const ok = (fields: OkFields = {}, transfer: MessagePort[] = []): HypercallAnswer => ({
    reply: { type: 'xenvmcReply', id: call.id, ok: true, ...fields },
    transfer,
  });
  switch (call.op) {
    case 'grant': {
      const peer = peerOf(components, self, call.peerDomId);
      return ok(grants.grant(self, peer.identity, call.bytes));
    }
    case 'map': {
      const region = grants.map(call.grantRef, self, { granterDomId: call.granterDomId });
      return ok({ grantRef: call.grantRef, region });
    }
    case 'release':
      grants.release(call.grantRef, self);
      return ok({ grantRef: call.grantRef });
    case 'evtchnAlloc': {
      const peer = peerOf(components, self, call.peerDomId);
      const { port, endpoint } = grants.evtchnAlloc(self, peer.identity);
      return ok({ port, endpoint }, [endpoint]);
    }
    case 'evtchnBind': {
      const endpoint = grants.evtchnBind(self, call.peerDomId, call.port);
      return ok({ port: call.port, endpoint }, [endpoint]);
    }
    case 'evtchnClose':
      grants.evtchnClose(call.port, self);
      return ok({ port: call.port });
    case 'send': {
      // The message manager relays only where a channel could exist: same policy as grants.
      const peer = peerOf(components, self, call.peerDomId);
      if (!grants.mayShare(self, peer.identity)) {
        throw new XenvmcError(
          'XENVMC_DENIED',
          `policy forbids messages from dom${self.domId} to dom${call.peerDomId}`,
        );
      }
      peer.post({ type: 'xenvmcMessage', fromDomId: self.domId, message: call.message });
      return ok();
    }
    default:
      throw new XenvmcError(
        'XENVMC_DENIED',
        `unknown XENVMC operation '${String((call as { op?: unknown }).op)}'`,
      );
  }
}

function peerOf(components: HypercallComponents, self: DomainRef, domId: number): HypercallPeer {
  const peer = components.findPeer(domId);
  if (peer === null) {
    throw new XenvmcError(
      'XENVMC_NO_PEER',
      `dom${self.domId} named dom${domId}, which is not on this host`,
    );
  }
  return peer;
}
