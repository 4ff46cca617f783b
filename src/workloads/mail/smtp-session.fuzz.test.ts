/**
 * Goal: whatever bytes a client sends, the SMTP session never throws, never loops, keeps its
 * state small (it is saved at every migration pause), answers only well-formed replies, and
 * drives the sink in order: begin, data*, then commit or abort, never data outside a message.
 *
 * Method: fast-check with fixed seeds feeds (1) arbitrary bytes, alone or after a valid
 * EHLO/MAIL/RCPT/DATA prefix so that they land in the body too, and (2) valid pipelined
 * sessions mutated line-wise (duplicate, delete, swap, bare LF) and byte-wise (bit flips, runs of
 * inserted bytes, truncation), all cut into random chunks, with random limits. A checking sink
 * and checks after every `receive` call carry the invariants. `XENVMC_FUZZ_RUNS` raises the
 * number of runs per property for a longer, opt-in search (default 2000).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  connectionLost,
  DEFAULT_SMTP_LIMITS,
  type Envelope,
  type MessageSink,
  openSession,
  receive,
  type SmtpServerConfig,
} from './smtp-session.ts';

const FUZZ_RUNS = fuzzRuns(process.env.XENVMC_FUZZ_RUNS);

function fuzzRuns(value: string | undefined): number {
  if (value === undefined || value === '') return 2000;
  const runs = Number(value);
  assert.ok(
    Number.isSafeInteger(runs) && runs > 0,
    `XENVMC_FUZZ_RUNS=${value}: a positive integer`,
  );
  return runs;
}

/** A sink that asserts the call order and the size bound, and keeps only counts. */
class CheckingSink implements MessageSink {
  open = false;
  begins = 0;
  commits = 0;
  aborts = 0;
  private messageBytes = 0;

  constructor(private readonly messageBytesMax: number) {}

  begin(envelope: Envelope): void {
    assert.equal(this.open, false, 'begin inside a message');
    assert.ok(envelope.recipients.length > 0, 'begin without recipients');
    this.open = true;
    this.begins += 1;
    this.messageBytes = 0;
  }

  data(bytes: Uint8Array): void {
    assert.equal(this.open, true, 'data outside a message');
    assert.ok(bytes.length > 0, 'empty data call');
    this.messageBytes += bytes.length;
    assert.ok(this.messageBytes <= this.messageBytesMax, 'more body than messageBytesMax');
  }

  commit(): { ok: true; queueId: string } {
    assert.equal(this.open, true, 'commit without begin');
    this.open = false;
    this.commits += 1;
    return { ok: true, queueId: `Q${this.commits}` };
  }

  abort(): void {
    assert.equal(this.open, true, 'abort without begin');
    this.open = false;
    this.aborts += 1;
  }
}

/** Each reply: lines of `ddd-` then one `ddd `, one code, printable ASCII, CRLF-terminated. */
function checkReply(reply: string): void {
  assert.ok(reply.endsWith('\r\n'), `reply ends with CRLF: ${JSON.stringify(reply)}`);
  const lines = reply.slice(0, -2).split('\r\n');
  const code = lines[0]?.slice(0, 3);
  lines.forEach((line, index) => {
    assert.match(line, /^[2-5]\d\d[ -]/, `reply line shape: ${JSON.stringify(line)}`);
    assert.match(line, /^[\x20-\x7e]*$/, `reply line is printable: ${JSON.stringify(line)}`);
    assert.equal(line.slice(0, 3), code, 'one code per reply');
    const separator = index === lines.length - 1 ? ' ' : '-';
    assert.equal(line[3], separator, `separator of line ${index} of ${JSON.stringify(reply)}`);
  });
}

/**
 * The most the state may take as JSON: the command carry (under `commandLineBytesMax` chars,
 * 6 when JSON escapes a control byte), the HELO name (255, doubled by escaping), the sender and
 * the recipients (256 each, never escaped: the address grammar has no quote or backslash),
 * and 1 KiB of fields and numbers. Body bytes never count: a body is never buffered.
 */
