/**
 * Goal: the SMTP session answers what real clients send (nodemailer, sendmail, smtplib) with the
 * RFC 5321 reply codes, honours PIPELINING whatever the chunking, hands the sink exactly the
 * unstuffed body once, enforces every limit with its exact code, and never takes a bare LF
 * sequence for the end of data.
 *
 * Method: scripted sessions fed through `receive` in one chunk, split at every position, or in
 * random chunks, with the state structured-cloned between chunks (as at a migration pause); a
 * recording sink that asserts begin/data/commit/abort are balanced; fast-check with a fixed
 * seed for bodies of random bytes dot-stuffed by a reference stuffer written here from RFC 5321
 * 4.5.2.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../../core/errors.ts';
import {
  closeSession,
  connectionLost,
  DEFAULT_SMTP_LIMITS,
  type Envelope,
  type MessageSink,
  openSession,
  receive,
  type SmtpLimits,
  type SmtpServerConfig,
  type SmtpSessionState,
} from './smtp-session.ts';

const HOST = 'mail.xenlab.local';

function makeConfig(limits: Partial<SmtpLimits> = {}): SmtpServerConfig {
  return {
    hostname: HOST,
    domains: ['xenlab.local'],
    limits: { ...DEFAULT_SMTP_LIMITS, ...limits },
  };
}

interface StoredMessage {
  envelope: Envelope;
  body: Buffer;
  outcome: 'committed' | 'refused' | 'aborted';
}

/** A sink that copies what it gets and checks the call order (begin, data*, commit|abort). */
class RecordingSink implements MessageSink {
  readonly messages: StoredMessage[] = [];
  dataCalls = 0;
  refuseNext = false;
  private current: { envelope: Envelope; chunks: Buffer[] } | null = null;

  begin(envelope: Envelope): void {
    assert.equal(this.current, null, 'begin while a message is open');
    this.current = { envelope, chunks: [] };
  }

  data(bytes: Uint8Array): void {
    assert.notEqual(this.current, null, 'data outside a message');
    assert.ok(bytes.length > 0, 'data with no bytes');
    this.current?.chunks.push(Buffer.from(bytes));
    this.dataCalls += 1;
  }

  commit(): ReturnType<MessageSink['commit']> {
    const message = this.finish(this.refuseNext ? 'refused' : 'committed');
    if (this.refuseNext) {
      this.refuseNext = false;
      return { ok: false, code: 452, enhanced: '4.3.1', text: 'Mailbox full\r\n250 fake' };
    }
    return { ok: true, queueId: `Q${this.messages.indexOf(message)}` };
  }

  abort(): void {
    this.finish('aborted');
  }

  get open(): boolean {
    return this.current !== null;
  }

  private finish(outcome: StoredMessage['outcome']): StoredMessage {
    assert.ok(this.current !== null, `${outcome} outside a message`);
    const message = { ...this.current, body: Buffer.concat(this.current.chunks), outcome };
    this.messages.push(message);
    this.current = null;
    return message;
  }
}

interface Run {
  /** Every reply string, the greeting first. */
  replies: string[];
  /** Reply codes with their enhanced codes, e.g. `250 2.1.0`, one per reply. */
  codes: string[];
  closed: boolean;
  state: SmtpSessionState;
  sink: RecordingSink;
}

/** Runs a session over `chunks`, cloning the state between chunks as a migration would. */
function run(
  chunks: (string | Uint8Array)[],
  config = makeConfig(),
  sink = new RecordingSink(),
): Run {
  const opened = openSession(config);
  let state = opened.state;
  const replies = [...opened.replies];
  let closed = false;
  for (const chunk of chunks) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk;
    const output = receive(state, config, bytes, sink);
    replies.push(...output.replies);
    if (output.close) closed = true;
    state = structuredClone(state);
  }
  return { replies, codes: replies.map(codeOf), closed, state, sink };
}

/** `250 2.1.0` from `250 2.1.0 Sender ...`; `354` and the 220 greeting keep only the code. */
function codeOf(reply: string): string {
  const last = reply.trimEnd().split('\r\n').at(-1) ?? '';
  const match = /^(\d{3}) (\d\.\d{1,3}\.\d{1,3} )?/.exec(last);
  return match === null ? `?${reply}` : `${match[1]}${match[2] ? ` ${match[2].trim()}` : ''}`;
}

const EHLO = 'EHLO client.example\r\n';
const ENVELOPE = 'MAIL FROM:<test1@xenlab.local>\r\nRCPT TO:<test2@xenlab.local>\r\n';

