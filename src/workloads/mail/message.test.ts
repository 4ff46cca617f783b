/**
 * Goal: Mclient's mails are well-formed RFC 5322 / MIME messages whose attachment decodes to
 * exactly the generated file (and its SHA-256), with the paper's envelope and subject; the
 * generators are deterministic and random access (any range equals the same range of a
 * sequential generation); `messageLength` is exact; no line starts with '.', so sending needs no
 * dot-stuffing.
 * Method: whole messages parsed with mailparser (a real MIME parser) and split by hand against
 * Node's own base64 encoder; fast-check with fixed seeds picks specs and ranges. The last test
 * measures generation speed and reports it as a diagnostic (no threshold: the machine is shared).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { simpleParser } from 'mailparser';
import {
  ATTACHMENT_BLOCK_BYTES,
  attachmentFileName,
  attachmentSha256,
  base64BodyLength,
  fillAttachment,
  fillMessage,
  MAIL_DOMAIN_DEFAULT,
  type MailSpec,
  mailDate,
  mailFrom,
  mailNumber,
  mailSpecAt,
  mailTo,
  messageId,
  messageLength,
} from './message.ts';

function spec(overrides: Partial<MailSpec> = {}): MailSpec {
  return {
    i: 2,
    j: 3,
    n: 4,
    fileSizeBytes: 1000,
    seed: 7,
    domain: MAIL_DOMAIN_DEFAULT,
    ...overrides,
  };
}

/** The whole message in one call. */
function wholeMessage(mail: MailSpec): Buffer {
  const out = Buffer.alloc(messageLength(mail));
  assert.equal(fillMessage(mail, 0, out), out.byteLength, 'fills the whole message');
  return out;
}

/** The whole file in one call. */
function wholeFile(mail: MailSpec): Buffer {
  const out = Buffer.alloc(mail.fileSizeBytes);
  assert.equal(fillAttachment(mail, 0, out), mail.fileSizeBytes, 'fills the whole file');
  return out;
}

/** The message generated front to back in `chunkBytes` pieces, as the client sends it. */
function sequentialMessage(mail: MailSpec, chunkBytes: number): Buffer {
  const length = messageLength(mail);
  const out = Buffer.alloc(length);
  for (let offset = 0; offset < length; ) {
    offset += fillMessage(mail, offset, out.subarray(offset, offset + chunkBytes));
  }
  return out;
}

const specArbitrary = fc.record({
  i: fc.integer({ min: 1, max: 5 }),
  j: fc.integer({ min: 1, max: 5 }),
  n: fc.constant(5),
  fileSizeBytes: fc.oneof(
    fc.integer({ min: 0, max: 200 }),
    fc.integer({ min: 0, max: 300_000 }),
    fc.constantFrom(0, 1, 2, 3, 56, 57, 58, 114, ATTACHMENT_BLOCK_BYTES, 1_000_000),
  ),
  seed: fc.integer({ min: 0, max: 0xffff_ffff }),
  domain: fc.constantFrom(MAIL_DOMAIN_DEFAULT, 'example.org', 'a'),
});

