/**
 * Mclient: the guest program of VM2 in the paper's experiment, a shell loop that sends mail to
 * VM1's mail server while VM1 is migrated:
 * `for i in 1..n: for j in 1..n: mail -s "This is test" -a FILE test$j.user@xenlab.local`, run
 * as test$i, so n = 20 gives 400 mails with a 1 MB or 3 MB file each (see ./message.ts).
 *
 * Method. One SMTP connection per mail, in loop order, as `mail` hands each message to sendmail:
 *
 * ```
 * connect (refused or unreachable: retry every 100 ms, up to connectTriesMax tries)
 *   <- 220                          greeting
 *   -> EHLO vm-client.<domain>      ehlo       (PIPELINING and SIZE read from the reply)
 *   -> MAIL FROM:<from> SIZE=<len>  mailFrom   \  with PIPELINING: one write of the three
 *   -> RCPT TO:<to>                 rcptTo      > commands, then their three replies in order
 *   -> DATA                 <- 354  data       /  (phase `envelope`)
 *   -> the message                  message    (chunks staged in guest memory)
 *   -> .                    <- 250  dataEnd    the mail counts as sent
 *   -> QUIT                 <- 221  quit
 * close, wait for `closed`          closing
 * wait pacingMs (if > 0)            pacing
 * ```
 *
 * The message is generated, never stored: each 64 KiB chunk is filled by `fillMessage` from the
 * mail's offset and copied into a staging slot at the start of the program's data region through
 * `GuestMemory.write` (an application's buffer: it dirties program pages, as in Xen), then
 * written to the socket from a view of guest memory, as the streamer does. A partial write keeps
 * its place in the state and sending resumes on `writable`; one event writes at most
 * `MCLIENT_SEND_BYTES_PER_EVENT_MAX` and then yields with a 0 ms timer. No line of the message
 * starts with '.', so no dot-stuffing; the message ends with CRLF, so the end is `.` CRLF.
 *
 * Failures. A reply other than the expected one at any step, a malformed reply, a socket error
 * or close, or no progress for `MCLIENT_STALL_MS_MAX` fails the mail: its first error is kept,
 * the connection is closed, and the loop goes on with the next mail. A mail is never retried:
 * once its data may have reached the server a retry could deliver it twice, and the experiment's
 * checker counts duplicates as failures. The SMTP decisions are one pure function,
 * `planSmtpReply`; the program applies what it returns.
 *
 * State is plain data (a migration saves it between two events): the socket is kernel state,
 * the message is an offset, the reply parser's state is a partial line. `restore` arms no timer
 * (the kernel re-arms saved ones).
 *
 * Non-goals: HELO fallback for servers without EHLO, STARTTLS and AUTH, more than one recipient
 * per mail, refusing a message over the server's advertised SIZE before sending it (the server
 * answers 552 and the mail fails, as it would with sendmail's defaults), and retrying mails.
 */

import assert from 'node:assert/strict';
import { InputError } from '../../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../../core/units.ts';
import type { GuestProgram, ProgramContext, ProgramFactory } from '../../guest/program.ts';
import type { GuestNet, SocketEvent } from '../../guest/socket-api.ts';
import type { Region } from '../../memory/layout.ts';
import { checkInteger, checkKnownParams, IPV4 } from '../params.ts';
import {
  callSocket,
  type LifecycleOptions,
  type LifecycleState,
  onSocketClosed,
  onSocketError,
  startConnect,
} from '../socket-lifecycle.ts';
import {
  ATTACHMENT_BYTES_MAX,
  fillMessage,
  isMailDomain,
  MAIL_DOMAIN_DEFAULT,
  type MailSpec,
  mailFrom,
  mailSpecAt,
  mailTo,
  messageLength,
} from './message.ts';
import {
  createSmtpReplyState,
  feedSmtpReplies,
  type SmtpReply,
  SmtpReplyError,
  type SmtpReplyState,
} from './smtp-reply.ts';

/** The program kind, as registered with the guest kernel. */
export const MCLIENT_KIND = 'mclient';
/** Timer tag: the next connect attempt of the current mail. */
export const MCLIENT_CONNECT_TAG = 'connect';
/** Timer tag: continue sending after a full per-event budget. */
export const MCLIENT_SEND_TAG = 'send';
/** Timer tag: start the next mail after `pacingMs`. */
export const MCLIENT_NEXT_TAG = 'next';
/** Timer tag: the stall check (see `MCLIENT_STALL_MS_MAX`). */
export const MCLIENT_WATCHDOG_TAG = 'watchdog';

