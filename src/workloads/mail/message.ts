/**
 * The mails Mclient sends, generated deterministically: the paper's loop
 * `for i in 1..n: for j in 1..n: mail -s "This is test" -a FILE test$j.user@xenlab.local`, run
 * as user test$i, gives n x n mails, each with a file of `fileSizeBytes` attached. Every byte of
 * a mail follows from its `MailSpec`, so the client never holds a whole message (up to 90 MB
 * encoded) and a checker can rebuild any mail, or just its attachment's SHA-256, without one.
 *
 * Method. A message is three parts laid end to end (CRLF line ends throughout):
 *
 * ```
 * offset 0
 * | prefix: headers, preamble, the text/plain part, the attachment part's headers, blank line |
 * | body: the file in base64, 76 characters (57 raw bytes) + CRLF per line, the last shorter   |
 * | suffix: the closing boundary `--=_xenvmc_...--` CRLF                                       |
 *                                                                          offset messageLength
 * ```
 *
 * Prefix and suffix are short strings (about 700 bytes), rebuilt from the spec and cached for
 * the last spec asked about. Body line k encodes raw bytes [57k, 57k + 57) of the file, so any
 * byte offset maps to a line and the lines map to file offsets: `fillMessage` is random access
 * without generating from the start, which lets the client send a mail chunk by chunk and
 * resume after a migration with nothing but an offset in its state.
 *
 * File content: pseudo-random, in 4 KiB blocks. Block b of file (seed, i, j) is the output of an
 * xorshift128 (Marsaglia 2003) whose four state words are bijective 32-bit hashes (murmur3's
 * finaliser) of seed, (i, j), b and their mix, so distinct files and blocks start from distinct
 * states. Why 4 KiB blocks: random access regenerates at most one block's head before the first
 * byte asked for; a 64 KiB block would cost up to 16 times more per unaligned call, and smaller
 * blocks add hashing for nothing. Words are stored in platform byte order (little-endian on
 * every machine we run), like the streamer's chunks.
 *
 * Speed (64 KiB calls, one core of this machine when idle): about 1.6 GB/s of file bytes and
 * 490 MB/s of message bytes, four times what a 1 Gbit/s link carries; under the load of a
 * full test run, a third of that. The last test of `message.test.ts` measures it again. The
 * base64 encoder is a JS loop over a 12-bit table (see `PAIR_FIRST` for the alternatives).
 *
 * No line of a message starts with '.', so SMTP's dot-stuffing (RFC 5321 4.5.2) never changes
 * it: header lines start with a field name, the text is fixed, base64 has no '.', and boundary
 * lines start with '-'. The client sends the message bytes as they are, then `.` CRLF.
 *
 * Non-goals: header folding (every header line stays under 998 characters for the domains
 * `assertMailSpec` allows); other encodings than base64; any MIME structure but this one.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

/** The paper's mail domain. */
export const MAIL_DOMAIN_DEFAULT = 'xenlab.local';
/** The paper's `mail -s` subject. */
export const MAIL_SUBJECT = 'This is test';
/** Largest attached file: 64 MiB, well above the paper's 3 MB; its message is about 87 MiB. */
export const ATTACHMENT_BYTES_MAX = 64 * 1024 * 1024;
/** Raw file bytes per base64 line (RFC 2045 6.8: lines of at most 76 characters). */
export const BASE64_LINE_RAW_BYTES = 57;
/** Characters of a full base64 line, without its CRLF. */
export const BASE64_LINE_CHARS = 76;
/** A full base64 line with its CRLF. */
const BASE64_LINE_BYTES = BASE64_LINE_CHARS + 2;
/** Bytes per independently seeded block of a file (see the header on why 4 KiB). */
export const ATTACHMENT_BLOCK_BYTES = 4096;
/** Largest n of the i/j loop; i and j are hashed as 16-bit halves of one word. */
export const MAIL_LOOP_N_MAX = 65_535;
/** The dates of a seed's mails start at 2019-01-01T00:00:00Z plus up to a year of seconds. */
const DATE_BASE_MS = Date.UTC(2019, 0, 1);
const YEAR_SECONDS = 365 * 86_400;
/** One DNS label: letters, digits and inner hyphens. */
const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?';
/** A DNS name of at most 200 characters, short enough to keep header lines short. */
const DOMAIN_PATTERN = new RegExp(`^(?=.{1,200}$)${LABEL}(?:\\.${LABEL})*$`);

