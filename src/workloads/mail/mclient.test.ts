/**
 * Goal: Mclient sends the paper's n x n mails in i/j order, one SMTP connection each, with the
 * right envelope and exactly the generated message bytes; it pipelines the envelope only when
 * asked and advertised; a refused RCPT or end of data, a reset, an early close, a malformed or
 * missing reply fail that mail alone; refused connects are retried; a structured clone of its
 * state at any moment (a migration) continues with the same bytes; it dirties only its staging
 * pages; bad parameters are refused with an InputError naming the field.
 * Method: Mclient runs on side b of the fake two-domain world (real guest memory, manual clock);
 * side a is a small scripted SMTP server written here over the fake net, which records every
 * command read and every message received. fast-check with a fixed seed picks migration points.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../../core/errors.ts';
import { PAGE_SIZE_BYTES } from '../../core/units.ts';
import type { FakeNet } from '../../guest/fake-net.ts';
import type { SocketEvent, SocketId } from '../../guest/socket-api.ts';
import { GuestMemory } from '../../memory/guest-memory.ts';
import { defaultLayout } from '../../memory/layout.ts';
import { FAKE_DOMAIN_PAGES, FakeWorld } from '../fake-world.ts';
import {
  MCLIENT_CHUNK_BYTES,
  MCLIENT_CONNECT_RETRY_MS,
  MCLIENT_SEND_BYTES_PER_EVENT_MAX,
  MCLIENT_STALL_MS_MAX,
  type MclientParams,
  type MclientState,
  mclientFactory,
  planSmtpReply,
  type SmtpDialogue,
} from './mclient.ts';
import {
  fillMessage,
  MAIL_DOMAIN_DEFAULT,
  type MailSpec,
  mailFrom,
  mailSpecAt,
  mailTo,
  messageLength,
} from './message.ts';

const SERVER_IP = '10.0.0.1';
const CLIENT_IP = '10.0.0.2';
const PORT = 25;

// ---- a scripted SMTP server -----------------------------------------------------------------

/** One message the server read to its end. */
interface ReceivedMail {
  from: string;
  to: string;
  /** The SIZE= parameter of MAIL FROM, or null. */
  sizeParam: number | null;
  /** The data before the final `.` CRLF. */
  data: Buffer;
  /** The server answered its end of data with 2xx. */
  accepted: boolean;
}

interface ServerScript {
  /** Advertise PIPELINING / SIZE in the EHLO reply. @default true */
  pipelining?: boolean;
  size?: boolean;
  /** A reply to RCPT instead of 250 (undefined: 250). */
  rcptReply?: (from: string, to: string) => string | undefined;
  /** A reply to the end of data instead of 250 (undefined: 250). */
  dataEndReply?: (from: string, to: string) => string | undefined;
  /** The greeting, per 1-based connection number (undefined: 220). Null: never greet. */
  greeting?: (connection: number) => string | null | undefined;
  /** Close the connection right after greeting, per 1-based connection number. */
  closeAfterGreeting?: (connection: number) => boolean;
  /** Ignore the client's end (never close). */
  neverClose?: boolean;
}

interface Session {
  socket: SocketId;
  mode: 'command' | 'data';
  text: string;
  data: Buffer[];
  tail: string;
  from: string;
  to: string;
  sizeParam: number | null;
  rcptAccepted: boolean;
  outbox: Buffer;
  /** Close once the outbox is written; closed: `close()` called. */
  closing: boolean;
  closed: boolean;
}

class ScriptedSmtpServer {
  readonly mails: ReceivedMail[] = [];
  /** Every command-mode read, per connection: shows whether the envelope was pipelined. */
  readonly commandReads: string[][] = [];
  connections = 0;
  private readonly sessions = new Map<SocketId, Session>();

  constructor(
    private readonly net: FakeNet,
    private readonly script: ServerScript = {},
  ) {
    net.setHandler((event) => this.onEvent(event));
  }

  listen(): void {
    this.net.listen(PORT);
  }

  socketOf(connection: number): SocketId | undefined {
    return [...this.sessions.values()][connection]?.socket;
  }

