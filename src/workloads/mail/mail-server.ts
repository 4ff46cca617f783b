/**
 * The mail server: the guest program of VM1 in the paper's experiment (section 3). It speaks
 * SMTP on port 25 to any number of clients at once (the protocol is `smtp-session.ts`, a pure
 * state machine per connection) and delivers each accepted mail to one mbox file per recipient
 * on the domain's disk, through the guest page cache, the way an MTA does:
 *
 * 1. DATA: the body goes to a spool file (`spool/<queue id>`), as Postfix's queue file;
 * 2. end of data: for each recipient, a `Return-Path`/`Received` header, the spooled message and
 *    a blank line are appended to `mail/<local part>.mbox`; the mailboxes are synced (write-back
 *    and fsync), the spool removed, and only then is the 250 written. So a 250 means the mail is
 *    on the shared disk; a failed delivery truncates the mailboxes back and answers 451, so a
 *    mail is never half stored, nor stored without a 250 the client can see.
 *
 * Both files live in the page cache (the guest's `pagecache` region), so receiving mail dirties
 * guest pages that a live migration must resend, as in the paper; the disk itself is shared
 * storage and is never migrated. mbox is mboxrd: a body line matching `>*From ` gets one more
 * `>` (so readers can split messages at `From ` lines and undo the quoting exactly).
 *
 * State is plain data (principle 3): the SMTP sessions, the pending reply bytes of each
 * connection and a few counters. Sockets and the page cache are kernel state and migrate with
 * the kernel.
 *
 * Non-goals: idle timeouts, relaying, aliases, quotas, Maildir.
 */
import { Buffer } from 'node:buffer';
import { InputError } from '../../core/errors.ts';
import type { GuestFiles } from '../../guest/files.ts';
import { NetError } from '../../guest/net-errors.ts';
import type {
  GuestProgram,
  ProgramContext,
  ProgramFactory,
  ProgramStats,
} from '../../guest/program.ts';
import type { SocketEvent, SocketId } from '../../guest/socket-api.ts';
import { checkKnownParams } from '../params.ts';
import {
  connectionLost,
  DEFAULT_SMTP_LIMITS,
  type Envelope,
  type MessageRefusal,
  type MessageSink,
  openSession,
  receive,
  type SmtpServerConfig,
  type SmtpSessionState,
} from './smtp-session.ts';

export const MAIL_SERVER_KIND = 'mail-server';
/** SMTP's port. */
export const SMTP_PORT = 25;
/** Bytes asked for per `read`; the loop repeats until the socket is empty. */
const READ_BYTES_MAX = 256 * 1024;
/**
 * Concurrent connections served; more get 421 and are closed (Postfix's default process limit
 * is 100; a guest program's sessions cost little, but bound them all the same).
 */
export const CONNECTIONS_MAX_DEFAULT = 100;
/** Where mailboxes and spool files live on the domain's disk. */
export const MAILBOX_DIR = 'mail';
export const SPOOL_DIR = 'spool';

export interface MailServerParams {
  /** @default 25 */
  port?: number;
  /** @default 'mail.xenlab.local' */
  hostname?: string;
  /** Recipient domains accepted. @default ['xenlab.local'] */
  domains?: string[];
  /** Largest message body. @default 10 MiB (see DEFAULT_SMTP_LIMITS) */
  messageBytesMax?: number;
  /** @default 100 */
  connectionsMax?: number;
}

interface MailSession {
  socket: SocketId;
  smtp: SmtpSessionState;
  /** Reply bytes the socket has not taken yet (latin1). */
  pending: string;
  /** Close once `pending` is written. */
  closeAfterWrite: boolean;
  /** The message being received, or null. */
  message: {
    queueId: string;
    envelope: Envelope;
    /** mboxrd quoting: the next body byte starts a line. */
    atLineStart: boolean;
    /** The start of a line too short yet to tell whether it is `>*From ` (latin1). */
    lineCarry: string;
  } | null;
}

