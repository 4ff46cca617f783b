/**
 * Goal: the reply parser returns the same replies however the bytes are split (single and
 * multi-line replies, CRLF or bare LF, bare codes), keeps only plain data between feeds (a
 * structured clone mid-stream continues exactly), and breaks with a typed error, for good, on a
 * line over 4 KiB, a reply over 100 lines, or a line that is no reply line.
 * Method: fast-check with fixed seeds generates replies, renders them, and feeds the bytes in
 * random chunk sizes (undici's split-data fuzzing); hand-written cases cover the errors.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  createSmtpReplyState,
  feedSmtpReplies,
  SMTP_REPLY_LINE_BYTES_MAX,
  SMTP_REPLY_LINES_MAX,
  type SmtpReply,
  SmtpReplyError,
  type SmtpReplyState,
} from './smtp-reply.ts';

const bytes = (text: string): Uint8Array => Buffer.from(text, 'latin1');

/** Renders a reply as a server sends it. */
function render(reply: SmtpReply, lineEnd: string): string {
  return reply.lines
    .map((line, k) => {
      const last = k === reply.lines.length - 1;
      const separator = last && line === '' ? '' : last ? ' ' : '-';
      return `${reply.code}${separator}${line}${lineEnd}`;
    })
    .join('');
}

/** Feeds `data` in pieces of the given sizes (cycled), cloning the state between feeds. */
function feedSplit(data: Uint8Array, sizes: number[]): SmtpReply[] {
  let state: SmtpReplyState = createSmtpReplyState();
  const replies: SmtpReply[] = [];
  for (let offset = 0, k = 0; offset < data.byteLength; k++) {
    const size = sizes[k % sizes.length]!;
    replies.push(...feedSmtpReplies(state, data.subarray(offset, offset + size)));
    offset += size;
    state = structuredClone(state);
  }
  assert.equal(state.partial, '', 'nothing left over');
  assert.equal(state.code, null, 'no reply left open');
  return replies;
}

/** Asserts that feeding `text` throws an `SmtpReplyError` with `code`, then again on any feed. */
function assertBreaks(text: string, code: string, message: RegExp): void {
  const state = createSmtpReplyState();
  const check = (error: unknown): boolean => {
    assert.ok(error instanceof SmtpReplyError, 'an SmtpReplyError');
    assert.equal(error.code, code, 'its code');
    assert.match(error.message, message, 'its message');
    return true;
  };
  assert.throws(() => feedSmtpReplies(state, bytes(text)), check, `${code} is thrown`);
  assert.throws(() => feedSmtpReplies(state, bytes('250 ok\r\n')), check, 'and stays thrown');
  assert.ok(JSON.stringify(state).length < 500, 'a broken state holds nothing large');
}

const replyArbitrary: fc.Arbitrary<SmtpReply> = fc
  .tuple(
    fc.constantFrom(220, 221, 250, 251, 354, 421, 451, 452, 500, 550, 552, 554),
    fc.array(fc.stringMatching(/^[ -~]{0,60}$/), { minLength: 1, maxLength: 8 }),
  )
  .map(([code, lines]) => ({ code, lines }));

describe('smtp reply parser', () => {
  it('parses one-line and multi-line replies', () => {
    const state = createSmtpReplyState();
    const text =
      '220 mail.xenlab.local ESMTP\r\n' +
      '250-mail.xenlab.local\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n' +
      '354\r\n' +
      '250 2.0.0 Ok: queued\n';
    assert.deepEqual(
      feedSmtpReplies(state, bytes(text)),
      [
        { code: 220, lines: ['mail.xenlab.local ESMTP'] },
        { code: 250, lines: ['mail.xenlab.local', 'PIPELINING', 'SIZE 10240000', '8BITMIME'] },
        { code: 354, lines: [''] },
        { code: 250, lines: ['2.0.0 Ok: queued'] },
      ],
      'four replies',
    );
    assert.deepEqual(feedSmtpReplies(state, bytes('221 Bye')), [], 'no line end yet');
    assert.deepEqual(feedSmtpReplies(state, bytes('\r')), [], 'CR alone ends nothing');
    assert.deepEqual(feedSmtpReplies(state, bytes('\n')), [{ code: 221, lines: ['Bye'] }], 'LF');
  });

  it('returns the same replies however the bytes are split, across clones', () => {
    fc.assert(
      fc.property(
        fc.array(replyArbitrary, { minLength: 1, maxLength: 6 }),
        fc.constantFrom('\r\n', '\n'),
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 10 }),
        (replies, lineEnd, sizes) => {
          const data = bytes(replies.map((reply) => render(reply, lineEnd)).join(''));
          assert.deepEqual(feedSplit(data, sizes), replies, 'split feed');
          assert.deepEqual(feedSplit(data, [data.byteLength]), replies, 'one feed');
        },
      ),
      { seed: 0x5a7e, numRuns: 200 },
    );
  });

  it('accepts a line of exactly 4 KiB, split anywhere', () => {
    const text = 'x'.repeat(SMTP_REPLY_LINE_BYTES_MAX - 4);
    const data = bytes(`250 ${text}\r\n`);
    for (const size of [1, 7, SMTP_REPLY_LINE_BYTES_MAX, SMTP_REPLY_LINE_BYTES_MAX + 1]) {
      assert.deepEqual(feedSplit(data, [size]), [{ code: 250, lines: [text] }], `size ${size}`);
    }
  });

  it('breaks on a line over 4 KiB, before buffering more than one line', () => {
    const long = `250 ${'y'.repeat(SMTP_REPLY_LINE_BYTES_MAX)}`;
    assertBreaks(`${long}\r\n`, 'SMTP_REPLY_LINE_TOO_LONG', /4100 B; at most 4096 B/);
    assertBreaks(
      long.slice(0, SMTP_REPLY_LINE_BYTES_MAX + 2),
      'SMTP_REPLY_LINE_TOO_LONG',
      /4098 B without a line end/,
    );
    // Fed a byte at a time, the bound holds too.
    const state = createSmtpReplyState();
    assert.throws(() => {
      for (const byte of bytes(`${long}${'z'.repeat(100)}`)) {
        feedSmtpReplies(state, Uint8Array.of(byte));
        assert.ok(state.partial.length <= SMTP_REPLY_LINE_BYTES_MAX + 1, 'partial line bounded');
      }
    }, SmtpReplyError);
  });

  it('breaks on a reply of more than 100 lines', () => {
    const lines = '250-x\r\n'.repeat(SMTP_REPLY_LINES_MAX);
    assert.equal(
      feedSmtpReplies(createSmtpReplyState(), bytes(`${'250-x\r\n'.repeat(99)}250 x\r\n`)).length,
      1,
      '100 lines are fine',
    );
    assertBreaks(`${lines}250 x\r\n`, 'SMTP_REPLY_TOO_MANY_LINES', /more than 100 lines/);
  });

  it('breaks on lines that are not reply lines', () => {
    for (const [line, message] of [
      ['hello\r\n', /not a reply line: "hello"/],
      ['25 ok\r\n', /not a reply line/],
      ['2500 ok\r\n', /not a reply line/],
      ['650 ok\r\n', /not a reply line/],
      ['260 ok\r\n', /not a reply line/],
      ['250+ok\r\n', /not a reply line/],
      ['\r\n', /not a reply line: ""/],
      ['250-a\r\n251 b\r\n', /code 251 inside a 250 reply/],
    ] as const) {
      assertBreaks(line, 'SMTP_REPLY_MALFORMED', message);
    }
  });
});