/** SMTP's port. */
export const SMTP_PORT_DEFAULT = 25;
/** Largest n: 100 x 100 = 10 000 mails; the paper's largest is 20 (400 mails). */
export const MCLIENT_N_MAX = 100;
/** Longest pause between two mails: one hour; more says the set-up is wrong. */
export const MCLIENT_PACING_MS_MAX = 3_600_000;
/** Pause between two connect attempts (the server's domain may be booting or paused). */
export const MCLIENT_CONNECT_RETRY_MS = 100;
/** Default connect attempts per mail: 10 s of retries. */
export const MCLIENT_CONNECT_TRIES_MAX_DEFAULT = 100;
/** Most connect attempts per mail: one hour of retries. */
export const MCLIENT_CONNECT_TRIES_MAX_LIMIT = 36_000;
/** Message bytes generated and written per chunk: a common application write (16 pages). */
export const MCLIENT_CHUNK_BYTES = 64 * 1024;
/**
 * Most bytes one event writes before yielding with a 0 ms timer, as the streamer's bound: it
 * keeps one guest event short (the kernel pauses a domain only between events).
 */
export const MCLIENT_SEND_BYTES_PER_EVENT_MAX = 4 * 1024 * 1024;
/** Bytes asked for per `read`; replies are short, and the loop reads until the socket is empty. */
export const MCLIENT_READ_BYTES_MAX = 16 * 1024;
/** How often the stall check runs while mails are in flight. */
export const MCLIENT_WATCHDOG_INTERVAL_MS = 10_000;
/**
 * A mail that makes no progress (no byte written or read, no connect attempt) for this long
 * fails: 5 minutes, RFC 5321 4.5.3.2's shortest reply timeout, far above a migration's downtime
 * (guest time stops while a domain is paused, so a pause alone never trips it).
 */
export const MCLIENT_STALL_MS_MAX = 300_000;

/** Parameters of Mclient, e.g. from a scenario. */
export interface MclientParams {
  /** The mail server's IPv4 address. */
  serverIp: string;
  /**
   * The server's SMTP port, in [1, 65535].
   * @default 25
   */
  port?: number;
  /** The loop's size, in [1, 100]: n x n mails. */
  n: number;
  /** Size of each attached file in bytes, in [0, 64 MiB]. */
  fileSizeBytes: number;
  /**
   * Guest ms between the end of one mail (its connection closed) and the start of the next, in
   * [0, 3600000]; 0 starts the next mail at once.
   * @default 0
   */
  pacingMs?: number;
  /**
   * Seed of the attached files' bytes and the mails' dates, an unsigned 32-bit integer.
   * @default 1
   */
  seed?: number;
  /**
   * Mail domain: senders test<i>.user@domain, recipients test<j>.user@domain.
   * @default 'xenlab.local'
   */
  domain?: string;
  /**
   * Connect attempts per mail before the mail fails, `MCLIENT_CONNECT_RETRY_MS` apart, in
   * [1, 36000].
   * @default 100
   */
  connectTriesMax?: number;
  /**
   * Send MAIL, RCPT and DATA in one write when the server advertises PIPELINING (RFC 2920);
   * false always waits for each reply. Never pipelines with a server that does not advertise it.
   * @default true
   */
  pipelining?: boolean;
}

/** Mclient parameters with every default filled in. */
export interface MclientConfig {
  serverIp: string;
  port: number;
  n: number;
  fileSizeBytes: number;
  pacingMs: number;
  seed: number;
  domain: string;
  connectTriesMax: number;
  pipelining: boolean;
}

/**
 * - `idle`: created, not started.
 * - `connect`: connecting or waiting to retry (the connection's own phase says which).
 * - `greeting` .. `quit`: waiting for the reply to that step (see the header's diagram);
 *   `envelope` waits for the three pipelined replies, `message` sends the message.
 * - `closing`: `close()` called, after QUIT or a failure; waiting for `closed`.
 * - `pacing`: between two mails.
 * - `done`: every mail attempted and the last connection closed.
 */
export type MclientPhase =
  | 'idle'
  | 'connect'
  | 'greeting'
  | 'ehlo'
  | 'mailFrom'
  | 'rcptTo'
  | 'data'
  | 'envelope'
  | 'message'
  | 'dataEnd'
  | 'quit'
  | 'closing'
  | 'pacing'
  | 'done';