export interface MailServerState {
  port: number;
  smtp: SmtpServerConfig;
  connectionsMax: number;
  phase: 'idle' | 'listening';
  sessions: MailSession[];
  nextQueueNumber: number;
  counters: {
    connections: number;
    connectionsRefused: number;
    messagesStored: number;
    messagesRefused: number;
    deliveries: number;
    bytesSpooled: number;
    deliveryErrors: number;
  };
  lastError: string;
}

const PARAM_NAMES = new Set(['port', 'hostname', 'domains', 'messageBytesMax', 'connectionsMax']);

export function resolveMailServerParams(params: MailServerParams): MailServerState {
  checkKnownParams('mail-server', params, PARAM_NAMES);
  const port = params.port ?? SMTP_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    throw new InputError(`port must be an integer in [1, 65535]; got ${String(port)}`);
  const connectionsMax = params.connectionsMax ?? CONNECTIONS_MAX_DEFAULT;
  if (!Number.isInteger(connectionsMax) || connectionsMax < 1 || connectionsMax > 10_000)
    throw new InputError(
      `connectionsMax must be an integer in [1, 10000]; got ${String(connectionsMax)}`,
    );
  const smtp: SmtpServerConfig = {
    hostname: params.hostname ?? 'mail.xenlab.local',
    domains: params.domains ?? ['xenlab.local'],
    limits: {
      ...DEFAULT_SMTP_LIMITS,
      messageBytesMax: params.messageBytesMax ?? DEFAULT_SMTP_LIMITS.messageBytesMax,
    },
  };
  // Checks names and limits now, so a bad parameter fails domain creation, not the first mail.
  openSession(smtp);
  return {
    port,
    smtp,
    connectionsMax,
    phase: 'idle',
    sessions: [],
    nextQueueNumber: 1,
    counters: {
      connections: 0,
      connectionsRefused: 0,
      messagesStored: 0,
      messagesRefused: 0,
      deliveries: 0,
      bytesSpooled: 0,
      deliveryErrors: 0,
    },
    lastError: '',
  };
}

/** The mbox file of a recipient: its local part, lower-cased, reduced to safe characters. */
export function mailboxFile(recipient: string): string {
  const local = recipient.slice(0, recipient.lastIndexOf('@')).toLowerCase();
  const safe = local.replace(/[^a-z0-9._-]/g, '_').replace(/^\.+/, '_');
  return `${MAILBOX_DIR}/${safe || '_'}.mbox`;
}

const LF = 0x0a;
const GT = 0x3e;
const FROM_SPACE = Buffer.from('From ', 'latin1');
const QUOTE = Uint8Array.of(GT);

/** asctime(3) format, as mbox `From ` lines carry it. */
function asctime(date: Date): string {
  const day = date.toUTCString().slice(0, 3);
  const month = date.toUTCString().slice(8, 11);
  const dd = String(date.getUTCDate()).padStart(2, ' ');
  const time = date.toISOString().slice(11, 19);
  return `${day} ${month} ${dd} ${time} ${date.getUTCFullYear()}`;
}

class MailServer implements GuestProgram<MailServerState> {
  readonly kind = MAIL_SERVER_KIND;
  readonly state: MailServerState;
  private readonly context: ProgramContext;

  constructor(context: ProgramContext, state: MailServerState) {
    this.context = context;
    this.state = state;
  }

  private get files(): GuestFiles {
    return this.context.files;
  }

  start(): void {
    // Fails at boot, with the reason, on a domain without a disk.
    this.files.size(`${MAILBOX_DIR}/.probe`);
    this.context.net.listen(this.state.port);
    this.state.phase = 'listening';
  }

  onTimer(): void {}