function stateJsonCharsMax(config: SmtpServerConfig): number {
  const limits = config.limits;
  return 6 * limits.commandLineBytesMax + 2 * 255 + (limits.recipientsMax + 1) * 260 + 1024;
}

function countLineFeeds(bytes: Uint8Array): number {
  let count = 0;
  for (let index = bytes.indexOf(0x0a); index >= 0; index = bytes.indexOf(0x0a, index + 1)) {
    count += 1;
  }
  return count;
}

/** Runs one session over `chunks`, checking every invariant after every call. */
function fuzzSession(config: SmtpServerConfig, chunks: Uint8Array[]): void {
  const sink = new CheckingSink(config.limits.messageBytesMax);
  const opened = openSession(config);
  let state = opened.state;
  opened.replies.forEach(checkReply);
  const jsonMax = stateJsonCharsMax(config);
  let closed = false;
  let bytesFed = 0;
  for (const chunk of chunks) {
    const output = receive(state, config, chunk, sink);
    if (closed) {
      assert.deepEqual(output, { replies: [], close: true }, 'silent after close');
      continue;
    }
    bytesFed += chunk.length;
    output.replies.forEach(checkReply);
    // At most a reply and a 421 per line, plus one for an overlong line cut by the chunk end.
    const repliesMax = 2 * (countLineFeeds(chunk) + 1);
    assert.ok(output.replies.length <= repliesMax, `${output.replies.length} replies`);
    closed = output.close;
    assert.equal(state.phase === 'closed', closed, 'close agrees with the phase');
    assert.ok(state.commandCarry.length < config.limits.commandLineBytesMax, 'carry bounded');
    const json = JSON.stringify(state);
    assert.ok(json.length <= jsonMax, `state JSON ${json.length} > ${jsonMax} chars`);
    assert.equal(sink.open, state.phase === 'data' && state.data?.rejection === null, 'sink open');
    assert.equal(state.counters.bytesReceived, bytesFed, 'bytes counted');
    state = structuredClone(state); // A migration pause between any two chunks.
  }
  connectionLost(state, sink);
  assert.equal(sink.open, false, 'no message left open');
  assert.equal(sink.begins, sink.commits + sink.aborts, 'every begin ended once');
  assert.equal(state.counters.messagesAccepted, sink.commits, 'accepted = committed');
}

const configArbitrary: fc.Arbitrary<SmtpServerConfig> = fc
  .record({
    messageBytesMax: fc.constantFrom(1, 200, 5000, DEFAULT_SMTP_LIMITS.messageBytesMax),
    recipientsMax: fc.integer({ min: 1, max: 5 }),
    badCommandsMax: fc.integer({ min: 1, max: 25 }),
  })
  .map((limits) => ({
    hostname: 'mail.xenlab.local',
    domains: ['xenlab.local', 'other.test'],
    limits: { ...DEFAULT_SMTP_LIMITS, ...limits },
  }));

/** Cuts `bytes` at the given fractions of its length (empty chunks included). */
function cut(bytes: Uint8Array, fractions: number[]): Uint8Array[] {
  const points = fractions.map((f) => Math.floor(f * bytes.length)).sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const point of [...points, bytes.length]) {
    chunks.push(bytes.subarray(start, point));
    start = point;
  }
  return chunks;
}

const fractionsArbitrary = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 16 });

const COMMAND_LINES = [
  'EHLO client.example',
  'HELO client.example',
  'MAIL FROM:<test1@xenlab.local>',
  'MAIL FROM:<> SIZE=100 BODY=8BITMIME',
  'MAIL FROM:<a@b.example> SIZE=99999999999',
  'RCPT TO:<test2@xenlab.local>',
  'RCPT TO:<test3@other.test>',
  'RCPT TO:<x@elsewhere.example>',
  'RCPT TO:<Postmaster>',
  'DATA',
  'RSET',
  'NOOP',
  'VRFY x',
  'HELP',
  'EXPN x',
  'QUIT',
  `NOOP ${'y'.repeat(600)}`,
  'mail from:<"quoted"@b.example>',
];