/** One mail of the i/j loop: sent by test`i` to test`j`. */
export interface MailSpec {
  /** Sender number, 1..n. */
  i: number;
  /** Recipient number, 1..n. */
  j: number;
  /** The loop's size: n x n mails. */
  n: number;
  /** Size of the attached file in bytes, 0..ATTACHMENT_BYTES_MAX. */
  fileSizeBytes: number;
  /** Seed of the file contents and the dates, an unsigned 32-bit integer. */
  seed: number;
  /** Mail domain, e.g. 'xenlab.local'. */
  domain: string;
}

/** Checks a spec; a bad one is a programmer error (Mclient validates its parameters first). */
export function assertMailSpec(spec: MailSpec): void {
  const { i, j, n, fileSizeBytes, seed, domain } = spec;
  assert.ok(Number.isInteger(n) && n >= 1 && n <= MAIL_LOOP_N_MAX, `n ${n} in 1..65535`);
  assert.ok(Number.isInteger(i) && i >= 1 && i <= n, `i ${i} in 1..${n}`);
  assert.ok(Number.isInteger(j) && j >= 1 && j <= n, `j ${j} in 1..${n}`);
  assert.ok(
    Number.isInteger(fileSizeBytes) && fileSizeBytes >= 0 && fileSizeBytes <= ATTACHMENT_BYTES_MAX,
    `fileSizeBytes ${fileSizeBytes} in 0..${ATTACHMENT_BYTES_MAX}`,
  );
  assert.ok(Number.isInteger(seed) && seed >= 0 && seed <= 0xffff_ffff, `seed ${seed} is a u32`);
  assert.ok(isMailDomain(domain), `domain '${domain}' is a DNS name`);
}

/** True for a domain `MailSpec` accepts: a DNS name of at most 200 characters. */
export function isMailDomain(domain: unknown): domain is string {
  return typeof domain === 'string' && DOMAIN_PATTERN.test(domain);
}

/** 1-based position of the mail in the i/j loop: (i - 1) n + j. */
export function mailNumber(spec: MailSpec): number {
  return (spec.i - 1) * spec.n + spec.j;
}

/** The spec of the loop's mail `number` (1-based), the inverse of `mailNumber`. */
export function mailSpecAt(
  number: number,
  loop: { n: number; fileSizeBytes: number; seed: number; domain: string },
): MailSpec {
  assert.ok(
    Number.isInteger(number) && number >= 1 && number <= loop.n * loop.n,
    `mail number ${number} in 1..${loop.n * loop.n}`,
  );
  const i = Math.floor((number - 1) / loop.n) + 1;
  const j = ((number - 1) % loop.n) + 1;
  return { i, j, ...loop };
}

/** Envelope and header sender: `test<i>.user@<domain>`. */
export function mailFrom(spec: MailSpec): string {
  return `test${spec.i}.user@${spec.domain}`;
}

/** Envelope and header recipient: `test<j>.user@<domain>`. */
export function mailTo(spec: MailSpec): string {
  return `test${spec.j}.user@${spec.domain}`;
}

/** Unique per (seed, i, j): the checker finds duplicates and losses by it. */
export function messageId(spec: MailSpec): string {
  return `<xenvmc-${spec.seed}-${spec.i}-${spec.j}@${spec.domain}>`;
}

/** The attached file's name, as `mail -a` puts it in the part's headers. */
export function attachmentFileName(spec: MailSpec): string {
  return `file-${spec.i}-${spec.j}.bin`;
}

/**
 * The multipart boundary. `=_` cannot occur in base64 text ('_' is not in its alphabet and '='
 * only pads a line's end), so no body line can be mistaken for it.
 */
function boundaryOf(spec: MailSpec): string {
  return `=_xenvmc_${spec.seed}_${spec.i}_${spec.j}`;
}

const DAY_NAMES = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTH_NAMES = 'Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec'.split(' ');

/**
 * The Date header's value (RFC 5322 3.3): a fixed time from the seed, one second apart per mail
 * in loop order, so the content never depends on when it is sent.
 */