  onSocket(event: SocketEvent): void {
    if (event.type === 'accepted') {
      this.accept(event.socket);
      return;
    }
    const session = this.state.sessions.find((s) => s.socket === event.socket);
    if (!session) return;
    switch (event.type) {
      case 'readable':
        this.readFrom(session);
        break;
      case 'writable':
        this.flush(session);
        break;
      case 'end':
        // The client ended its direction: whatever it did not finish is lost to it.
        this.lose(session);
        this.closeSocket(session.socket);
        break;
      case 'error':
      case 'closed':
        this.lose(session);
        this.state.sessions = this.state.sessions.filter((s) => s !== session);
        break;
      default:
        break;
    }
  }

  stats(): ProgramStats {
    return {
      phase: this.state.phase,
      sessions: this.state.sessions.length,
      ...this.state.counters,
      lastError: this.state.lastError,
    };
  }

  private accept(socket: SocketId): void {
    const state = this.state;
    const { state: smtp, replies } = openSession(state.smtp);
    const session: MailSession = {
      socket,
      smtp,
      pending: '',
      closeAfterWrite: false,
      message: null,
    };
    state.sessions.push(session);
    if (state.sessions.length > state.connectionsMax) {
      state.counters.connectionsRefused++;
      session.pending = `421 4.3.2 ${state.smtp.hostname} too many connections, try again later\r\n`;
      session.closeAfterWrite = true;
    } else {
      state.counters.connections++;
      session.pending = replies.join('');
    }
    this.flush(session);
  }

  private readFrom(session: MailSession): void {
    const sink = this.sinkFor(session);
    for (;;) {
      let bytes: Uint8Array;
      try {
        bytes = this.context.net.read(session.socket, READ_BYTES_MAX);
      } catch (error) {
        if (error instanceof NetError) return; // gone; its `closed` event follows
        throw error;
      }
      if (bytes.length === 0) break;
      const output = receive(session.smtp, this.state.smtp, bytes, sink);
      session.pending += output.replies.join('');
      if (output.close) {
        session.closeAfterWrite = true;
        break;
      }
    }
    this.flush(session);
  }

  /** Writes pending replies; closes when asked and everything is written. */
  private flush(session: MailSession): void {
    if (session.pending.length > 0) {
      let taken = 0;
      try {
        taken = this.context.net.write(session.socket, Buffer.from(session.pending, 'latin1'));
      } catch (error) {
        if (error instanceof NetError) return;
        throw error;
      }
      session.pending = session.pending.slice(taken);
    }
    if (session.pending.length === 0 && session.closeAfterWrite) this.closeSocket(session.socket);
  }

  private closeSocket(socket: SocketId): void {
    try {
      this.context.net.close(socket);
    } catch (error) {
      if (!(error instanceof NetError)) throw error;
    }
  }

  /** The connection is gone: a message in progress is dropped (no 250 was sent for it). */
  private lose(session: MailSession): void {
    connectionLost(session.smtp, this.sinkFor(session));
  }

  private sinkFor(session: MailSession): MessageSink {
    return {
      begin: (envelope) => this.begin(session, envelope),
      data: (bytes) => this.spool(session, bytes),
      commit: () => this.commit(session),
      abort: () => this.abort(session),
    };
  }

  private begin(session: MailSession, envelope: Envelope): void {
    const queueId = `${(this.state.nextQueueNumber++).toString(16).toUpperCase().padStart(8, '0')}`;
    session.message = { queueId, envelope, atLineStart: true, lineCarry: '' };
    this.files.truncate(`${SPOOL_DIR}/${queueId}`, 0);
  }