const BODY_LINES = [
  'Subject: test',
  '',
  '.',
  '..',
  '...',
  '.leading dot',
  'dot . inside',
  'QUIT',
  'x'.repeat(1200),
  'TWFpbCBib2R5IGluIGJhc2U2NCBmb3IgdGhlIGZ1enplcg=='.repeat(2),
  '\u00e9t\u00e9 8bit',
];

/** A valid pipelined session: EHLO, messages, QUIT, as lines without line ends. */
const sessionArbitrary = fc
  .array(
    fc.record({
      recipients: fc.integer({ min: 1, max: 4 }),
      body: fc.array(fc.constantFrom(...BODY_LINES), { maxLength: 12 }),
    }),
    { minLength: 1, maxLength: 3 },
  )
  .map((messages) => [
    'EHLO client.example',
    ...messages.flatMap((message) => [
      'MAIL FROM:<test1@xenlab.local> BODY=8BITMIME',
      ...Array.from(
        { length: message.recipients },
        (_, index) => `RCPT TO:<t${index}@xenlab.local>`,
      ),
      'DATA',
      ...message.body.map((line) => (line.startsWith('.') ? `.${line}` : line)),
      '.',
    ]),
    'QUIT',
  ]);

type LineMutation =
  | { kind: 'duplicate' | 'delete' | 'bareLf' | 'bareCr'; at: number }
  | { kind: 'swap'; at: number; other: number }
  | { kind: 'replace'; at: number; line: string };

type ByteMutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'insert'; at: number; byte: number; count: number }
  | { kind: 'truncate'; at: number };