export function mailDate(spec: MailSpec): string {
  const seconds = (spec.seed % YEAR_SECONDS) + mailNumber(spec) - 1;
  const date = new Date(DATE_BASE_MS + seconds * 1000);
  const two = (value: number): string => String(value).padStart(2, '0');
  const day = `${DAY_NAMES[date.getUTCDay()]}, ${two(date.getUTCDate())}`;
  const time = [date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds()].map(two).join(':');
  return `${day} ${MONTH_NAMES[date.getUTCMonth()]} ${date.getUTCFullYear()} ${time} +0000`;
}

/** Bytes of the base64 body of a file of `fileSizeBytes`, CRLFs included. */
export function base64BodyLength(fileSizeBytes: number): number {
  const fullLines = Math.floor(fileSizeBytes / BASE64_LINE_RAW_BYTES);
  const restBytes = fileSizeBytes - fullLines * BASE64_LINE_RAW_BYTES;
  return fullLines * BASE64_LINE_BYTES + (restBytes > 0 ? Math.ceil(restBytes / 3) * 4 + 2 : 0);
}

/** The fixed parts of one message, around its base64 body. */
interface MessageLayout {
  readonly key: string;
  readonly prefix: Uint8Array;
  readonly bodyLength: number;
  readonly suffix: Uint8Array;
}

function buildLayout(spec: MailSpec, key: string): MessageLayout {
  assertMailSpec(spec);
  const boundary = boundaryOf(spec);
  const name = attachmentFileName(spec);
  const lines = [
    `Date: ${mailDate(spec)}`,
    `From: ${mailFrom(spec)}`,
    `To: ${mailTo(spec)}`,
    `Subject: ${MAIL_SUBJECT}`,
    `Message-ID: ${messageId(spec)}`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    '',
    'This is a multi-part message in MIME format.',
    '',
    `--${boundary}`,
    'Content-Type: text/plain; charset=us-ascii',
    'Content-Transfer-Encoding: 7bit',
    '',
    `Mail ${mailNumber(spec)} of ${spec.n * spec.n}, from test${spec.i} to test${spec.j}, ` +
      `with a file of ${spec.fileSizeBytes} bytes attached.`,
    '',
    `--${boundary}`,
    `Content-Type: application/octet-stream; name="${name}"`,
    `Content-Disposition: attachment; filename="${name}"`,
    'Content-Transfer-Encoding: base64',
    '',
  ];
  // The CRLF before a boundary belongs to the boundary (RFC 2046 5.1.1): after a non-empty
  // body it is the last base64 line's own CRLF; an empty body needs one of its own.
  const suffix = `${spec.fileSizeBytes === 0 ? '\r\n' : ''}--${boundary}--\r\n`;
  return {
    key,
    prefix: Buffer.from(`${lines.join('\r\n')}\r\n`, 'latin1'),
    bodyLength: base64BodyLength(spec.fileSizeBytes),
    suffix: Buffer.from(suffix, 'latin1'),
  };
}

/** The layout of the last spec asked about: a client asks for one mail's chunks in a row. */
let cachedLayout: MessageLayout | null = null;

function layoutOf(spec: MailSpec): MessageLayout {
  const key = `${spec.seed}/${spec.i}/${spec.j}/${spec.n}/${spec.fileSizeBytes}/${spec.domain}`;
  if (cachedLayout === null || cachedLayout.key !== key) cachedLayout = buildLayout(spec, key);
  return cachedLayout;
}

/** Exact bytes of the whole message (RFC 5322, CRLF line ends), its final CRLF included. */
export function messageLength(spec: MailSpec): number {
  const layout = layoutOf(spec);
  return layout.prefix.byteLength + layout.bodyLength + layout.suffix.byteLength;
}

// ---- the attached file ----------------------------------------------------------------------

/** Murmur3's 32-bit finaliser: a bijection that spreads every input bit over the word. */
function fmix32(value: number): number {
  let h = value | 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}

/** One block's words, generated here and copied out (module scratch: calls are synchronous). */
const blockWords = new Int32Array(ATTACHMENT_BLOCK_BYTES / 4);
const blockBytes = new Uint8Array(blockWords.buffer);