/** One mail's connection, in the shape the shared lifecycle helpers read and write. */
export interface MclientConnection extends LifecycleState {
  /** 'idle' | 'connecting' | 'retryWait' | 'open' | 'closing' | 'done' | 'failed'. */
  phase: string;
  lastSocketCallError: string;
}

/** Mclient's whole state: plain structured-clone data. */
export interface MclientState {
  params: MclientConfig;
  phase: MclientPhase;
  /** 0-based index of the current mail in loop order; n x n once done. */
  mailIndex: number;
  /** The current mail's connection (a fresh one per mail). */
  connection: MclientConnection;
  /** The current connection's reply parser. */
  replies: SmtpReplyState;
  /** The current mail's dialogue pipelines MAIL, RCPT and DATA. */
  pipelining: boolean;
  /** Replies to the pipelined commands received so far (0..2). */
  envelopeReplies: number;
  /** Command bytes (ASCII) waiting for the socket, and how many of them it took. */
  outbox: string;
  outboxSentBytes: number;
  /** The current message's length and the bytes of it the socket took. */
  messageBytes: number;
  messageSentBytes: number;
  /** The staged chunk's size and the bytes of it the socket took. */
  chunkSizeBytes: number;
  chunkSentBytes: number;
  /** A `send` timer is pending. */
  sendTimerArmed: boolean;
  /** 'pending' until the mail is sent (250 after the data) or failed. */
  mailOutcome: 'pending' | 'sent' | 'failed';
  mailsSent: number;
  mailsFailed: number;
  /** Every byte the sockets took (commands and messages), and the message bytes alone. */
  bytesSent: number;
  messageBytesSent: number;
  /** Connect attempts over all mails. */
  connectTries: number;
  /** Errors: each failed mail's first error, and errors after a mail was sent (a bad QUIT). */
  errors: number;
  firstError: string;
  lastError: string;
  /** Per settled mail, in loop order: guest ms from its first connect to its 250; -1 if failed. */
  latenciesMs: number[];
  /** Per started mail, in loop order: the guest time it started. */
  mailStartMs: number[];
  startedMs: number | null;
  finishedMs: number | null;
  /** Guest time of the last progress (see `MCLIENT_STALL_MS_MAX`). */
  lastProgressMs: number;
}

// ---- parameters -----------------------------------------------------------------------------

const PARAM_NAMES: ReadonlySet<string> = new Set([
  'serverIp',
  'port',
  'n',
  'fileSizeBytes',
  'pacingMs',
  'seed',
  'domain',
  'connectTriesMax',
  'pipelining',
]);

/**
 * Checks `params` against the program's data region and fills in the defaults. Throws
 * `InputError` naming the parameter, its value and what is allowed.
 */
export function resolveMclientParams(params: MclientParams, dataRegion: Region): MclientConfig {
  if (typeof params !== 'object' || params === null) {
    throw new InputError(`mclient parameters must be an object; got ${String(params)}`);
  }
  checkKnownParams('mclient', params, PARAM_NAMES);
  if (typeof params.serverIp !== 'string' || !IPV4.test(params.serverIp)) {
    throw new InputError(
      `serverIp must be the mail server's IPv4 address; got ${String(params.serverIp)}`,
    );
  }
  const domain = params.domain ?? MAIL_DOMAIN_DEFAULT;
  if (!isMailDomain(domain)) {
    throw new InputError(
      `domain must be a DNS name (letters, digits, '-', '.') of at most 200 characters; ` +
        `got ${String(domain)}`,
    );
  }
  if (params.pipelining !== undefined && typeof params.pipelining !== 'boolean') {
    throw new InputError(`pipelining must be true or false; got ${String(params.pipelining)}`);
  }
  const regionBytes = dataRegion.pageCount * PAGE_SIZE_BYTES;
  if (regionBytes < MCLIENT_CHUNK_BYTES) {
    throw new InputError(
      `the program's data region of ${regionBytes} B cannot hold mclient's ` +
        `${MCLIENT_CHUNK_BYTES} B staging area`,
    );
  }
  return {
    serverIp: params.serverIp,
    port: checkInteger('port', params.port ?? SMTP_PORT_DEFAULT, 1, 65535),
    n: checkInteger('n', params.n, 1, MCLIENT_N_MAX),
    fileSizeBytes: checkInteger('fileSizeBytes', params.fileSizeBytes, 0, ATTACHMENT_BYTES_MAX),
    pacingMs: checkInteger('pacingMs', params.pacingMs ?? 0, 0, MCLIENT_PACING_MS_MAX),
    seed: checkInteger('seed', params.seed ?? 1, 0, 0xffff_ffff),
    domain,
    connectTriesMax: checkInteger(
      'connectTriesMax',
      params.connectTriesMax ?? MCLIENT_CONNECT_TRIES_MAX_DEFAULT,
      1,
      MCLIENT_CONNECT_TRIES_MAX_LIMIT,
    ),
    pipelining: params.pipelining ?? true,
  };
}