/** The codes of an EHLO + one accepted message. */
const MESSAGE_OK = ['220', '250', '250 2.1.0', '250 2.1.5', '354', '250 2.0.0'];

describe('smtp session: a whole conversation', () => {
  it('greets, takes one message, and closes on QUIT', () => {
    const chunks = [
      EHLO,
      'MAIL FROM:<test1@xenlab.local> SIZE=40 BODY=8BITMIME\r\n',
      'RCPT TO:<test2@xenlab.local>\r\n',
      'RCPT TO:<Test3@XENLAB.local>\r\n',
      'DATA\r\n',
      'Subject: hi\r\n\r\nhello\r\n.\r\n',
      'QUIT\r\n',
    ];
    const result = run(chunks);
    assert.deepEqual(
      result.replies,
      [
        `220 ${HOST} ESMTP xenvmc\r\n`,
        `250-${HOST}\r\n250-PIPELINING\r\n250-SIZE ${DEFAULT_SMTP_LIMITS.messageBytesMax}\r\n` +
          '250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n',
        '250 2.1.0 Sender <test1@xenlab.local> ok\r\n',
        '250 2.1.5 Recipient <test2@xenlab.local> ok\r\n',
        '250 2.1.5 Recipient <Test3@xenlab.local> ok\r\n',
        '354 End data with <CR><LF>.<CR><LF>\r\n',
        '250 2.0.0 Ok: queued as Q0\r\n',
        `221 2.0.0 ${HOST} closing connection\r\n`,
      ],
      'the replies of a plain session',
    );
    assert.equal(result.closed, true, 'QUIT closes');
    assert.equal(result.sink.messages.length, 1, 'one message');
    const message = result.sink.messages[0];
    assert.equal(message?.outcome, 'committed', 'committed');
    assert.equal(message?.body.toString('latin1'), 'Subject: hi\r\n\r\nhello\r\n', 'body');
    assert.deepEqual(
      message?.envelope,
      {
        from: 'test1@xenlab.local',
        recipients: ['test2@xenlab.local', 'Test3@xenlab.local'],
        helo: 'client.example',
        bodyType: '8BITMIME',
        declaredSize: 40,
      },
      'envelope',
    );
    assert.deepEqual(
      result.state.counters,
      {
        commands: 6,
        messagesAccepted: 1,
        messagesRejected: 0,
        badCommands: 0,
        bytesReceived: chunks.join('').length,
      },
      'counters',
    );
  });

  it('answers HELO with one line and refuses ESMTP parameters after it', () => {
    const result = run([
      'HELO client.example\r\n',
      'MAIL FROM:<a@b.example> SIZE=10\r\n',
      'MAIL FROM:<a@b.example>\r\n',
    ]);
    assert.equal(result.replies[1], `250 ${HOST}\r\n`, 'HELO reply is a single line');
    assert.deepEqual(result.codes.slice(2), ['555 5.5.4', '250 2.1.0'], 'SIZE needs EHLO');
  });

  it('takes commands in any case', () => {
    const result = run([
      'ehlo x\r\nmail from:<A@B.example> size=5 body=8bitmime\r\nrcpt To:<u@Xenlab.Local>\r\n',
      'data\r\nbody\r\n.\r\nnoop\r\nrset\r\nvrfy u\r\nhelp\r\nquit\r\n',
    ]);
    assert.deepEqual(
      result.codes,
      [...MESSAGE_OK, '250 2.0.0', '250 2.0.0', '252 2.5.2', '214 2.0.0', '221 2.0.0'],
      'lower-case commands work',
    );
    assert.equal(result.sink.messages[0]?.envelope.from, 'A@b.example', 'domain lower-cased');
    assert.equal(result.sink.messages[0]?.envelope.bodyType, '8BITMIME', 'BODY value any case');
  });

  it('accepts the null reverse path and MAIL FROM with a space after the colon', () => {
    const result = run([EHLO, 'MAIL FROM:<>\r\nRSET\r\nMAIL FROM: <x@y.example>\r\n']);
    assert.deepEqual(result.codes.slice(2), ['250 2.1.0', '250 2.0.0', '250 2.1.0'], 'accepted');
    const empty = run([EHLO, 'MAIL FROM:<>\r\nRCPT TO:<a@xenlab.local>\r\nDATA\r\nx\r\n.\r\n']);
    assert.equal(empty.sink.messages[0]?.envelope.from, '', 'the null path is the empty string');
  });

  it('accepts <Postmaster> without a domain and ignores a source route', () => {
    const result = run([
      EHLO,
      'MAIL FROM:<@relay.example,@b.example:x@y.example>\r\n',
      'RCPT TO:<Postmaster>\r\nDATA\r\n.\r\n',
    ]);
    assert.deepEqual(result.codes.slice(2), ['250 2.1.0', '250 2.1.5', '354', '250 2.0.0'], 'ok');
    assert.deepEqual(
      result.sink.messages[0]?.envelope.recipients,
      ['postmaster@xenlab.local'],
      'postmaster of the first domain',
    );
    assert.equal(result.sink.messages[0]?.envelope.from, 'x@y.example', 'route dropped');
    assert.equal(result.sink.messages[0]?.body.length, 0, 'an empty body');
  });

  it('answers VRFY, HELP, unimplemented and unknown commands', () => {
    const result = run([
      'VRFY someone\r\nHELP\r\nEXPN list\r\nTURN\r\nETRN x\r\nAUTH PLAIN\r\nSTARTTLS\r\n',
      'FOO bar\r\n\r\nNOOP anything\r\n',
    ]);
    assert.deepEqual(
      result.codes.slice(1),
      [
        '252 2.5.2',
        '214 2.0.0',
        '502 5.5.1',
        '502 5.5.1',
        '502 5.5.1',
        '502 5.5.1',
        '502 5.5.1',
        '500 5.5.1',
        '500 5.5.1',
        '250 2.0.0',
      ],
      'each command its code',
    );
  });

  it('hands the sink a refusal reply from commit, sanitised', () => {
    const sink = new RecordingSink();
    sink.refuseNext = true;
    const result = run([EHLO, ENVELOPE, 'DATA\r\nx\r\n.\r\nMAIL FROM:<>\r\n'], makeConfig(), sink);
    assert.equal(result.replies[5], '452 4.3.1 Mailbox full??250 fake\r\n', 'refusal, no CRLF');
    assert.equal(result.codes[6], '250 2.1.0', 'the transaction was reset');
    assert.equal(result.state.counters.messagesRejected, 1, 'counted as rejected');
  });
});