  /** Appends body bytes to the spool file, quoting `>*From ` lines (mboxrd). */
  private spool(session: MailSession, input: Uint8Array): void {
    const message = session.message;
    if (!message) return;
    const file = `${SPOOL_DIR}/${message.queueId}`;
    this.state.counters.bytesSpooled += input.length;
    let bytes = input;
    if (message.lineCarry) {
      bytes = Buffer.concat([Buffer.from(message.lineCarry, 'latin1'), input]);
      message.lineCarry = '';
    }
    let runStart = 0;
    let position = 0;
    while (position < bytes.length) {
      if (message.atLineStart) {
        let k = position;
        while (k < bytes.length && bytes[k] === GT) k++;
        if (k + FROM_SPACE.length > bytes.length && bytes.indexOf(LF, position) === -1) {
          // Cannot tell yet: keep this line start for the next chunk (under a line's length).
          if (runStart < position) this.files.append(file, bytes.subarray(runStart, position));
          message.lineCarry = Buffer.from(bytes.subarray(position)).toString('latin1');
          return;
        }
        if (startsWith(bytes, k, FROM_SPACE)) {
          if (runStart < position) this.files.append(file, bytes.subarray(runStart, position));
          this.files.append(file, QUOTE);
          runStart = position;
        }
        message.atLineStart = false;
      }
      const lf = bytes.indexOf(LF, position);
      if (lf === -1) break;
      position = lf + 1;
      message.atLineStart = true;
    }
    if (runStart < bytes.length) this.files.append(file, bytes.subarray(runStart));
  }

  private commit(session: MailSession): { ok: true; queueId: string } | MessageRefusal {
    const message = session.message;
    if (!message) return { ok: false, code: 451, enhanced: '4.3.0', text: 'no message open' };
    session.message = null;
    const spool = `${SPOOL_DIR}/${message.queueId}`;
    const files = this.files;
    if (message.lineCarry) files.append(spool, Buffer.from(message.lineCarry, 'latin1'));
    const spoolBytes = files.size(spool);
    const mailboxes = [...new Set(message.envelope.recipients.map(mailboxFile))];
    const sizesBefore = mailboxes.map((mailbox) => files.size(mailbox));
    const now = new Date();
    const from = message.envelope.from || 'MAILER-DAEMON';
    try {
      for (const mailbox of mailboxes) {
        const header =
          `From ${from} ${asctime(now)}\r\n` +
          `Return-Path: <${message.envelope.from}>\r\n` +
          `Received: from ${message.envelope.helo} by ${this.state.smtp.hostname} with ESMTP id ${message.queueId}; ${now.toUTCString()}\r\n`;
        files.append(mailbox, Buffer.from(header, 'latin1'));
        files.appendFrom(mailbox, spool, 0, spoolBytes);
        files.append(mailbox, Buffer.from('\r\n', 'latin1'));
      }
      for (const mailbox of mailboxes) files.sync(mailbox);
    } catch (error) {
      // Undo what was appended: the client gets 451 and may send again, so no mail twice.
      mailboxes.forEach((mailbox, index) => {
        try {
          files.truncate(mailbox, sizesBefore[index]!);
        } catch {}
      });
      this.removeSpool(spool);
      this.state.counters.deliveryErrors++;
      this.state.counters.messagesRefused++;
      this.state.lastError = `delivery of ${message.queueId} failed: ${(error as Error).message}`;
      this.context.log(this.state.lastError);
      return { ok: false, code: 451, enhanced: '4.3.0', text: 'local error in processing' };
    }
    this.removeSpool(spool);
    this.state.counters.messagesStored++;
    this.state.counters.deliveries += mailboxes.length;
    return { ok: true, queueId: message.queueId };
  }

  private abort(session: MailSession): void {
    const message = session.message;
    if (!message) return;
    session.message = null;
    this.state.counters.messagesRefused++;
    this.removeSpool(`${SPOOL_DIR}/${message.queueId}`);
  }

  private removeSpool(spool: string): void {
    try {
      this.files.remove(spool);
    } catch (error) {
      this.state.lastError = `could not remove ${spool}: ${(error as Error).message}`;
    }
  }
}

function startsWith(bytes: Uint8Array, at: number, prefix: Uint8Array): boolean {
  if (at + prefix.length > bytes.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[at + i] !== prefix[i]) return false;
  return true;
}

export const mailServerFactory: ProgramFactory<MailServerParams, MailServerState> = {
  kind: MAIL_SERVER_KIND,
  create: (context, params) => new MailServer(context, resolveMailServerParams(params ?? {})),
  restore: (context, state) => new MailServer(context, state),
};