// ---- the SMTP dialogue (pure) ---------------------------------------------------------------

/** What the dialogue needs to know about the current mail to answer a reply. */
export interface SmtpDialogue {
  phase: MclientPhase;
  /** Replies to pipelined commands received so far (phase `envelope`). */
  envelopeReplies: number;
  /** Pipelining allowed by the parameters (the server must advertise it too). */
  pipeliningWanted: boolean;
  /** Envelope addresses and the message length (for SIZE). */
  from: string;
  to: string;
  messageBytes: number;
  domain: string;
}

/** What to do with a reply. */
export type SmtpReplyAction =
  /** Write `commands`, then wait in `phase` (`pipelining` decided at EHLO). */
  | { kind: 'send'; commands: string; phase: MclientPhase; pipelining?: boolean }
  /** A pipelined MAIL or RCPT was accepted; wait for the next reply. */
  | { kind: 'wait' }
  /** 354: send the message. */
  | { kind: 'message' }
  /** The mail is accepted (2xx after the data); QUIT follows. */
  | { kind: 'accepted' }
  /** 221 to QUIT: close. */
  | { kind: 'quitted' }
  /** The reply says no (or comes when none is due). */
  | { kind: 'fail'; reason: string };

/** The client's EHLO name. */
export function heloName(domain: string): string {
  return `vm-client.${domain}`;
}

function describeReply(reply: SmtpReply): string {
  return `${reply.code} ${reply.lines.join(' / ')}`.trim();
}

/** The EHLO reply's extension keywords (every line after the first), upper-cased. */
export function ehloKeywords(reply: SmtpReply): Set<string> {
  return new Set(reply.lines.slice(1).map((line) => line.split(' ')[0]!.toUpperCase()));
}

/**
 * Decides what a reply means at the dialogue's current step (see the header's diagram). Pure:
 * the program applies the returned action.
 */
export function planSmtpReply(dialogue: SmtpDialogue, reply: SmtpReply): SmtpReplyAction {
  const positive = reply.code >= 200 && reply.code < 300;
  const refuse = (what: string): SmtpReplyAction => ({
    kind: 'fail',
    reason: `${what} answered ${describeReply(reply)}`,
  });
  const mailCommand = `MAIL FROM:<${dialogue.from}>`;
  const rcptCommand = `RCPT TO:<${dialogue.to}>`;
  switch (dialogue.phase) {
    case 'greeting':
      if (reply.code !== 220) return refuse('the greeting');
      return {
        kind: 'send',
        commands: `EHLO ${heloName(dialogue.domain)}\r\n`,
        phase: 'ehlo',
      };
    case 'ehlo': {
      if (!positive) return refuse('EHLO');
      const keywords = ehloKeywords(reply);
      const pipelining = dialogue.pipeliningWanted && keywords.has('PIPELINING');
      // RFC 1870: SIZE only to a server that advertises it.
      const size = keywords.has('SIZE') ? ` SIZE=${dialogue.messageBytes}` : '';
      const mail = `${mailCommand}${size}\r\n`;
      return pipelining
        ? {
            kind: 'send',
            commands: `${mail}${rcptCommand}\r\nDATA\r\n`,
            phase: 'envelope',
            pipelining,
          }
        : { kind: 'send', commands: mail, phase: 'mailFrom', pipelining };
    }
    case 'mailFrom':
      if (!positive) return refuse(mailCommand);
      return { kind: 'send', commands: `${rcptCommand}\r\n`, phase: 'rcptTo' };
    case 'rcptTo':
      if (!positive) return refuse(rcptCommand);
      return { kind: 'send', commands: 'DATA\r\n', phase: 'data' };
    case 'data':
      return reply.code === 354 ? { kind: 'message' } : refuse('DATA');
    case 'envelope':
      if (dialogue.envelopeReplies === 0) return positive ? { kind: 'wait' } : refuse(mailCommand);
      if (dialogue.envelopeReplies === 1) return positive ? { kind: 'wait' } : refuse(rcptCommand);
      return reply.code === 354 ? { kind: 'message' } : refuse('DATA');
    case 'dataEnd':
      return positive ? { kind: 'accepted' } : refuse('the end of the data');
    case 'quit':
      return reply.code === 221 ? { kind: 'quitted' } : refuse('QUIT');
    default:
      return {
        kind: 'fail',
        reason: `unexpected reply ${describeReply(reply)} in ${dialogue.phase}`,
      };
  }
}