describe('smtp session: pipelining', () => {
  it('answers MAIL/RCPT/RCPT/DATA, the body and QUIT sent in one chunk, in order', () => {
    const chunk =
      `${EHLO}MAIL FROM:<a@b.example>\r\nRCPT TO:<x@xenlab.local>\r\n` +
      'RCPT TO:<y@xenlab.local>\r\nDATA\r\nline 1\r\nline 2\r\n.\r\nQUIT\r\nNOOP\r\n';
    const result = run([chunk]);
    assert.deepEqual(
      result.codes,
      ['220', '250', '250 2.1.0', '250 2.1.5', '250 2.1.5', '354', '250 2.0.0', '221 2.0.0'],
      'replies in order, nothing after QUIT',
    );
    assert.equal(result.closed, true, 'closed');
    assert.equal(result.sink.messages[0]?.body.toString(), 'line 1\r\nline 2\r\n', 'body');
  });

  it('takes two messages back to back in one chunk', () => {
    const one = `${ENVELOPE}DATA\r\nfirst\r\n.\r\n`;
    const two = `${ENVELOPE}DATA\r\nsecond\r\n.\r\n`;
    const result = run([EHLO + one + two]);
    assert.deepEqual(
      result.sink.messages.map((message) => message.body.toString()),
      ['first\r\n', 'second\r\n'],
      'both bodies',
    );
  });

  it('gives the same replies and body for every split of a session into two chunks', () => {
    const session =
      `${EHLO}MAIL FROM:<a@b.example>\r\nRCPT TO:<x@xenlab.local>\r\nDATA\r\n` +
      '.hidden\r\n..\r\n\r\n.\r\nQUIT\r\n';
    const whole = run([session]);
    assert.deepEqual(
      whole.codes,
      ['220', '250', '250 2.1.0', '250 2.1.5', '354', '250 2.0.0', '221 2.0.0'],
      'the unsplit session',
    );
    for (let split = 1; split < session.length; split += 1) {
      const result = run([session.slice(0, split), session.slice(split)]);
      assert.deepEqual(result.replies, whole.replies, `replies with a split at ${split}`);
      assert.deepEqual(
        result.sink.messages.map((message) => message.body.toString()),
        ['hidden\r\n.\r\n\r\n'],
        `body with a split at ${split}`,
      );
    }
  });

  it('finds the end marker split across chunks at every position, byte by byte too', () => {
    const tail = 'body\r\n.\r\nNOOP\r\n';
    for (let first = 0; first <= tail.length; first += 1) {
      for (let second = first; second <= tail.length; second += 1) {
        const chunks = [
          `${EHLO}${ENVELOPE}DATA\r\n${tail.slice(0, first)}`,
          tail.slice(first, second),
          tail.slice(second),
        ];
        const result = run(chunks);
        assert.deepEqual(result.codes, [...MESSAGE_OK, '250 2.0.0'], `splits ${first},${second}`);
        assert.equal(result.sink.messages[0]?.body.toString(), 'body\r\n', 'the body');
      }
    }
    const bytewise = run([...`${EHLO}${ENVELOPE}DATA\r\n${tail}`]);
    assert.deepEqual(bytewise.codes, [...MESSAGE_OK, '250 2.0.0'], 'one byte per chunk');
  });
});