/** Fills `blockWords` with block `block` of the file whose key words are `seedWord`, `pairWord`. */
function generateBlock(seedWord: number, pairWord: number, block: number): void {
  let x = seedWord;
  let y = pairWord;
  let z = fmix32(block ^ 0x3c6ef372);
  let w = fmix32(x ^ y ^ z ^ 0x5851f42d);
  if ((x | y | z | w) === 0) w = 1; // xorshift128 must not start from all zeros.
  const words = blockWords;
  for (let k = 0; k < words.length; k++) {
    const t = x ^ (x << 11);
    x = y;
    y = z;
    z = w;
    w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
    words[k] = w;
  }
}

/**
 * Writes bytes [offset, offset + target.length) of the attached file into `target` (fewer at
 * the file's end) and returns how many. Deterministic and random access.
 */
export function fillAttachment(spec: MailSpec, offset: number, target: Uint8Array): number {
  assert.ok(
    Number.isInteger(offset) && offset >= 0 && offset <= spec.fileSizeBytes,
    `attachment offset ${offset} in 0..${spec.fileSizeBytes}`,
  );
  const count = Math.min(target.byteLength, spec.fileSizeBytes - offset);
  const seedWord = fmix32(spec.seed ^ 0x9e3779b9);
  const pairWord = fmix32(((spec.i << 16) | spec.j) ^ 0x7f4a7c15);
  let done = 0;
  while (done < count) {
    const position = offset + done;
    const block = Math.floor(position / ATTACHMENT_BLOCK_BYTES);
    const inBlock = position - block * ATTACHMENT_BLOCK_BYTES;
    const take = Math.min(ATTACHMENT_BLOCK_BYTES - inBlock, count - done);
    generateBlock(seedWord, pairWord, block);
    target.set(
      inBlock === 0 && take === ATTACHMENT_BLOCK_BYTES
        ? blockBytes
        : blockBytes.subarray(inBlock, inBlock + take),
      done,
    );
    done += take;
  }
  return count;
}

/** Hex SHA-256 of the whole attached file, for the checker. */
export function attachmentSha256(spec: MailSpec): string {
  assertMailSpec(spec);
  const hash = createHash('sha256');
  const scratch = new Uint8Array(256 * 1024);
  for (let offset = 0; offset < spec.fileSizeBytes; ) {
    const count = fillAttachment(spec, offset, scratch);
    hash.update(scratch.subarray(0, count));
    offset += count;
  }
  return hash.digest('hex');
}

// ---- the message ----------------------------------------------------------------------------

const BASE64_ALPHABET = Uint8Array.from(
  'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/',
  (char) => char.charCodeAt(0),
);
/**
 * Two base64 characters per 12 bits: measured at about 850 MB/s of output against 640 MB/s for
 * one 6-bit lookup per character, and 560 MB/s for Node's native encoder plus copying each
 * line out of its string (the CRLFs force that copy).
 */
const PAIR_FIRST = new Uint8Array(4096);
const PAIR_SECOND = new Uint8Array(4096);
for (let value = 0; value < 4096; value++) {
  PAIR_FIRST[value] = BASE64_ALPHABET[value >>> 6]!;
  PAIR_SECOND[value] = BASE64_ALPHABET[value & 63]!;
}
const PAD = 0x3d; // '='
const CR = 0x0d;
const LF = 0x0a;
/** Lines encoded per batch: their raw bytes (57 KiB) are generated in one call. */
const LINES_PER_BATCH = 1024;
const rawScratch = new Uint8Array(LINES_PER_BATCH * BASE64_LINE_RAW_BYTES);
const lineScratch = new Uint8Array(BASE64_LINE_BYTES);

/**
 * Encodes `count` raw bytes (1..57) from `raw[rawStart]` as one base64 line plus CRLF into
 * `out[outStart]`; returns the bytes written.
 */