describe('mail message', () => {
  it('names sender, recipient, number, id and file after the i/j loop', () => {
    const mail = spec({ i: 3, j: 7, n: 20, seed: 42 });
    assert.equal(mailNumber(mail), 47, '(3 - 1) x 20 + 7');
    assert.equal(mailFrom(mail), 'test3.user@xenlab.local', 'sender');
    assert.equal(mailTo(mail), 'test7.user@xenlab.local', 'recipient');
    assert.equal(messageId(mail), '<xenvmc-42-3-7@xenlab.local>', 'message id');
    assert.equal(attachmentFileName(mail), 'file-3-7.bin', 'file name');
    const loop = { n: 4, fileSizeBytes: 10, seed: 1, domain: 'x.y' };
    const numbers: number[] = [];
    for (let i = 1; i <= 4; i++) {
      for (let j = 1; j <= 4; j++) {
        const number = mailNumber({ ...loop, i, j });
        numbers.push(number);
        assert.deepEqual(mailSpecAt(number, loop), { ...loop, i, j }, `mailSpecAt(${number})`);
      }
    }
    assert.deepEqual(
      numbers,
      Array.from({ length: 16 }, (_, k) => k + 1),
      'loop order is 1..16',
    );
  });

  it('parses with mailparser: headers as sent, the attachment equal to the file', async () => {
    for (const fileSizeBytes of [0, 1, 2, 3, 56, 57, 58, 1000, 70_000, 1_000_000]) {
      const mail = spec({ fileSizeBytes });
      const message = wholeMessage(mail);
      const parsed = await simpleParser(message);
      const label = `file of ${fileSizeBytes} B`;
      assert.equal(parsed.subject, 'This is test', `${label}: subject`);
      assert.equal(parsed.messageId, messageId(mail), `${label}: message id`);
      assert.equal(parsed.from?.value[0]?.address, mailFrom(mail), `${label}: from`);
      const to = Array.isArray(parsed.to) ? parsed.to[0] : parsed.to;
      assert.equal(to?.value[0]?.address, mailTo(mail), `${label}: to`);
      assert.equal(parsed.date?.toISOString(), '2019-01-01T00:00:13.000Z', `${label}: date`);
      assert.match(parsed.text ?? '', /^Mail 7 of 16, from test2 to test3/, `${label}: text`);
      assert.equal(parsed.attachments.length, 1, `${label}: one attachment`);
      const attachment = parsed.attachments[0]!;
      assert.equal(attachment.filename, attachmentFileName(mail), `${label}: file name`);
      assert.equal(attachment.contentType, 'application/octet-stream', `${label}: content type`);
      assert.equal(attachment.contentDisposition, 'attachment', `${label}: disposition`);
      assert.ok(attachment.content.equals(wholeFile(mail)), `${label}: attachment bytes`);
      const digest = createHash('sha256').update(attachment.content).digest('hex');
      assert.equal(digest, attachmentSha256(mail), `${label}: sha256`);
    }
  });

  it('encodes the file as base64 in 76-character lines, as Node encodes it', () => {
    fc.assert(
      fc.property(specArbitrary, (mail) => {
        const text = wholeMessage(mail).toString('latin1');
        const headerEnd = text.lastIndexOf('Content-Transfer-Encoding: base64\r\n\r\n');
        assert.ok(headerEnd > 0, 'the attachment part has its headers');
        const bodyStart = headerEnd + 'Content-Transfer-Encoding: base64\r\n\r\n'.length;
        const boundary = `=_xenvmc_${mail.seed}_${mail.i}_${mail.j}`;
        const closing = `${mail.fileSizeBytes === 0 ? '\r\n' : ''}--${boundary}--\r\n`;
        assert.ok(text.endsWith(closing), 'the closing boundary ends the message');
        const body = text.slice(bodyStart, text.length - closing.length);
        assert.equal(body.length, base64BodyLength(mail.fileSizeBytes), 'body length');
        const expected = (
          wholeFile(mail)
            .toString('base64')
            .match(/.{1,76}/g) ?? []
        )
          .map((line) => `${line}\r\n`)
          .join('');
        assert.equal(body, expected, 'body equals Node base64 wrapped at 76');
      }),
      { seed: 0xba5e64, numRuns: 60 },
    );
  });

  it('has CRLF line ends only, short lines, and no line starting with a dot', () => {
    fc.assert(
      fc.property(specArbitrary, (mail) => {
        const text = wholeMessage(mail).toString('latin1');
        assert.ok(text.endsWith('\r\n'), 'ends with CRLF, so the end of data is just .CRLF');
        const lines = text.slice(0, -2).split('\r\n');
        for (const line of lines) {
          assert.ok(!line.startsWith('.'), `no line starts with '.': ${line.slice(0, 40)}`);
          assert.ok(!/[\r\n]/.test(line), 'no bare CR or LF');
          assert.ok(line.length <= 998, `line of ${line.length} <= 998 characters`);
        }
        assert.ok(!/[^\x20-\x7e\r\n]/.test(text), 'printable ASCII only');
      }),
      { seed: 0xd07, numRuns: 60 },
    );
  });

  it('fills any range of a message exactly as a sequential generation does', () => {
    fc.assert(
      fc.property(
        specArbitrary,
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.integer({ min: 0, max: 200_000 }),
        fc.integer({ min: 1, max: 70_000 }),
        (mail, startFraction, lengthBytes, chunkBytes) => {
          const reference = sequentialMessage(mail, chunkBytes);
          assert.equal(reference.byteLength, messageLength(mail), 'messageLength is exact');
          const offset = Math.floor(startFraction * reference.byteLength);
          const target = Buffer.alloc(lengthBytes, 0xee);
          const count = fillMessage(mail, offset, target);
          const expected = Math.min(lengthBytes, reference.byteLength - offset);
          assert.equal(count, expected, 'count: fewer only at the end');
          assert.ok(
            target.subarray(0, count).equals(reference.subarray(offset, offset + count)),
            `bytes [${offset}, ${offset + count}) equal`,
          );
          assert.ok(
            target.subarray(count).every((byte) => byte === 0xee),
            'nothing past count',
          );
        },
      ),
      { seed: 0x7a4d0, numRuns: 80 },
    );
  });

  it('fills any range of a file exactly as a sequential generation does', () => {
    fc.assert(
      fc.property(
        specArbitrary,
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.integer({ min: 0, max: 3 * ATTACHMENT_BLOCK_BYTES }),
        (mail, startFraction, lengthBytes) => {
          const reference = wholeFile(mail);
          const offset = Math.floor(startFraction * mail.fileSizeBytes);
          const target = Buffer.alloc(lengthBytes);
          const count = fillAttachment(mail, offset, target);
          assert.equal(count, Math.min(lengthBytes, mail.fileSizeBytes - offset), 'count');
          assert.ok(
            target.subarray(0, count).equals(reference.subarray(offset, offset + count)),
            `file bytes [${offset}, ${offset + count}) equal`,
          );
        },
      ),
      { seed: 0xf11e, numRuns: 100 },
    );
  });

  it('gives every file and every block its own bytes, the same on every call', () => {
    const base = spec({ fileSizeBytes: 4 * ATTACHMENT_BLOCK_BYTES });
    const variants = [
      base,
      { ...base, seed: 8 },
      { ...base, i: 3, j: 2 },
      { ...base, i: 2, j: 4 },
      { ...base, n: 5 },
    ];
    const heads = new Set<string>();
    for (const variant of variants) {
      const file = wholeFile(variant);
      assert.ok(file.equals(wholeFile(variant)), 'deterministic');
      const blocks = new Set<string>();
      for (let offset = 0; offset < file.byteLength; offset += ATTACHMENT_BLOCK_BYTES) {
        blocks.add(file.subarray(offset, offset + 16).toString('hex'));
      }
      assert.equal(blocks.size, 4, 'four distinct blocks');
      heads.add(file.subarray(0, 16).toString('hex'));
    }
    // n does not enter the file (only the text part), so base and { n: 5 } share their file.
    assert.equal(heads.size, 4, 'distinct (seed, i, j) give distinct files');
    assert.equal(attachmentSha256(spec({ fileSizeBytes: 0 })), createHash('sha256').digest('hex'));
  });

  it('dates mails from the seed, one second apart in loop order', () => {
    assert.equal(mailDate(spec({ i: 1, j: 1, seed: 0 })), 'Tue, 01 Jan 2019 00:00:00 +0000');
    assert.equal(mailDate(spec({ i: 1, j: 2, seed: 0 })), 'Tue, 01 Jan 2019 00:00:01 +0000');
    assert.equal(
      mailDate(spec({ i: 1, j: 1, seed: 86_400 * 40 + 3661 })),
      'Sun, 10 Feb 2019 01:01:01 +0000',
    );
  });

  it('generates fast enough to feed a 1 Gbit/s link (measured, reported)', (t) => {
    const mail = spec({ n: 20, fileSizeBytes: 3_000_000 });
    const chunk = new Uint8Array(64 * 1024);
    const length = messageLength(mail);
    /** Best of five passes (the first ones warm the JIT up), in MB/s. */
    const bestMBps = (bytes: number, fill: (offset: number) => number): number => {
      let best = 0;
      for (let pass = 0; pass < 5; pass++) {
        const startedMs = performance.now();
        for (let offset = 0; offset < bytes; ) offset += fill(offset);
        best = Math.max(best, bytes / 1e3 / (performance.now() - startedMs));
      }
      return best;
    };
    const messageMBps = bestMBps(length, (offset) => fillMessage(mail, offset, chunk));
    const fileMBps = bestMBps(mail.fileSizeBytes, (offset) => fillAttachment(mail, offset, chunk));
    t.diagnostic(`message ${messageMBps.toFixed(0)} MB/s, file ${fileMBps.toFixed(0)} MB/s`);
    assert.ok(messageMBps > 0 && fileMBps > 0, 'both measured');
  });
});