describe('smtp session: dot-stuffing and the end of data', () => {
  /**
   * The body the sink gets for `wire` sent after DATA (which must end the data); the same for
   * `wire` split in two at every position, so every held-back prefix is crossed.
   */
  function bodyFor(wire: string): string {
    const result = run([EHLO, ENVELOPE, 'DATA\r\n', wire]);
    assert.deepEqual(result.codes, MESSAGE_OK, `message accepted for ${JSON.stringify(wire)}`);
    const body = result.sink.messages[0]?.body.toString('latin1') ?? '';
    for (let split = 1; split < wire.length; split += 1) {
      const parts = run([EHLO, ENVELOPE, 'DATA\r\n', wire.slice(0, split), wire.slice(split)]);
      assert.deepEqual(parts.codes, MESSAGE_OK, `accepted, split at ${split}`);
      assert.equal(parts.sink.messages[0]?.body.toString('latin1'), body, `split at ${split}`);
    }
    return body;
  }

  it('removes the stuffed dot of a line that is just `..`', () => {
    assert.equal(bodyFor('a\r\n..\r\nb\r\n.\r\n'), 'a\r\n.\r\nb\r\n', 'a lone dot line');
  });

  it('keeps a dot inside a line and unstuffs a leading one', () => {
    assert.equal(bodyFor('a.b .\r\n..c.\r\n.\r\n'), 'a.b .\r\n.c.\r\n', 'dots kept');
  });

  it('handles a last line that starts with a dot', () => {
    assert.equal(bodyFor('first\r\n..last\r\n.\r\n'), 'first\r\n.last\r\n', 'last line');
    assert.equal(bodyFor('...\r\n.\r\n'), '..\r\n', 'a line of three dots');
  });

  it('takes an empty body and a body of one empty line', () => {
    assert.equal(bodyFor('.\r\n'), '', 'nothing');
    assert.equal(bodyFor('\r\n.\r\n'), '\r\n', 'one empty line');
  });

  it('removes a dot followed by a lone CR and keeps the CR', () => {
    assert.equal(bodyFor('.\rx\r\n.\r\n'), '\rx\r\n', 'dot CR x');
    assert.equal(bodyFor('.\r\r\n.\r\n'), '\r\r\n', 'dot CR CR LF');
    assert.equal(bodyFor('.\n\r\n.\r\n'), '\n\r\n', 'dot LF: not the end, the dot is stuffing');
  });

  it('does not end the data at a bare-LF marker (no SMTP smuggling)', () => {
    // Each of these is body; only the final CRLF.CRLF ends the data.
    const body = bodyFor('a\n.\nMAIL FROM:<x@y.example>\r\nb\r\n.\nc\n.\r\nd\r.\r\n.\r\n');
    assert.equal(
      body,
      'a\n.\nMAIL FROM:<x@y.example>\r\nb\r\n\nc\n.\r\nd\r.\r\n',
      'the bytes are kept; the dot after CRLF (not followed by CRLF) is unstuffed',
    );
  });

  it('passes 8-bit and NUL bytes through untouched', () => {
    const bytes = Buffer.from([0x00, 0x80, 0xff, 0xc3, 0x28, 0x0d, 0x0a]);
    const result = run([EHLO, ENVELOPE, 'DATA\r\n', bytes, '.\r\n']);
    assert.deepEqual(result.sink.messages[0]?.body, bytes, 'opaque bytes');
  });

  it('gives the sink runs of many lines, not one call per line', () => {
    const line = `${'A'.repeat(76)}\r\n`;
    const body = Buffer.from(line.repeat(40_000)); // 3.1 MB, like a base64 attachment
    const chunks: Uint8Array[] = [];
    for (let offset = 0; offset < body.length; offset += 65_536) {
      chunks.push(body.subarray(offset, offset + 65_536));
    }
    const result = run([EHLO, ENVELOPE, 'DATA\r\n', ...chunks, '.\r\n']);
    assert.equal(result.sink.messages[0]?.body.equals(body), true, 'the whole body');
    assert.ok(result.sink.dataCalls <= chunks.length, `${result.sink.dataCalls} data calls`);
  });

  it('keeps the session usable after data in the state (structured clone mid-line)', () => {
    const result = run([EHLO, ENVELOPE, 'DATA\r\nhal', 'f\r\n.', '\r', '\nQUIT\r\n']);
    assert.deepEqual(result.codes, [...MESSAGE_OK, '221 2.0.0'], 'replies');
    assert.equal(result.sink.messages[0]?.body.toString(), 'half\r\n', 'body');
  });
});