  private onEvent(event: SocketEvent): void {
    if (event.type === 'accepted') {
      this.connections++;
      const session: Session = {
        socket: event.socket,
        mode: 'command',
        text: '',
        data: [],
        tail: '',
        from: '',
        to: '',
        sizeParam: null,
        rcptAccepted: false,
        outbox: Buffer.alloc(0),
        closing: false,
        closed: false,
      };
      this.sessions.set(event.socket, session);
      this.commandReads.push([]);
      const greeting = this.script.greeting?.(this.connections);
      if (greeting !== null) this.reply(session, greeting ?? '220 mail.xenlab.local ESMTP');
      if (this.script.closeAfterGreeting?.(this.connections)) this.close(session);
      return;
    }
    const session = this.sessions.get(event.socket);
    if (session === undefined) return;
    switch (event.type) {
      case 'readable':
        for (;;) {
          const bytes = Buffer.from(this.net.read(session.socket, 1 << 20));
          if (bytes.byteLength === 0 || session.closing) break;
          this.onBytes(session, bytes);
        }
        break;
      case 'writable':
        this.flush(session);
        break;
      case 'end':
        if (!this.script.neverClose) this.close(session);
        break;
      case 'closed':
      case 'error':
        this.sessions.delete(event.socket);
        break;
    }
  }

  private onBytes(session: Session, bytes: Buffer): void {
    if (session.mode === 'data') {
      this.onData(session, bytes);
      return;
    }
    const text = bytes.toString('latin1');
    this.commandReads.at(-1)!.push(text);
    session.text += text;
    for (;;) {
      const end = session.text.indexOf('\r\n');
      if (end < 0 || session.mode !== 'command') break;
      const line = session.text.slice(0, end);
      session.text = session.text.slice(end + 2);
      this.onCommand(session, line);
    }
    if ((session.mode as Session['mode']) === 'data' && session.text.length > 0) {
      const rest = Buffer.from(session.text, 'latin1');
      session.text = '';
      this.onData(session, rest);
    }
  }

  private onCommand(session: Session, line: string): void {
    const verb = line.slice(0, 4).toUpperCase();
    if (verb === 'EHLO') {
      const extensions = [
        ...((this.script.pipelining ?? true) ? ['PIPELINING'] : []),
        ...((this.script.size ?? true) ? ['SIZE 100000000'] : []),
        '8BITMIME',
      ];
      const lines = ['mail.xenlab.local greets you', ...extensions];
      this.reply(
        session,
        lines.map((text, k) => `250${k < lines.length - 1 ? '-' : ' '}${text}`).join('\r\n'),
      );
    } else if (verb === 'MAIL') {
      const match = /^MAIL FROM:<([^>]*)>(?: SIZE=(\d+))?$/.exec(line);
      assert.ok(match !== null, `MAIL command well-formed: ${line}`);
      session.from = match[1]!;
      session.sizeParam = match[2] === undefined ? null : Number(match[2]);
      this.reply(session, '250 2.1.0 Ok');
    } else if (verb === 'RCPT') {
      const match = /^RCPT TO:<([^>]*)>$/.exec(line);
      assert.ok(match !== null, `RCPT command well-formed: ${line}`);
      session.to = match[1]!;
      const reply = this.script.rcptReply?.(session.from, session.to) ?? '250 2.1.5 Ok';
      session.rcptAccepted = reply.startsWith('2');
      this.reply(session, reply);
    } else if (verb === 'DATA') {
      if (!session.rcptAccepted) {
        this.reply(session, '554 5.5.1 Error: no valid recipients');
        return;
      }
      session.mode = 'data';
      session.data = [];
      session.tail = '';
      this.reply(session, '354 End data with <CR><LF>.<CR><LF>');
    } else if (verb === 'QUIT') {
      this.reply(session, '221 2.0.0 Bye');
      this.close(session);
    } else {
      this.reply(session, '502 5.5.2 Error: command not recognized');
    }
  }

  private onData(session: Session, bytes: Buffer): void {
    session.data.push(bytes);
    session.tail = (session.tail + bytes.toString('latin1')).slice(-5);
    if (session.tail !== '\r\n.\r\n') return;
    const all = Buffer.concat(session.data);
    const reply = this.script.dataEndReply?.(session.from, session.to) ?? '250 2.0.0 Ok: queued';
    this.mails.push({
      from: session.from,
      to: session.to,
      sizeParam: session.sizeParam,
      data: all.subarray(0, all.byteLength - 3),
      accepted: reply.startsWith('2'),
    });
    session.mode = 'command';
    session.rcptAccepted = false;
    this.reply(session, reply);
  }