// ---- the program ----------------------------------------------------------------------------

/** Phases with a connection whose replies we wait for. */
const DIALOGUE_PHASES: ReadonlySet<MclientPhase> = new Set([
  'greeting',
  'ehlo',
  'mailFrom',
  'rcptTo',
  'data',
  'envelope',
  'message',
  'dataEnd',
  'quit',
]);

function freshConnection(): MclientConnection {
  return {
    phase: 'idle',
    socket: null,
    connectTries: 0,
    errors: 0,
    lastError: '',
    lastSocketCallError: '',
  };
}

class Mclient implements GuestProgram<MclientState> {
  readonly kind = MCLIENT_KIND;
  readonly state: MclientState;
  private readonly context: ProgramContext;
  private readonly stagingAddress: number;
  /** Where a chunk is generated before its copy into guest memory; not state. */
  private scratch: Uint8Array | null = null;

  constructor(context: ProgramContext, state: MclientState) {
    this.context = context;
    this.state = state;
    this.stagingAddress = context.dataRegion.firstPage * PAGE_SIZE_BYTES;
  }

  start(): void {
    const state = this.state;
    assert.equal(state.phase, 'idle', 'mclient starts once');
    state.startedMs = this.context.nowMs();
    this.context.setTimer(MCLIENT_WATCHDOG_INTERVAL_MS, MCLIENT_WATCHDOG_TAG);
    this.beginMail();
  }

  onTimer(tag: string): void {
    const state = this.state;
    switch (tag) {
      case MCLIENT_CONNECT_TAG:
        if (state.phase === 'connect' && state.connection.phase === 'retryWait') this.connect();
        break;
      case MCLIENT_SEND_TAG:
        state.sendTimerArmed = false;
        this.flush();
        break;
      case MCLIENT_NEXT_TAG:
        if (state.phase === 'pacing') this.beginMail();
        break;
      case MCLIENT_WATCHDOG_TAG:
        this.checkStall();
        if (state.phase !== 'done') {
          this.context.setTimer(MCLIENT_WATCHDOG_INTERVAL_MS, MCLIENT_WATCHDOG_TAG);
        }
        break;
      default:
        assert.fail(`mclient arms only its own timers; got ${tag}`);
    }
  }

  onSocket(event: SocketEvent): void {
    // Events of other sockets: the `closed` of a failed connect attempt, or of a connection
    // given up in `closing`. Nothing to do.
    if (event.socket !== this.state.connection.socket) return;
    switch (event.type) {
      case 'connected':
        this.onConnected();
        break;
      case 'readable':
        this.receive();
        break;
      case 'writable':
        this.flush();
        break;
      case 'end':
        this.onEnd();
        break;
      case 'closed':
        this.onClosed();
        break;
      case 'error':
        this.onError(`${event.code}: ${event.message}`, event.code);
        break;
      case 'accepted':
        assert.fail('mclient never listens');
    }
  }

  /** Figures for the experiment; times are guest ms, -1 until they happen. */
  stats(): MclientStats {
    const s = this.state;
    const total = s.params.n * s.params.n;
    return {
      phase: s.phase === 'connect' ? s.connection.phase : s.phase,
      mailsExpected: total,
      mailsSent: s.mailsSent,
      mailsFailed: s.mailsFailed,
      currentMail: s.phase === 'idle' ? 0 : Math.min(s.mailIndex + 1, total),
      bytesSent: s.bytesSent,
      messageBytesSent: s.messageBytesSent,
      finished: s.phase === 'done',
      errors: s.errors,
      firstError: s.firstError,
      lastError: s.lastError,
      lastSocketCallError: s.connection.lastSocketCallError,
      latenciesMs: [...s.latenciesMs],
      mailStartMs: [...s.mailStartMs],
      startedMs: s.startedMs ?? -1,
      finishedMs: s.finishedMs ?? -1,
      connectTries: s.connectTries,
      pipelining: s.pipelining,
    };
  }

  // ---- one mail ------------------------------------------------------------------------------

  private spec(): MailSpec {
    const { n, fileSizeBytes, seed, domain } = this.state.params;
    return mailSpecAt(this.state.mailIndex + 1, { n, fileSizeBytes, seed, domain });
  }