describe('smtp session: bad sequences and syntax', () => {
  it('answers 503 to MAIL before HELO, RCPT before MAIL, DATA without MAIL or RCPT', () => {
    const result = run([
      'MAIL FROM:<a@b.example>\r\n',
      EHLO,
      'RCPT TO:<x@xenlab.local>\r\nDATA\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n',
      'MAIL FROM:<a@b.example>\r\n',
    ]);
    assert.deepEqual(
      result.codes,
      ['220', '503 5.5.1', '250', '503 5.5.1', '503 5.5.1', '250 2.1.0', '503 5.5.1', '503 5.5.1'],
      'bad sequences',
    );
    assert.equal(result.replies[7], '503 5.5.1 Error: nested MAIL command\r\n', 'nested MAIL');
    assert.equal(result.replies[6], '503 5.5.1 Error: need RCPT command\r\n', 'DATA needs RCPT');
  });

  it('answers 501 to syntax errors, saying what was wrong', () => {
    const result = run([
      'EHLO\r\nHELO two words\r\n',
      EHLO,
      'MAIL <a@b.example>\r\nMAIL FROM:a@b.example\r\nMAIL FROM:<a@@b>\r\n',
      'MAIL FROM:<a@b.example> SIZE=abc\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME\r\n',
      'MAIL FROM:<a@b.example> SIZE=1 SIZE=2\r\nMAIL FROM:<a@b.example> =x\r\n',
      'MAIL FROM:<a@b.example>\r\nRCPT TO:<no-at-sign>\r\nRCPT TO:<x@xenlab.local\r\n',
      'DATA now\r\nRSET all\r\nVRFY\r\n',
    ]);
    assert.deepEqual(
      result.codes,
      [
        '220',
        '501 5.5.4',
        '501 5.5.4',
        '250',
        '501 5.5.4',
        '501 5.5.4',
        '501 5.1.7',
        '501 5.5.4',
        '501 5.5.4',
        '501 5.5.4',
        '501 5.5.4',
        '250 2.1.0',
        '501 5.1.3',
        '501 5.5.4',
        '501 5.5.4',
        '501 5.5.4',
        '501 5.5.4',
      ],
      'syntax errors',
    );
    assert.match(result.replies[1] ?? '', /Syntax: EHLO hostname/, 'says the syntax');
    assert.match(result.replies[9] ?? '', /Duplicate MAIL FROM parameter SIZE/, 'says which');
  });

  it('answers 555 to unknown MAIL and RCPT parameters', () => {
    const result = run([
      EHLO,
      'MAIL FROM:<a@b.example> SMTPUTF8\r\nMAIL FROM:<a@b.example> AUTH=<>\r\n',
      'MAIL FROM:<a@b.example>\r\nRCPT TO:<x@xenlab.local> NOTIFY=NEVER\r\n',
    ]);
    assert.deepEqual(
      result.codes.slice(2),
      ['555 5.5.4', '555 5.5.4', '250 2.1.0', '555 5.5.4'],
      'unknown parameters',
    );
  });

  it('refuses recipients outside our domains and unsafe mailbox names', () => {
    const result = run([
      EHLO,
      'MAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<x@sub.xenlab.local>\r\n',
      'RCPT TO:<..x@xenlab.local>\r\nRCPT TO:<a/b@xenlab.local>\r\nRCPT TO:<a.@xenlab.local>\r\n',
      'RCPT TO:<a..b@xenlab.local>\r\nRCPT TO:<test$1@xenlab.local>\r\nRCPT TO:<a.b+c@xenlab.local>\r\n',
      'DATA\r\n',
    ]);
    assert.deepEqual(
      result.codes.slice(3),
      [
        '550 5.1.1',
        '550 5.1.1',
        '501 5.1.3', // `..x` is not even a dot-string
        '553 5.1.3',
        '501 5.1.3',
        '501 5.1.3',
        '553 5.1.3',
        '250 2.1.5',
        '354',
      ],
      'recipient checks',
    );
    assert.deepEqual(
      result.sink.messages.length === 0 && result.sink.open,
      true,
      'the message is open with the one good recipient',
    );
  });

  it('clears the envelope on RSET, HELO and EHLO, but keeps the HELO name', () => {
    const result = run([
      EHLO,
      `${ENVELOPE}RSET\r\nDATA\r\n`,
      `${ENVELOPE}EHLO again\r\nDATA\r\n`,
      `${ENVELOPE}HELO third\r\nRCPT TO:<x@xenlab.local>\r\n`,
      ENVELOPE,
    ]);
    assert.deepEqual(
      result.codes,
      [
        '220',
        '250',
        '250 2.1.0',
        '250 2.1.5',
        '250 2.0.0',
        '503 5.5.1',
        '250 2.1.0',
        '250 2.1.5',
        '250',
        '503 5.5.1',
        '250 2.1.0',
        '250 2.1.5',
        '250',
        '503 5.5.1',
        '250 2.1.0',
        '250 2.1.5',
      ],
      'each reset',
    );
    assert.equal(result.state.helo, 'third', 'the last HELO name');
    assert.deepEqual(result.state.transaction?.recipients, ['test2@xenlab.local'], 'fresh');
  });
});

