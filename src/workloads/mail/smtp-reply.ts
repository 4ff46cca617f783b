/**
 * The client side of SMTP replies (RFC 5321 4.2), sans-I/O: `feedSmtpReplies(state, bytes)`
 * takes received bytes split anywhere and returns the replies they complete, keeping the rest in
 * a plain-data state (it lives in a guest program's state and crosses migrations).
 *
 * A reply is one or more lines with the same three-digit code; every line but the last has a
 * '-' after the code, the last a space (or nothing: a bare `250` CRLF, which servers send):
 *
 * ```
 * 250-mail.xenlab.local greets vm-client.xenlab.local
 * 250-PIPELINING
 * 250 SIZE 10240000
 * ```
 * gives `{ code: 250, lines: ['mail.xenlab.local greets ...', 'PIPELINING', 'SIZE 10240000'] }`.
 *
 * Bounds: a line may hold `SMTP_REPLY_LINE_BYTES_MAX` bytes, a reply `SMTP_REPLY_LINES_MAX`
 * lines; beyond either, or on a line that is no reply line, `feedSmtpReplies` throws an
 * `SmtpReplyError` and the state stays broken (every later feed throws the same), since the
 * stream is no longer in step with the dialogue. So the state holds at most one line and one
 * reply's lines whatever the server sends.
 *
 * Lenient where servers are: a bare LF ends a line too (the CR is dropped if present), and
 * bytes are read as Latin-1, so any octet is kept as one character.
 */
import { TestbedError } from '../../core/errors.ts';

/**
 * RFC 5321 4.5.3.1.5 allows 512 octets per reply line; real servers stay below that. 4 KiB
 * leaves room for odd servers and still bounds what a broken peer can make us buffer.
 */
export const SMTP_REPLY_LINE_BYTES_MAX = 4096;
/** Lines of one reply: an EHLO reply lists about ten extensions; 100 is far above any. */
export const SMTP_REPLY_LINES_MAX = 100;

/** One complete reply. */
export interface SmtpReply {
  /** The three-digit code, e.g. 250. */
  code: number;
  /** Each line's text after the code and its separator, without the line end. */
  lines: string[];
}

/** What the parser keeps between feeds: plain structured-clone data. */
export interface SmtpReplyState {
  /** Bytes of the line not yet ended, as Latin-1 text (at most one line). */
  partial: string;
  /** The code of the multi-line reply being read, or null between replies. */
  code: number | null;
  /** Lines of that reply read so far. */
  lines: string[];
  /** Why the stream broke; every later feed throws it again. Null while well-formed. */
  broken: { code: SmtpReplyErrorCode; message: string } | null;
}

/**
 * - `SMTP_REPLY_LINE_TOO_LONG`: a line over `SMTP_REPLY_LINE_BYTES_MAX` bytes.
 * - `SMTP_REPLY_TOO_MANY_LINES`: a reply over `SMTP_REPLY_LINES_MAX` lines.
 * - `SMTP_REPLY_MALFORMED`: a line that does not start with a code and a separator, or a
 *   continuation line with another code.
 */
export type SmtpReplyErrorCode =
  | 'SMTP_REPLY_LINE_TOO_LONG'
  | 'SMTP_REPLY_TOO_MANY_LINES'
  | 'SMTP_REPLY_MALFORMED';

/** The server sent something that is not a bounded, well-formed reply. */
export class SmtpReplyError extends TestbedError<SmtpReplyErrorCode> {
  constructor(code: SmtpReplyErrorCode, message: string) {
    super(code, message);
    this.name = 'SmtpReplyError';
  }
}

/** A fresh parser state, for a new connection. */
export function createSmtpReplyState(): SmtpReplyState {
  return { partial: '', code: null, lines: [], broken: null };
}

/** Reply line: code (first digit 2-5, second 0-5), then '-', ' ' or the end (RFC 5321 4.2). */
const REPLY_LINE = /^([2-5][0-5]\d)(?:([ -])(.*))?$/s;

/**
 * Adds `bytes` to the stream and returns the replies they complete, in order. Throws
 * `SmtpReplyError` when the stream breaks a bound or the grammar (see the header).
 */
export function feedSmtpReplies(state: SmtpReplyState, bytes: Uint8Array): SmtpReply[] {
  if (state.broken !== null) {
    throw new SmtpReplyError(state.broken.code, state.broken.message);
  }
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  const replies: SmtpReply[] = [];
  let start = 0;
  for (;;) {
    const end = text.indexOf('\n', start);
    if (end < 0) break;
    let line = state.partial + text.slice(start, end);
    state.partial = '';
    start = end + 1;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    const reply = takeLine(state, line);
    if (reply !== null) replies.push(reply);
  }
  const rest = text.slice(start);
  // A line may end with CR before its LF arrives, hence the one extra byte.
  if (state.partial.length + rest.length > SMTP_REPLY_LINE_BYTES_MAX + 1) {
    const length = state.partial.length + rest.length;
    breakStream(
      state,
      'SMTP_REPLY_LINE_TOO_LONG',
      `a reply line reached ${length} B without a line end; at most ${SMTP_REPLY_LINE_BYTES_MAX} B`,
    );
  }
  state.partial += rest;
  return replies;
}

/** One complete line: adds it to the current reply; returns the reply if the line ends it. */
function takeLine(state: SmtpReplyState, line: string): SmtpReply | null {
  if (line.length > SMTP_REPLY_LINE_BYTES_MAX) {
    breakStream(
      state,
      'SMTP_REPLY_LINE_TOO_LONG',
      `a reply line of ${line.length} B; at most ${SMTP_REPLY_LINE_BYTES_MAX} B`,
    );
  }
  const match = REPLY_LINE.exec(line);
  if (match === null) {
    breakStream(state, 'SMTP_REPLY_MALFORMED', `not a reply line: ${JSON.stringify(clip(line))}`);
  }
  const code = Number(match[1]);
  if (state.code !== null && code !== state.code) {
    breakStream(
      state,
      'SMTP_REPLY_MALFORMED',
      `reply line with code ${code} inside a ${state.code} reply: ${JSON.stringify(clip(line))}`,
    );
  }
  if (state.lines.length === SMTP_REPLY_LINES_MAX) {
    breakStream(
      state,
      'SMTP_REPLY_TOO_MANY_LINES',
      `a ${code} reply of more than ${SMTP_REPLY_LINES_MAX} lines`,
    );
  }
  state.lines.push(match[3] ?? '');
  if (match[2] === '-') {
    state.code = code;
    return null;
  }
  const reply = { code, lines: state.lines };
  state.code = null;
  state.lines = [];
  return reply;
}

/** Marks the stream broken and throws. */
function breakStream(state: SmtpReplyState, code: SmtpReplyErrorCode, message: string): never {
  state.broken = { code, message };
  state.partial = '';
  state.lines = [];
  state.code = null;
  throw new SmtpReplyError(code, message);
}

/** The start of a bad line, for a message of bounded size. */
function clip(line: string): string {
  return line.length > 80 ? `${line.slice(0, 80)}...` : line;
}