  private beginMail(): void {
    const state = this.state;
    assert.ok(state.mailIndex < state.params.n ** 2, 'a mail is left to send');
    state.mailStartMs.push(this.context.nowMs());
    state.connection = freshConnection();
    state.replies = createSmtpReplyState();
    state.pipelining = false;
    state.envelopeReplies = 0;
    state.outbox = '';
    state.outboxSentBytes = 0;
    state.messageBytes = messageLength(this.spec());
    state.messageSentBytes = 0;
    state.chunkSizeBytes = 0;
    state.chunkSentBytes = 0;
    state.mailOutcome = 'pending';
    this.connect();
  }

  private connect(): void {
    const { serverIp, port } = this.state.params;
    this.state.phase = 'connect';
    this.state.connectTries++;
    const attempt = startConnect(this.context, this.state.connection, { ip: serverIp, port });
    this.progress();
    if (!attempt.ok) this.onError(attempt.description, attempt.code);
  }

  private lifecycle(): LifecycleOptions {
    return {
      label: `mclient mail ${this.state.mailIndex + 1}`,
      connectTriesMax: this.state.params.connectTriesMax,
      retryMs: MCLIENT_CONNECT_RETRY_MS,
      retryTag: MCLIENT_CONNECT_TAG,
    };
  }

  private onConnected(): void {
    this.state.connection.phase = 'open';
    this.state.phase = 'greeting';
    this.progress();
  }

  /** The mail got its 250 after the data. */
  private settleSent(): void {
    const state = this.state;
    assert.equal(state.mailOutcome, 'pending', 'a mail settles once');
    state.mailOutcome = 'sent';
    state.mailsSent++;
    state.latenciesMs.push(this.context.nowMs() - state.mailStartMs[state.mailIndex]!);
  }

  /**
   * Records an error: the first one of a pending mail fails it; one after its 250 (a bad QUIT)
   * is only counted. `logged`: the lifecycle helper already wrote the log line.
   */
  private recordError(description: string, logged: boolean): void {
    const state = this.state;
    if (state.mailOutcome === 'pending') {
      state.mailOutcome = 'failed';
      state.mailsFailed++;
      state.latenciesMs.push(-1);
    }
    state.errors++;
    state.lastError = description;
    if (state.firstError === '') state.firstError = description;
    if (!logged) this.context.log(`${this.lifecycle().label} failed: ${description}`);
  }

  /** Fails the mail (if pending) and closes its connection. */
  private failMail(description: string): void {
    this.recordError(description, false);
    this.state.connection.phase = 'failed';
    this.close();
  }

  /** Closes the connection; `closed` (or the stall check) ends the mail. */
  private close(): void {
    this.state.phase = 'closing';
    this.progress();
    callSocket(this.context, this.state.connection, (net, socket) => net.close(socket));
  }

  /** The connection is gone: on to the next mail, after `pacingMs`, or done. */
  private finishMail(): void {
    const state = this.state;
    assert.notEqual(state.mailOutcome, 'pending', 'a mail settles before its connection ends');
    state.connection.socket = null;
    state.mailIndex++;
    if (state.mailIndex === state.params.n ** 2) {
      state.phase = 'done';
      state.finishedMs = this.context.nowMs();
      this.context.cancelTimer(MCLIENT_WATCHDOG_TAG);
    } else if (state.params.pacingMs > 0) {
      state.phase = 'pacing';
      this.context.setTimer(state.params.pacingMs, MCLIENT_NEXT_TAG);
    } else {
      this.beginMail();
    }
  }

  private progress(): void {
    this.state.lastProgressMs = this.context.nowMs();
  }

  /** Fails a mail that made no progress for `MCLIENT_STALL_MS_MAX`; gives up a stuck close. */
  private checkStall(): void {
    const state = this.state;
    const active = state.phase === 'closing' || DIALOGUE_PHASES.has(state.phase);
    const connecting = state.phase === 'connect' && state.connection.phase === 'connecting';
    if (!active && !connecting) return;
    const idleMs = this.context.nowMs() - state.lastProgressMs;
    if (idleMs < MCLIENT_STALL_MS_MAX) return;
    if (state.phase === 'closing') {
      // The peer never finished the close; its late `closed` will find another socket id.
      this.context.log(`${this.lifecycle().label}: gave up waiting ${idleMs} ms for the close`);
      this.finishMail();
    } else {
      this.failMail(`no progress for ${idleMs} ms in ${this.stats().phase}`);
    }
  }

  // ---- socket events -------------------------------------------------------------------------