function encodeLine(
  raw: Uint8Array,
  rawStart: number,
  count: number,
  out: Uint8Array,
  outStart: number,
): number {
  const first = PAIR_FIRST;
  const second = PAIR_SECOND;
  let p = outStart;
  let r = rawStart;
  const wholeEnd = rawStart + count - (count % 3);
  for (; r < wholeEnd; r += 3) {
    const v = (raw[r]! << 16) | (raw[r + 1]! << 8) | raw[r + 2]!;
    const high = v >>> 12;
    const low = v & 4095;
    out[p] = first[high]!;
    out[p + 1] = second[high]!;
    out[p + 2] = first[low]!;
    out[p + 3] = second[low]!;
    p += 4;
  }
  const table = BASE64_ALPHABET;
  const rest = rawStart + count - r;
  if (rest > 0) {
    const v = (raw[r]! << 16) | (rest === 2 ? raw[r + 1]! << 8 : 0);
    out[p] = table[v >>> 18]!;
    out[p + 1] = table[(v >>> 12) & 63]!;
    out[p + 2] = rest === 2 ? table[(v >>> 6) & 63]! : PAD;
    out[p + 3] = PAD;
    p += 4;
  }
  out[p] = CR;
  out[p + 1] = LF;
  return p + 2 - outStart;
}

/** Writes body bytes [from, to) (offsets inside the base64 body) at `target[targetStart]`. */
function fillBody(
  spec: MailSpec,
  from: number,
  to: number,
  target: Uint8Array,
  targetStart: number,
): void {
  const lastLine = Math.ceil(to / BASE64_LINE_BYTES); // exclusive
  for (
    let batchLine = Math.floor(from / BASE64_LINE_BYTES);
    batchLine < lastLine;
    batchLine += LINES_PER_BATCH
  ) {
    const lineCount = Math.min(LINES_PER_BATCH, lastLine - batchLine);
    const rawOffset = batchLine * BASE64_LINE_RAW_BYTES;
    const rawCount = fillAttachment(
      spec,
      rawOffset,
      rawScratch.subarray(0, lineCount * BASE64_LINE_RAW_BYTES),
    );
    for (let k = 0; k < lineCount; k++) {
      const lineStart = (batchLine + k) * BASE64_LINE_BYTES; // body offset of the line
      const lineRaw = Math.min(BASE64_LINE_RAW_BYTES, rawCount - k * BASE64_LINE_RAW_BYTES);
      const start = k * BASE64_LINE_RAW_BYTES;
      if (lineStart >= from && lineStart + BASE64_LINE_BYTES <= to) {
        encodeLine(rawScratch, start, lineRaw, target, targetStart + lineStart - from);
      } else {
        // A line cut by the range's start or end: encode it whole, copy the part asked for.
        const length = encodeLine(rawScratch, start, lineRaw, lineScratch, 0);
        const copyFrom = Math.max(from, lineStart);
        const copyTo = Math.min(to, lineStart + length);
        target.set(
          lineScratch.subarray(copyFrom - lineStart, copyTo - lineStart),
          targetStart + copyFrom - from,
        );
      }
    }
  }
}

/** Copies the part of `part` (placed at message offset `partStart`) inside [from, to). */
function copyPart(
  part: Uint8Array,
  partStart: number,
  range: { from: number; to: number },
  target: Uint8Array,
): void {
  const from = Math.max(range.from, partStart);
  const to = Math.min(range.to, partStart + part.byteLength);
  if (from >= to) return;
  target.set(part.subarray(from - partStart, to - partStart), from - range.from);
}

/**
 * Writes message bytes [offset, offset + target.length) into `target` (fewer at the message's
 * end) and returns how many. Deterministic and random access: the bytes do not depend on which
 * ranges were asked for before.
 */
export function fillMessage(spec: MailSpec, offset: number, target: Uint8Array): number {
  const layout = layoutOf(spec);
  const bodyStart = layout.prefix.byteLength;
  const suffixStart = bodyStart + layout.bodyLength;
  const length = suffixStart + layout.suffix.byteLength;
  assert.ok(
    Number.isInteger(offset) && offset >= 0 && offset <= length,
    `message offset ${offset} in 0..${length}`,
  );
  const count = Math.min(target.byteLength, length - offset);
  const range = { from: offset, to: offset + count };
  copyPart(layout.prefix, 0, range, target);
  const bodyFrom = Math.max(range.from, bodyStart);
  const bodyTo = Math.min(range.to, suffixStart);
  if (bodyFrom < bodyTo) {
    fillBody(spec, bodyFrom - bodyStart, bodyTo - bodyStart, target, bodyFrom - offset);
  }
  copyPart(layout.suffix, suffixStart, range, target);
  return count;
}