describe('smtp session: limits', () => {
  it('refuses a declared SIZE above the maximum with 552 5.3.4', () => {
    const config = makeConfig({ messageBytesMax: 1000 });
    const result = run([EHLO, 'MAIL FROM:<a@b.example> SIZE=1001\r\n'], config);
    assert.equal(result.codes[2], '552 5.3.4', 'too big');
    assert.match(result.replies[1] ?? '', /250-SIZE 1000\r\n/, 'advertised');
    const fits = run([EHLO, 'MAIL FROM:<a@b.example> SIZE=1000\r\n'], config);
    assert.equal(fits.codes[2], '250 2.1.0', 'exactly the maximum');
  });

  it('reads a body over the maximum to its end, stores nothing, then answers 552 5.3.4', () => {
    const config = makeConfig({ messageBytesMax: 10 });
    const exact = run([EHLO, ENVELOPE, 'DATA\r\n12345678\r\n.\r\n'], config);
    assert.deepEqual(exact.codes, MESSAGE_OK, 'exactly 10 bytes fit');
    const result = run(
      [EHLO, ENVELOPE, 'DATA\r\n123456789\r\n', 'MAIL FROM:<x@y.example>\r\n.\r\nNOOP\r\n'],
      config,
    );
    assert.deepEqual(
      result.codes,
      ['220', '250', '250 2.1.0', '250 2.1.5', '354', '552 5.3.4', '250 2.0.0'],
      'refused at the end of data, then commands again',
    );
    assert.equal(result.sink.messages[0]?.outcome, 'aborted', 'the sink was told');
    assert.equal(result.state.counters.messagesRejected, 1, 'counted');
    assert.equal(result.state.counters.badCommands, 0, 'the refusal is no bad command');
  });

  it('answers 452 4.5.3 to recipients beyond the maximum, and counts a repeat once', () => {
    const config = makeConfig({ recipientsMax: 2 });
    const result = run(
      [
        EHLO,
        'MAIL FROM:<a@b.example>\r\nRCPT TO:<x@xenlab.local>\r\nRCPT TO:<x@xenlab.local>\r\n',
        'RCPT TO:<y@xenlab.local>\r\nRCPT TO:<z@xenlab.local>\r\nDATA\r\nhi\r\n.\r\n',
      ],
      config,
    );
    assert.deepEqual(
      result.codes.slice(2),
      ['250 2.1.0', '250 2.1.5', '250 2.1.5', '250 2.1.5', '452 4.5.3', '354', '250 2.0.0'],
      'the third distinct recipient is refused, the message goes to the first two',
    );
    assert.deepEqual(
      result.sink.messages[0]?.envelope.recipients,
      ['x@xenlab.local', 'y@xenlab.local'],
      'recipients',
    );
  });

  it('takes a command line of exactly 512 octets and refuses 513 with 500 5.5.2', () => {
    const exact = `NOOP ${'x'.repeat(512 - 7)}\r\n`;
    const bareLf = `NOOP ${'x'.repeat(512 - 6)}\n`;
    const over = `NOOP ${'x'.repeat(512 - 6)}\r\n`;
    assert.equal(exact.length, 512, 'exact line');
    const result = run([exact, bareLf, over, 'NOOP\r\n']);
    assert.deepEqual(
      result.codes,
      ['220', '250 2.0.0', '250 2.0.0', '500 5.5.2', '250 2.0.0'],
      'the limit includes the line end',
    );
  });

  it('never buffers more than the command line limit and discards through the next LF', () => {
    const chunks = ['NOOP ', ...Array.from({ length: 50 }, () => 'y'.repeat(1000))];
    const opened = openSession(makeConfig());
    const sink = new RecordingSink();
    const replies: string[] = [];
    for (const chunk of chunks) {
      replies.push(...receive(opened.state, makeConfig(), Buffer.from(chunk), sink).replies);
      assert.ok(opened.state.commandCarry.length < 512, 'the carry stays under the limit');
    }
    replies.push(
      ...receive(opened.state, makeConfig(), Buffer.from('zz\r\nNOOP\r\n'), sink).replies,
    );
    assert.deepEqual(replies.map(codeOf), ['500 5.5.2', '250 2.0.0'], 'one refusal, then on');
  });

  it('refuses a message with a body line over 1000 octets with 554 5.6.0 at the end', () => {
    const exact = `${'b'.repeat(998)}\r\n`;
    const okResult = run([EHLO, ENVELOPE, 'DATA\r\n', `.${exact}`, exact, '.\r\n']);
    assert.deepEqual(okResult.codes, MESSAGE_OK, '1000 octets, a stuffed dot not counted');
    const long = `${'b'.repeat(999)}\r\n`;
    const result = run([EHLO, ENVELOPE, 'DATA\r\nok\r\n', long.slice(0, 500), long.slice(500)]);
    assert.equal(result.sink.messages[0]?.outcome, 'aborted', 'aborted as soon as known');
    const end = run([EHLO, ENVELOPE, `DATA\r\n${long}.\r\nNOOP\r\n`]);
    assert.deepEqual(end.codes.slice(5), ['554 5.6.0', '250 2.0.0'], 'refused, then on');
    const bareLf = `${'c'.repeat(77)}\n`.repeat(50);
    const lenient = run([EHLO, ENVELOPE, `DATA\r\n${bareLf}\r\n.\r\n`]);
    assert.deepEqual(lenient.codes, MESSAGE_OK, 'bare-LF lines are short lines, not one long');
    const huge = run([EHLO, ENVELOPE, 'DATA\r\n', Buffer.alloc(5_000_000, 0x41), '\r\n.\r\n']);
    assert.deepEqual(huge.codes.slice(5), ['554 5.6.0'], 'a 5 MB line, never buffered');
    assert.ok(JSON.stringify(huge.state).length < 2000, 'the state stays small');
  });

  it('replies 421 and closes after badCommandsMax bad commands in a row', () => {
    const config = makeConfig({ badCommandsMax: 3 });
    const result = run(['FOO\r\nBAR\r\nNOOP\r\nA\r\nB\r\nC\r\nNOOP\r\n'], config);
    assert.deepEqual(
      result.codes,
      [
        '220',
        '500 5.5.1',
        '500 5.5.1',
        '250 2.0.0',
        '500 5.5.1',
        '500 5.5.1',
        '500 5.5.1',
        '421 4.7.0',
      ],
      'a good command resets the run; the third bad one in a row closes',
    );
    assert.equal(result.closed, true, 'closed');
    assert.equal(result.state.counters.badCommands, 5, 'all bad commands counted');
  });

  it('closes a refused DATA followed by a pipelined body after badCommandsMax lines', () => {
    const body = Array.from({ length: 100 }, (_, index) => `line ${index}\r\n`).join('');
    const result = run([`${EHLO}MAIL FROM:<a@b.example>\r\nDATA\r\n${body}.\r\n`]);
    assert.equal(result.codes.at(-1), '421 4.7.0', 'ends with 421');
    assert.equal(result.codes.length, 3 + DEFAULT_SMTP_LIMITS.badCommandsMax + 1, 'bounded');
  });
});