  private onError(description: string, code: string): void {
    const state = this.state;
    if (state.phase === 'closing') {
      this.finishMail(); // The connection we were closing broke instead: just as gone.
      return;
    }
    onSocketError(this.context, state.connection, this.lifecycle(), { description, code });
    if (state.connection.phase === 'retryWait') return; // The retry timer is armed.
    this.recordError(state.connection.lastError, true);
    this.finishMail();
  }

  private onClosed(): void {
    const state = this.state;
    const expected = state.phase === 'closing';
    onSocketClosed(this.context, state.connection, this.lifecycle().label);
    if (!expected) this.recordError(state.connection.lastError, true);
    this.finishMail();
  }

  /** The server ended its direction: expected only after our close. */
  private onEnd(): void {
    const state = this.state;
    if (state.phase === 'closing') return;
    this.failMail(`the server closed the connection in ${state.phase}`);
  }

  // ---- replies -------------------------------------------------------------------------------

  private receive(): void {
    const state = this.state;
    while (DIALOGUE_PHASES.has(state.phase)) {
      const bytes = callSocket(this.context, state.connection, (net, socket) =>
        net.read(socket, MCLIENT_READ_BYTES_MAX),
      );
      if (bytes === null || bytes.byteLength === 0) return;
      this.progress();
      let replies: SmtpReply[];
      try {
        replies = feedSmtpReplies(state.replies, bytes);
      } catch (error) {
        if (!(error instanceof SmtpReplyError)) throw error;
        this.failMail(`${error.code}: ${error.message}`);
        return;
      }
      for (const reply of replies) {
        if (!DIALOGUE_PHASES.has(state.phase)) return; // Closing: later replies do not matter.
        this.applyReply(reply);
      }
    }
  }

  private applyReply(reply: SmtpReply): void {
    const state = this.state;
    const spec = this.spec();
    const action = planSmtpReply(
      {
        phase: state.phase,
        envelopeReplies: state.envelopeReplies,
        pipeliningWanted: state.params.pipelining,
        from: mailFrom(spec),
        to: mailTo(spec),
        messageBytes: state.messageBytes,
        domain: state.params.domain,
      },
      reply,
    );
    switch (action.kind) {
      case 'send':
        state.phase = action.phase;
        if (action.pipelining !== undefined) state.pipelining = action.pipelining;
        this.queue(action.commands);
        break;
      case 'wait':
        state.envelopeReplies++;
        break;
      case 'message':
        state.phase = 'message';
        this.flush();
        break;
      case 'accepted':
        this.settleSent();
        state.phase = 'quit';
        this.queue('QUIT\r\n');
        break;
      case 'quitted':
        state.connection.phase = 'closing';
        this.close();
        break;
      case 'fail':
        this.failMail(action.reason);
        break;
    }
  }

  // ---- sending -------------------------------------------------------------------------------

  /**
   * Queues commands. The previous ones are written by now, since each awaited a reply to its
   * last line; a server that answers ahead of that breaks the dialogue, and the mail fails.
   */
  private queue(commands: string): void {
    const state = this.state;
    if (state.outboxSentBytes < state.outbox.length) {
      this.failMail(`a reply came before ${JSON.stringify(state.outbox)} was written`);
      return;
    }
    state.outbox = commands;
    state.outboxSentBytes = 0;
    this.flush();
  }

  /** Writes queued commands, then message chunks, until backpressure or the event's budget. */
  private flush(): void {
    const state = this.state;
    if (!DIALOGUE_PHASES.has(state.phase)) return;
    if (state.outboxSentBytes < state.outbox.length) {
      const pending = Buffer.from(state.outbox.slice(state.outboxSentBytes), 'latin1');
      const taken = this.write(pending);
      if (taken === null) return;
      state.outboxSentBytes += taken;
      if (taken < pending.byteLength) return; // `writable` follows when room frees.
    }
    if (state.phase === 'message') this.sendMessage();
  }