  private reply(session: Session, text: string): void {
    session.outbox = Buffer.concat([session.outbox, Buffer.from(`${text}\r\n`, 'latin1')]);
    this.flush(session);
  }

  private flush(session: Session): void {
    if (session.closed) return;
    if (session.outbox.byteLength > 0) {
      const taken = this.net.write(session.socket, session.outbox);
      session.outbox = session.outbox.subarray(taken);
    }
    if (session.closing && session.outbox.byteLength === 0) {
      session.closed = true;
      this.net.close(session.socket);
    }
  }

  /** Closes once every queued reply is written. */
  private close(session: Session): void {
    session.closing = true;
    this.flush(session);
  }
}

// ---- the world ------------------------------------------------------------------------------

class World extends FakeWorld<MclientParams, MclientState> {
  readonly server: ScriptedSmtpServer;

  constructor(
    init: { bufferBytes?: number; tickMs?: number; script?: ServerScript; listen?: boolean } = {},
  ) {
    super(mclientFactory, {
      ipA: SERVER_IP,
      ipB: CLIENT_IP,
      bufferBytes: init.bufferBytes,
      tickMs: init.tickMs,
    });
    this.server = new ScriptedSmtpServer(this.pair.a, init.script);
    if (init.listen ?? true) this.server.listen();
  }

  get client() {
    return this.b;
  }

  stats() {
    return this.b.program!.stats();
  }
}

function params(overrides: Partial<MclientParams> = {}): MclientParams {
  return { serverIp: SERVER_IP, n: 3, fileSizeBytes: 5000, seed: 9, ...overrides };
}

function specOf(p: MclientParams, number: number): MailSpec {
  const loop = {
    n: p.n,
    fileSizeBytes: p.fileSizeBytes,
    seed: p.seed ?? 1,
    domain: p.domain ?? MAIL_DOMAIN_DEFAULT,
  };
  return mailSpecAt(number, loop);
}

function messageBytes(mail: MailSpec): Buffer {
  const out = Buffer.alloc(messageLength(mail));
  fillMessage(mail, 0, out);
  return out;
}

/**
 * The server received the mails `numbers` (1-based, in this order), each with its envelope, its
 * SIZE and exactly its message bytes; and nothing leaked.
 */
function assertReceived(world: World, p: MclientParams, numbers: number[]): void {
  const mails = world.server.mails.filter((mail) => mail.accepted);
  assert.equal(mails.length, numbers.length, `${numbers.length} mails accepted`);
  numbers.forEach((number, k) => {
    const mail = specOf(p, number);
    const got = mails[k]!;
    assert.equal(got.from, mailFrom(mail), `mail ${number}: sender`);
    assert.equal(got.to, mailTo(mail), `mail ${number}: recipient`);
    assert.ok(got.data.equals(messageBytes(mail)), `mail ${number}: exact message bytes`);
  });
  assert.equal(world.pair.a.openSocketCount, 0, 'the server side leaks no socket');
  assert.equal(world.pair.b.openSocketCount, 0, 'the client side leaks no socket');
}

/** Every mail sent, none failed, all counted. */
function assertAllSent(world: World, p: MclientParams): void {
  const total = p.n * p.n;
  assertReceived(
    world,
    p,
    Array.from({ length: total }, (_, k) => k + 1),
  );
  const stats = world.stats();
  assert.equal(stats.phase, 'done', `done (${stats.lastError})`);
  assert.equal(stats.finished, true, 'finished');
  assert.equal(stats.mailsExpected, total, 'n x n expected');
  assert.equal(stats.mailsSent, total, 'all sent');
  assert.equal(stats.mailsFailed, 0, 'none failed');
  assert.equal(stats.errors, 0, 'no error');
  assert.equal(stats.currentMail, total, 'the last mail is current');
  assert.equal((stats.latenciesMs as number[]).length, total, 'a latency per mail');
  assert.equal((stats.mailStartMs as number[]).length, total, 'a start time per mail');
  let messages = 0;
  for (let number = 1; number <= total; number++) messages += messageLength(specOf(p, number));
  assert.equal(stats.messageBytesSent, messages, 'message bytes counted');
  assert.ok(Number(stats.bytesSent) > messages, 'commands counted too');
  assert.equal(world.b.timers.length, 0, 'no timer left');
}