describe('smtp session: lifecycle and config', () => {
  it('aborts an open message when the connection is lost, once', () => {
    const result = run([EHLO, ENVELOPE, 'DATA\r\npartial']);
    connectionLost(result.state, result.sink);
    assert.equal(result.sink.messages[0]?.outcome, 'aborted', 'aborted');
    assert.equal(result.state.phase, 'closed', 'closed');
    const config = makeConfig({ messageBytesMax: 1 });
    const refused = run([EHLO, ENVELOPE, 'DATA\r\nfar too big'], config);
    connectionLost(refused.state, refused.sink); // the sink's balance check would throw
    assert.equal(refused.sink.messages.length, 1, 'no second abort');
  });

  it('ignores input after QUIT, and closeSession answers 421 and aborts', () => {
    const result = run(['QUIT\r\n']);
    const after = receive(result.state, makeConfig(), Buffer.from('NOOP\r\n'), result.sink);
    assert.deepEqual(after, { replies: [], close: true }, 'nothing after close');
    const open = run([EHLO, ENVELOPE, 'DATA\r\nx']);
    const closing = closeSession(open.state, makeConfig(), open.sink, 'timeout');
    assert.deepEqual(closing.replies.map(codeOf), ['421 4.4.2'], 'timeout reply');
    assert.equal(open.sink.messages[0]?.outcome, 'aborted', 'message aborted');
  });

  it('rejects a bad config with InputError', () => {
    const bad: SmtpServerConfig[] = [
      { ...makeConfig(), hostname: 'bad host' },
      { ...makeConfig(), domains: [] },
      { ...makeConfig(), domains: ['-x.local'] },
      makeConfig({ commandLineBytesMax: 100 }),
      makeConfig({ textLineBytesMax: 999 }),
      makeConfig({ recipientsMax: 0 }),
      makeConfig({ messageBytesMax: 1.5 }),
    ];
    for (const config of bad) {
      assert.throws(() => openSession(config), InputError, JSON.stringify(config));
    }
  });
});