const lineMutationArbitrary: fc.Arbitrary<LineMutation> = fc.oneof(
  fc.record({
    kind: fc.constantFrom('duplicate' as const, 'delete' as const, 'bareLf' as const),
    at: fc.nat(),
  }),
  fc.record({ kind: fc.constant('bareCr' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('swap' as const), at: fc.nat(), other: fc.nat() }),
  fc.record({
    kind: fc.constant('replace' as const),
    at: fc.nat(),
    line: fc.constantFrom(...COMMAND_LINES, ...BODY_LINES),
  }),
);

const byteMutationArbitrary: fc.Arbitrary<ByteMutation> = fc.oneof(
  fc.record({
    kind: fc.constant('flip' as const),
    at: fc.nat(),
    bit: fc.integer({ min: 0, max: 7 }),
  }),
  fc.record({
    kind: fc.constant('insert' as const),
    at: fc.nat(),
    byte: fc.constantFrom(0x0a, 0x0d, 0x2e, 0x41, 0x00, 0xff),
    // Up to 20 KB: a state that buffered body or command bytes would outgrow its bound.
    count: fc.constantFrom(1, 2, 3, 600, 20_000),
  }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
);

/** Lines to wire bytes, each line with its own ending (CRLF unless mutated). */
function applyLineMutations(lines: string[], mutations: LineMutation[]): Buffer {
  const entries = lines.map((line) => ({ line, end: '\r\n' }));
  for (const mutation of mutations) {
    if (entries.length === 0) break;
    const at = mutation.at % entries.length;
    const entry = entries[at];
    assert.ok(entry !== undefined, 'index in range');
    if (mutation.kind === 'duplicate') entries.splice(at, 0, { ...entry });
    else if (mutation.kind === 'delete') entries.splice(at, 1);
    else if (mutation.kind === 'bareLf') entry.end = '\n';
    else if (mutation.kind === 'bareCr') entry.end = '\r';
    else if (mutation.kind === 'replace') entry.line = mutation.line;
    else if (mutation.kind === 'swap') {
      const other = mutation.other % entries.length;
      const swapped = entries[other];
      assert.ok(swapped !== undefined, 'index in range');
      entries[at] = swapped;
      entries[other] = entry;
    }
  }
  return Buffer.from(entries.map((entry) => entry.line + entry.end).join(''), 'utf8');
}

function applyByteMutations(bytes: Buffer, mutations: ByteMutation[]): Buffer {
  let result = bytes;
  for (const mutation of mutations) {
    const at = result.length === 0 ? 0 : mutation.at % (result.length + 1);
    if (mutation.kind === 'flip') {
      if (at >= result.length) continue;
      result = Buffer.from(result);
      result[at] = (result[at] ?? 0) ^ (1 << mutation.bit);
    } else if (mutation.kind === 'insert') {
      const run = Buffer.alloc(mutation.count, mutation.byte);
      result = Buffer.concat([result.subarray(0, at), run, result.subarray(at)]);
    } else {
      result = result.subarray(0, at);
    }
  }
  return result;
}

const PREFIXES = [
  '',
  'EHLO fuzz\r\n',
  'EHLO fuzz\r\nMAIL FROM:<>\r\nRCPT TO:<a@xenlab.local>\r\nDATA\r\n',
];

describe('smtp session fuzz', () => {
  it('survives arbitrary bytes, in commands and in the body', () => {
    fc.assert(
      fc.property(
        configArbitrary,
        fc.constantFrom(...PREFIXES),
        fc.uint8Array({ maxLength: 4000 }),
        fractionsArbitrary,
        (config, prefix, noise, fractions) => {
          const bytes = Buffer.concat([Buffer.from(prefix), noise]);
          fuzzSession(config, cut(bytes, fractions));
        },
      ),
      { seed: 25, numRuns: FUZZ_RUNS },
    );
  });

  it('survives arbitrary bytes rich in CR, LF and dots', () => {
    const byte = fc.oneof(fc.constantFrom(0x0d, 0x0a, 0x2e, 0x20, 0x3a), fc.nat({ max: 255 }));
    fc.assert(
      fc.property(
        configArbitrary,
        fc.constantFrom(...PREFIXES),
        fc.array(byte, { maxLength: 3000 }),
        fractionsArbitrary,
        (config, prefix, noise, fractions) => {
          const bytes = Buffer.concat([Buffer.from(prefix), Uint8Array.from(noise)]);
          fuzzSession(config, cut(bytes, fractions));
        },
      ),
      { seed: 2821, numRuns: FUZZ_RUNS },
    );
  });

  it('survives mutated valid sessions split anywhere', () => {
    fc.assert(
      fc.property(
        configArbitrary,
        sessionArbitrary,
        fc.array(lineMutationArbitrary, { maxLength: 6 }),
        fc.array(byteMutationArbitrary, { maxLength: 4 }),
        fractionsArbitrary,
        (config, lines, lineMutations, byteMutations, fractions) => {
          const wire = applyByteMutations(applyLineMutations(lines, lineMutations), byteMutations);
          fuzzSession(config, cut(wire, fractions));
        },
      ),
      { seed: 1869, numRuns: FUZZ_RUNS },
    );
  });

  it('accepts every unmutated session whole', () => {
    fc.assert(
      fc.property(sessionArbitrary, fractionsArbitrary, (lines, fractions) => {
        const config: SmtpServerConfig = {
          hostname: 'mail.xenlab.local',
          domains: ['xenlab.local'],
          limits: { ...DEFAULT_SMTP_LIMITS, textLineBytesMax: 2000 },
        };
        const sink = new CheckingSink(config.limits.messageBytesMax);
        const opened = openSession(config);
        const replies: string[] = [];
        for (const chunk of cut(applyLineMutations(lines, []), fractions)) {
          replies.push(...receive(opened.state, config, chunk, sink).replies);
        }
        const messages = lines.filter((line) => line === 'DATA').length;
        assert.equal(sink.commits, messages, 'every message committed');
        assert.equal(replies.at(-1)?.slice(0, 3), '221', 'QUIT answered last');
        assert.ok(
          replies.every((reply) => /^[23]/.test(reply)),
          `only positive replies: ${replies.filter((reply) => !/^[23]/.test(reply)).join('')}`,
        );
      }),
      { seed: 5322, numRuns: Math.min(FUZZ_RUNS, 500) },
    );
  });
});