/** Runs a world to its end with the client started on `p`. */
function runAll(p: MclientParams, init: ConstructorParameters<typeof World>[0] = {}): World {
  const world = new World(init);
  world.client.start(p);
  world.run();
  return world;
}

// ---- tests ----------------------------------------------------------------------------------

describe('mclient', () => {
  it('sends all n x n mails in i/j order with their envelope, SIZE and exact bytes', () => {
    for (const fileSizeBytes of [0, 1, 5000, 200_000]) {
      const p = params({ fileSizeBytes });
      const world = runAll(p);
      assertAllSent(world, p);
      world.server.mails.forEach((mail, k) => {
        assert.equal(mail.sizeParam, messageLength(specOf(p, k + 1)), `mail ${k + 1}: SIZE`);
      });
      assert.equal(world.server.connections, 9, 'one connection per mail');
      assert.equal(world.stats().connectTries, 9, 'one connect per mail');
      assert.equal(world.stats().pipelining, true, 'pipelined');
      for (const reads of world.server.commandReads) {
        assert.ok(
          reads.some((read) => /^MAIL FROM:.*\r\nRCPT TO:.*\r\nDATA\r\n$/.test(read)),
          'MAIL, RCPT and DATA came in one write',
        );
      }
    }
  });

  it('sends exactly through tiny socket buffers (partial writes, split replies)', () => {
    for (const [bufferBytes, fileSizeBytes] of [
      [1, 100],
      [7, 3000],
      [4096, 300_000],
    ] as const) {
      const p = params({ n: 2, fileSizeBytes });
      const world = runAll(p, { bufferBytes });
      assertAllSent(world, p);
    }
  });

  it('waits for each reply without pipelining, or when the server does not advertise it', () => {
    const cases: Array<[Partial<MclientParams>, ServerScript]> = [
      [{ pipelining: false }, {}],
      [{}, { pipelining: false }],
      [{ pipelining: true }, { pipelining: false, size: false }],
    ];
    for (const [overrides, script] of cases) {
      const p = params({ n: 2, ...overrides });
      const world = runAll(p, { script });
      assertAllSent(world, p);
      assert.equal(world.stats().pipelining, false, 'not pipelined');
      for (const reads of world.server.commandReads) {
        assert.deepEqual(
          reads.slice(0, 4).map((read) => read.slice(0, 4)),
          ['EHLO', 'MAIL', 'RCPT', 'DATA'],
          'one command per read',
        );
      }
      const sized = script.size ?? true;
      for (const mail of world.server.mails) {
        assert.equal(mail.sizeParam !== null, sized, 'SIZE only when advertised');
      }
    }
  });

  it('fails a mail refused at RCPT (451) or at the end of data (552) and sends the rest', () => {
    for (const pipelining of [true, false]) {
      const p = params({ pipelining });
      const script: ServerScript = {
        rcptReply: (from, to) =>
          from === 'test1.user@xenlab.local' && to === 'test2.user@xenlab.local'
            ? '451 4.3.0 Try again later'
            : undefined,
        dataEndReply: (from, to) =>
          from === 'test2.user@xenlab.local' && to === 'test3.user@xenlab.local'
            ? '552 5.3.4 Message size exceeds fixed limit'
            : undefined,
      };
      const world = runAll(p, { script });
      assertReceived(world, p, [1, 3, 4, 5, 7, 8, 9]);
      const stats = world.stats();
      assert.equal(stats.finished, true, 'finished');
      assert.equal(stats.mailsSent, 7, '7 sent');
      assert.equal(stats.mailsFailed, 2, '2 failed');
      assert.equal(stats.errors, 2, 'one error per failed mail');
      assert.match(
        String(stats.firstError),
        /^RCPT TO:<test2.user@xenlab.local> answered 451 4\.3\.0/,
      );
      assert.match(
        String(stats.lastError),
        /^the end of the data answered 552 5\.3\.4 Message size/,
      );
      const latencies = stats.latenciesMs as number[];
      assert.deepEqual(
        latencies.map((latency) => latency === -1),
        [false, true, false, false, false, true, false, false, false],
        'failed mails have latency -1',
      );
      assert.equal(world.client.logs.length, 2, 'each failure logged once');
      assert.equal(world.server.connections, 9, 'no mail retried');
    }
  });

  it('retries refused connects until the server listens', () => {
    const p = params({ n: 2 });
    const world = new World({ listen: false });
    world.client.start(p);
    world.run(250);
    assert.equal(world.client.state.connectTries, 3, 'tries at 0, 100 and 200 ms');
    assert.equal(world.stats().phase, 'retryWait', 'waiting to retry');
    world.server.listen();
    world.run();
    assertAllSent(world, p);
    assert.equal(world.stats().connectTries, 4 + 3, 'then one connect per mail');
    assert.deepEqual(world.stats().mailStartMs, [0, 300, 300, 300], 'the first mail waited');
    assert.deepEqual(world.stats().latenciesMs, [300, 0, 0, 0], 'latency from the first try');
    assert.equal(world.nowMs, 3 * MCLIENT_CONNECT_RETRY_MS, 'no time beyond the retries');
  });

  it('gives each mail connectTriesMax tries, then fails it and goes on', () => {
    const p = params({ n: 2, connectTriesMax: 2 });
    const world = new World({ listen: false });
    world.client.start(p);
    world.run();
    const stats = world.stats();
    assert.equal(stats.finished, true, 'finished');
    assert.equal(stats.mailsFailed, 4, 'all failed');
    assert.equal(stats.mailsSent, 0, 'none sent');
    assert.equal(stats.connectTries, 8, 'two tries per mail');
    assert.match(String(stats.lastError), /gave up after 2 connect tries: ECONNREFUSED/);
    assert.deepEqual(stats.latenciesMs, [-1, -1, -1, -1], 'all failed');
    assert.equal(world.client.logs.length, 4, 'each failure logged once');
    assert.equal(world.pair.b.openSocketCount, 0, 'no socket left');
  });

  it('fails a mail on a reset, an early close or a malformed reply, and sends the rest', () => {
    // Connection 2 is reset mid-message; 4 closes after its greeting; 6 greets with garbage.
    const p = params({ n: 3, fileSizeBytes: 100_000 });
    const world = new World({
      bufferBytes: 8192,
      script: {
        closeAfterGreeting: (connection) => connection === 4,
        greeting: (connection) => (connection === 6 ? 'hello there' : undefined),
      },
    });
    world.client.start(p);
    while (world.client.state.mailIndex < 1 || world.client.state.messageSentBytes < 20_000) {
      assert.ok(world.pair.step(), 'the transfer is under way');
    }
    world.pair.a.abort(world.server.socketOf(0)!);
    world.run();
    assertReceived(world, p, [1, 3, 5, 7, 8, 9]);
    const stats = world.stats();
    assert.equal(stats.finished, true, 'finished');
    assert.equal(stats.mailsFailed, 3, '3 failed');
    assert.deepEqual(
      (stats.latenciesMs as number[]).map((latency) => latency === -1),
      [false, true, false, true, false, true, false, false, false],
      'mails 2, 4 and 6 failed',
    );
    assert.match(String(stats.firstError), /^ECONNRESET: /);
    assert.match(String(stats.lastError), /^SMTP_REPLY_MALFORMED: not a reply line: "hello there"/);
    assert.ok(
      world.client.logs.some((line) =>
        /mail 4 failed: the server closed the connection in/.test(line),
      ),
      'the early close is logged',
    );
  });

  it('fails a mail whose server stops answering, after the stall limit', () => {
    const p = params({ n: 1 });
    const world = runAll(p, { script: { greeting: () => null, neverClose: true } });
    const stats = world.stats();
    assert.equal(stats.finished, true, 'finished');
    assert.equal(stats.mailsFailed, 1, 'failed');
    assert.match(String(stats.firstError), /^no progress for 30\d{4} ms in greeting$/);
    assert.ok(
      Number(stats.finishedMs) >= 2 * MCLIENT_STALL_MS_MAX &&
        Number(stats.finishedMs) <= 2 * MCLIENT_STALL_MS_MAX + 30_000,
      `then gave up the close too (${stats.finishedMs} ms)`,
    );
  });

  it('paces mails pacingMs apart and measures latency from connect to the 250', () => {
    const p = params({ n: 2, pacingMs: 1000 });
    const world = runAll(p);
    assertAllSent(world, p);
    assert.deepEqual(world.stats().mailStartMs, [0, 1000, 2000, 3000], 'one mail a second');
    assert.equal(world.stats().finishedMs, 3000, 'done with the last mail');
    const ticking = runAll(p, { tickMs: 1 });
    assertAllSent(ticking, p);
    for (const latency of ticking.stats().latenciesMs as number[]) {
      assert.ok(latency > 0 && latency < 100, `latency ${latency} ms counts clock readings`);
    }
  });

  it('yields with a send timer after one event budget', () => {
    const p = params({ n: 1, fileSizeBytes: 4 * 1024 * 1024 });
    const world = new World({ bufferBytes: 4 * MCLIENT_SEND_BYTES_PER_EVENT_MAX });
    world.client.start(p);
    world.pair.pump();
    assert.equal(world.client.state.phase, 'message', 'sending the message');
    assert.equal(
      world.client.state.messageSentBytes,
      MCLIENT_SEND_BYTES_PER_EVENT_MAX,
      'one budget per event',
    );
    assert.ok(
      world.client.timers.some((timer) => timer.tag === 'send' && timer.dueMs === 0),
      'a 0 ms send timer',
    );
    world.run();
    assertAllSent(world, p);
  });

  it('continues exactly after a migration in the middle of a message', () => {
    const p = params({ n: 2, fileSizeBytes: 300_000 });
    const world = new World({ bufferBytes: 8192 });
    world.client.start(p);
    const state = (): MclientState => world.client.state;
    while (
      state().mailIndex < 1 ||
      state().phase !== 'message' ||
      state().chunkSentBytes === 0 ||
      state().chunkSentBytes === state().chunkSizeBytes ||
      state().messageSentBytes < MCLIENT_CHUNK_BYTES
    ) {
      assert.ok(world.pair.step(), 'the transfer is under way');
    }
    world.client.migrate(world.pair, 300);
    world.run();
    assertAllSent(world, p);
  });

  it('continues exactly after a structured clone of its state at any moment', () => {
    const p = params({ n: 2, fileSizeBytes: 50_000 });
    const phases = new Set<string>();
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 999 }),
        fc.constantFrom(1000, 8192, 100_000),
        fc.boolean(),
        (cutPermille, bufferBytes, pipelining) => {
          const start = (): World => {
            const world = new World({ bufferBytes });
            world.client.start({ ...p, pipelining });
            return world;
          };
          // A dry run counts the rounds of an unbroken run; the cut falls among them.
          const dry = start();
          let roundCount = 0;
          while (dry.pair.step()) roundCount++;
          const world = start();
          const cut = Math.floor((cutPermille * roundCount) / 1000);
          for (let k = 0; k < cut; k++) world.pair.step();
          phases.add(world.client.state.phase);
          world.client.migrate(world.pair, 300);
          world.run();
          assertAllSent(world, { ...p, pipelining });
        },
      ),
      { seed: 0x3c11e47, numRuns: 40 },
    );
    for (const phase of ['message', 'dataEnd', 'closing']) {
      assert.ok(phases.has(phase), `some cut fell in ${phase} (${[...phases].join(', ')})`);
    }
  });

  it('stages message chunks in the first pages of its data region only', () => {
    const p = params({ n: 2, fileSizeBytes: 150_000 });
    const world = new World();
    world.client.memory.setLogDirty(true);
    world.client.start(p);
    world.run();
    assertAllSent(world, p);
    const first = world.client.dataRegion.firstPage;
    assert.deepEqual(
      [...world.client.memory.peekAndClean()],
      Array.from({ length: MCLIENT_CHUNK_BYTES / PAGE_SIZE_BYTES }, (_, k) => first + k),
      'the 64 KiB staging slot, nothing else',
    );
  });

  it('decides each reply with a pure planner', () => {
    const dialogue: SmtpDialogue = {
      phase: 'ehlo',
      envelopeReplies: 0,
      pipeliningWanted: true,
      from: 'a@x',
      to: 'b@x',
      messageBytes: 123,
      domain: 'x',
    };
    const ehlo = { code: 250, lines: ['x', 'pipelining', 'SIZE 1000'] };
    assert.deepEqual(planSmtpReply(dialogue, ehlo), {
      kind: 'send',
      commands: 'MAIL FROM:<a@x> SIZE=123\r\nRCPT TO:<b@x>\r\nDATA\r\n',
      phase: 'envelope',
      pipelining: true,
    });
    const envelope = { ...dialogue, phase: 'envelope' as const };
    assert.deepEqual(planSmtpReply(envelope, { code: 250, lines: [] }), { kind: 'wait' });
    assert.deepEqual(
      planSmtpReply({ ...envelope, envelopeReplies: 1 }, { code: 550, lines: ['no'] }),
      { kind: 'fail', reason: 'RCPT TO:<b@x> answered 550 no' },
    );
    assert.deepEqual(
      planSmtpReply({ ...envelope, envelopeReplies: 2 }, { code: 354, lines: [''] }),
      { kind: 'message' },
    );
    assert.deepEqual(
      planSmtpReply({ ...dialogue, phase: 'greeting' }, { code: 554, lines: ['go away'] }),
      { kind: 'fail', reason: 'the greeting answered 554 go away' },
    );
    assert.deepEqual(planSmtpReply({ ...dialogue, phase: 'dataEnd' }, { code: 250, lines: [] }), {
      kind: 'accepted',
    });
    assert.deepEqual(planSmtpReply({ ...dialogue, phase: 'quit' }, { code: 221, lines: [] }), {
      kind: 'quitted',
    });
    assert.equal(
      planSmtpReply({ ...dialogue, phase: 'message' }, { code: 421, lines: ['bye'] }).kind,
      'fail',
      'any reply during the message fails it',
    );
  });

  it('rejects bad parameters with an InputError that names them', () => {
    const good = params();
    const cases: Array<[MclientParams, RegExp]> = [
      [{ ...good, serverIp: '10.0.0.256' }, /serverIp must be .*IPv4.*got 10\.0\.0\.256/],
      [{ ...good, serverIp: undefined as unknown as string }, /serverIp .*got undefined/],
      [{ ...good, port: 0 }, /port must be an integer in \[1, 65535\]; got 0/],
      [{ ...good, n: 0 }, /n must be an integer in \[1, 100\]; got 0/],
      [{ ...good, n: 101 }, /n must be .*got 101/],
      [{ ...good, n: 2.5 }, /n must be .*got 2\.5/],
      [{ ...good, fileSizeBytes: -1 }, /fileSizeBytes must be an integer in \[0, 67108864\]/],
      [{ ...good, fileSizeBytes: 64 * 1024 * 1024 + 1 }, /fileSizeBytes .*got 67108865/],
      [{ ...good, pacingMs: -5 }, /pacingMs must be .*\[0, 3600000\]; got -5/],
      [{ ...good, seed: 2 ** 32 }, /seed must be an integer in \[0, 4294967295\]/],
      [{ ...good, domain: 'bad domain' }, /domain must be a DNS name.*got bad domain/],
      [{ ...good, domain: '' }, /domain must be a DNS name/],
      [{ ...good, connectTriesMax: 0 }, /connectTriesMax .*\[1, 36000\]; got 0/],
      [{ ...good, pipelining: 'yes' as unknown as boolean }, /pipelining must be true or false/],
      [{ ...good, files: 3 } as MclientParams, /unknown mclient parameter files; known: serverIp/],
    ];
    const world = new World();
    for (const [bad, message] of cases) {
      assert.throws(
        () => mclientFactory.create(world.client.context(), bad),
        (error: unknown) => {
          assert.ok(error instanceof InputError, `${JSON.stringify(bad)} gives an InputError`);
          assert.match(error.message, message, 'the message names the field');
          return true;
        },
        `${JSON.stringify(bad)} is refused`,
      );
    }
    const tiny = GuestMemory.create(
      defaultLayout(FAKE_DOMAIN_PAGES, { sockbuf: 512, pagecache: 2552, program: 8 }),
    );
    const context = { ...world.client.context(), memory: tiny, dataRegion: tiny.region('program') };
    assert.throws(
      () => mclientFactory.create(context, good),
      /data region of \d+ B cannot hold mclient's 65536 B staging area/,
      'the staging area must fit',
    );
  });
});