/**
 * The reference stuffer (RFC 5321 4.5.2), written from the RFC, not from the code: lines end
 * at CRLF; a line starting with a dot gets one more; then `.CRLF`. The body must end in CRLF.
 */
function stuff(body: Buffer): Buffer {
  assert.ok(body.length === 0 || body.subarray(-2).toString('latin1') === '\r\n', 'CRLF ending');
  const text = body.toString('latin1');
  const lines = text === '' ? [] : text.slice(0, -2).split('\r\n');
  const stuffed = lines.map((line) => (line.startsWith('.') ? `.${line}` : line));
  return Buffer.from(`${stuffed.map((line) => `${line}\r\n`).join('')}.\r\n`, 'latin1');
}

/** Cuts `bytes` at the given fractions of its length. */
function cut(bytes: Buffer, fractions: number[]): Buffer[] {
  const points = fractions
    .map((fraction) => Math.floor(fraction * bytes.length))
    .sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const point of [...points, bytes.length]) {
    chunks.push(bytes.subarray(start, point));
    start = point;
  }
  return chunks;
}

describe('smtp session: property', () => {
  const byte = fc.oneof(
    fc.constantFrom(0x2e, 0x0d, 0x0a, 0x2e, 0x0d, 0x0a, 0x41),
    fc.integer({ min: 0, max: 255 }),
  );

  it('delivers every random body exactly once, whatever the stuffing and chunking', () => {
    // Long lines are legal here: this property is about the bytes, not the line limit.
    const config = makeConfig({ textLineBytesMax: 1_000_000 });
    fc.assert(
      fc.property(
        fc.array(fc.array(byte, { maxLength: 400 }), { minLength: 1, maxLength: 3 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 12 }),
        fc.boolean(),
        (bodiesBytes, fractions, withCommandsAfter) => {
          const bodies = bodiesBytes.map((bytes) => {
            const body = Buffer.from(bytes);
            const endsInCrlf = body.subarray(-2).toString('latin1') === '\r\n';
            return endsInCrlf ? body : Buffer.concat([body, Buffer.from('\r\n')]);
          });
          const parts: Buffer[] = [Buffer.from(EHLO)];
          for (const body of bodies) parts.push(Buffer.from(`${ENVELOPE}DATA\r\n`), stuff(body));
          if (withCommandsAfter) parts.push(Buffer.from('NOOP\r\nQUIT\r\n'));
          const result = run(cut(Buffer.concat(parts), fractions), config);
          assert.equal(result.sink.messages.length, bodies.length, 'one sink message per body');
          bodies.forEach((body, index) => {
            const message = result.sink.messages[index];
            assert.equal(message?.outcome, 'committed', `message ${index} committed`);
            assert.ok(message?.body.equals(body), `message ${index} is exactly its body`);
          });
          const perMessage = ['250 2.1.0', '250 2.1.5', '354', '250 2.0.0'];
          const expected = ['220', '250', ...bodies.flatMap(() => perMessage)];
          if (withCommandsAfter) expected.push('250 2.0.0', '221 2.0.0');
          assert.deepEqual(result.codes, expected, 'one 250 per message, in order');
        },
      ),
      { seed: 5321, numRuns: 400 },
    );
  });
});