  private sendMessage(): void {
    const state = this.state;
    const memory = this.context.memory;
    let budgetBytes = MCLIENT_SEND_BYTES_PER_EVENT_MAX;
    while (budgetBytes > 0) {
      if (state.chunkSentBytes === state.chunkSizeBytes) {
        if (state.messageSentBytes === state.messageBytes) {
          // The message ends with CRLF, so the end of data is just `.` CRLF.
          state.phase = 'dataEnd';
          this.queue('.\r\n');
          return;
        }
        this.stageNextChunk();
      }
      const address = this.stagingAddress + state.chunkSentBytes;
      const length = Math.min(state.chunkSizeBytes - state.chunkSentBytes, budgetBytes);
      // A view, not a copy: the socket copies what it takes into its send buffer.
      const taken = this.write(memory.bytes.subarray(address, address + length));
      if (taken === null) return;
      state.chunkSentBytes += taken;
      state.messageSentBytes += taken;
      state.messageBytesSent += taken;
      budgetBytes -= taken;
      if (taken < length) return; // `writable` follows when room frees.
    }
    if (!state.sendTimerArmed) {
      state.sendTimerArmed = true;
      this.context.setTimer(0, MCLIENT_SEND_TAG);
    }
  }

  /** Generates the message's next chunk into the staging slot, through log-dirty. */
  private stageNextChunk(): void {
    const state = this.state;
    this.scratch ??= new Uint8Array(MCLIENT_CHUNK_BYTES);
    const sizeBytes = fillMessage(this.spec(), state.messageSentBytes, this.scratch);
    assert.ok(sizeBytes > 0, 'a chunk is staged only while message bytes are left');
    this.context.memory.write(this.stagingAddress, this.scratch.subarray(0, sizeBytes));
    state.chunkSizeBytes = sizeBytes;
    state.chunkSentBytes = 0;
  }

  /** One write; null when the socket is already gone (its events decide). */
  private write(bytes: Uint8Array): number | null {
    const taken = callSocket(this.context, this.state.connection, (net: GuestNet, socket) =>
      net.write(socket, bytes),
    );
    if (taken !== null && taken > 0) {
      this.state.bytesSent += taken;
      this.progress();
    }
    return taken;
  }
}

/** What Mclient reports (`stats()`); the experiment reads it through the control API. */
export type MclientStats = {
  /** The program's phase; while connecting, the connection's (`connecting`, `retryWait`). */
  phase: string;
  /** n x n. */
  mailsExpected: number;
  /** Mails the server accepted (2xx after the data). */
  mailsSent: number;
  mailsFailed: number;
  /** 1-based number of the mail in progress (or the last one, once done); 0 before start. */
  currentMail: number;
  bytesSent: number;
  messageBytesSent: number;
  /** Every mail attempted and the last connection closed. */
  finished: boolean;
  errors: number;
  firstError: string;
  lastError: string;
  lastSocketCallError: string;
  /** Per settled mail in loop order: ms from its first connect to its 250; -1 if it failed. */
  latenciesMs: number[];
  /** Per started mail in loop order: the guest time it started. */
  mailStartMs: number[];
  startedMs: number;
  finishedMs: number;
  /** Connect attempts over all mails. */
  connectTries: number;
  /** The current (or last) mail's dialogue pipelined its envelope. */
  pipelining: boolean;
};

/**
 * Builds Mclients: `create` validates the parameters (throwing `InputError`) and starts from
 * the first mail; `restore` continues a saved `MclientState` after a migration, arming no timer.
 */
export const mclientFactory: ProgramFactory<MclientParams, MclientState> = {
  kind: MCLIENT_KIND,
  create(context: ProgramContext, params: MclientParams): GuestProgram<MclientState> {
    const config = resolveMclientParams(params, context.dataRegion);
    const state: MclientState = {
      params: config,
      phase: 'idle',
      mailIndex: 0,
      connection: freshConnection(),
      replies: createSmtpReplyState(),
      pipelining: false,
      envelopeReplies: 0,
      outbox: '',
      outboxSentBytes: 0,
      messageBytes: 0,
      messageSentBytes: 0,
      chunkSizeBytes: 0,
      chunkSentBytes: 0,
      sendTimerArmed: false,
      mailOutcome: 'pending',
      mailsSent: 0,
      mailsFailed: 0,
      bytesSent: 0,
      messageBytesSent: 0,
      connectTries: 0,
      errors: 0,
      firstError: '',
      lastError: '',
      latenciesMs: [],
      mailStartMs: [],
      startedMs: null,
      finishedMs: null,
      lastProgressMs: 0,
    };
    return new Mclient(context, state);
  },
  restore(context: ProgramContext, state: MclientState): GuestProgram<MclientState> {
    // The target's data region must still hold the staging area.
    const config = resolveMclientParams(state.params, context.dataRegion);
    assert.deepEqual(config, state.params, 'a saved mclient has resolved parameters');
    assert.equal(
      state.latenciesMs.length,
      state.mailsSent + state.mailsFailed,
      'a saved mclient has one latency per settled mail',
    );
    return new Mclient(context, state);
  },
};
