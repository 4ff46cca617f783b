/**
 * The SMTP server's protocol state machine (RFC 5321, with the ESMTP extensions PIPELINING
 * RFC 2920, SIZE RFC 1870, 8BITMIME RFC 6152 and ENHANCEDSTATUSCODES RFC 2034), sans-I/O.
 *
 * Goal: the mail server guest program (VM1 in the paper's experiment) owns the socket and the
 * mailbox storage; it feeds each chunk of received bytes to `receive`, writes the replies it
 * returns in order, and closes the connection when told to. The whole session is one plain
 * data `SmtpSessionState` (strings, numbers, booleans, arrays; structured-clone and JSON safe)
 * plus pure functions, because a guest program's state is saved at the migration pause and
 * restored on another host: a session may be paused between any two chunks, even in the
 * middle of a command line or of the `CRLF.CRLF` end-of-data marker, and carry on there.
 * Message bodies are not kept in the state: they go to the program's `MessageSink` as they
 * arrive (the sink writes them to guest memory, where log-dirty sees them, as in the paper).
 *
 * Method.
 * - Command phase: split on LF with `indexOf`, strip one CR before it, decode the line as
 *   latin1 and dispatch on the verb (case-insensitive). A line cut by the chunking is carried
 *   in `commandCarry`, never more than `commandLineBytesMax - 1` bytes; a longer line gets one
 *   `500 5.5.2` reply and is discarded through its LF without being buffered.
 * - Data phase: scan from LF to LF with `indexOf`, keeping only four facts about the current
 *   line (`DataState`): where its start is in the dot-handling sequence, its length so far,
 *   whether its last byte was CR, and the message's size. Runs of body bytes (many lines) go to
 *   `sink.data` as `subarray` views of the input; a run is cut only at a stuffed dot, which is
 *   dropped. No body byte is copied or carried: the only bytes held back across chunks are a
 *   line-start `.` and `.CR`, which the state records as a mark, not as bytes.
 *
 * Line ends, and why the end-of-data marker is strict. Command lines end at LF, with or
 * without the CR (lenient, as Postfix: a bare LF there cannot hide data). In the body, a line
 * starts only after CRLF (or at the start of the data), so only such a line is dot-unstuffed,
 * and the end of data is exactly `CRLF . CRLF`. `LF . LF`, `LF . CRLF`, `CRLF . LF` and
 * `CR . CR` are body bytes. Accepting any of them as the end (as several MTAs did) is SMTP
 * smuggling (CVE-2023-51764/51765/51766): a relay that reads the bytes as body while the next
 * hop reads them as the end of data lets a sender inject a second, forged message. Bare CR and
 * LF inside the body are kept as they came (8BITMIME bodies are opaque), not rejected.
 *
 * Bytes and text. Command lines are decoded as latin1, one char per byte, lossless, so the
 * line-length bounds count bytes exactly and a non-ASCII byte simply fails the ASCII grammars
 * (SMTPUTF8 is not offered). Body bytes are never decoded. Replies are ASCII: they never echo
 * raw input, only values that have passed a grammar (addresses, the HELO name).
 *
 * Non-goals: AUTH, STARTTLS, CHUNKING/BDAT, SMTPUTF8, DSN, quoted-string local parts, relaying
 * (only the configured domains are accepted), timeouts (the program owns time: it calls
 * `closeSession` with 'timeout').
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { InputError } from '../../core/errors.ts';

/** Bounds of one session, each with its reason. */
export interface SmtpLimits {
  /**
   * Largest message body accepted, in bytes after dot-unstuffing (advertised as `SIZE`).
   * @default 10 MiB
   */
  messageBytesMax: number;
  /** Recipients per message (RFC 5321 4.5.3.1.8 asks for at least 100). @default 100 */
  recipientsMax: number;
  /** Longest command line, CRLF included (RFC 5321 4.5.3.1.4: 512). @default 512 */
  commandLineBytesMax: number;
  /**
   * Longest body line, CRLF included, a stuffed dot not (RFC 5321 4.5.3.1.6: 1000). For this
   * count a line ends at any LF, so bare-LF text is not refused for being one long "line".
   * @default 1000
   */
  textLineBytesMax: number;
  /** Failed commands in a row before `421` and close (Postfix's hard error limit). @default 20 */
  badCommandsMax: number;
}

/**
 * The defaults. 10 MiB bodies: the paper's attachments are 1 MB and 3 MB, which base64 turns
 * into 1.37 MB and 4.1 MB plus headers; 10 MiB is also about Postfix's `message_size_limit`
 * (10,240,000). The other bounds are RFC 5321's minimums and Postfix's error limit.
 */
export const DEFAULT_SMTP_LIMITS: Readonly<SmtpLimits> = Object.freeze({
  messageBytesMax: 10 * 1024 * 1024,
  recipientsMax: 100,
  commandLineBytesMax: 512,
  textLineBytesMax: 1000,
  badCommandsMax: 20,
});

/** What a session needs to know about its server. */
export interface SmtpServerConfig {
  /** The server's name in the greeting and replies, e.g. `mail.xenlab.local`. */
  hostname: string;
  /** Recipient domains accepted (case-insensitive), e.g. `['xenlab.local']`; others get 550. */
  domains: string[];
  limits: SmtpLimits;
}

/** The envelope of one message, handed to `MessageSink.begin` (a copy; the sink may keep it). */
export interface Envelope {
  /** The reverse path without its brackets; `''` for the null reverse path `<>`. */
  from: string;
  /** Forward paths without brackets, domain lower-cased, each once, in the order given. */
  recipients: string[];
  /** The name the client gave in HELO/EHLO. */
  helo: string;
  bodyType: '7BIT' | '8BITMIME';
  /** The client's `SIZE=` estimate in bytes, or null. */
  declaredSize: number | null;
}

/** What `MessageSink.commit` answers when it could not store the message. */
export interface MessageRefusal {
  ok: false;
  /** A 4xx (try again later) or 5xx (permanent) reply code. */
  code: number;
  /** The matching enhanced status code, e.g. `4.3.1` for a full disk. */
  enhanced: string;
  /** Reply text; characters outside printable ASCII are replaced before it is sent. */
  text: string;
}

/** Storage hooks the server program implements; all synchronous. */
export interface MessageSink {
  /** DATA was accepted (the 354 is in this call's replies). */
  begin(envelope: Envelope): void;
  /**
   * Body bytes, dot-stuffing removed, line ends as received (CRLF, and any bare CR or LF), the
   * last line's CRLF included. Called many times per message. `bytes` is a view of the input
   * chunk, valid only during the call: copy what you keep.
   */
  data(bytes: Uint8Array): void;
  /** The end of data arrived: store durably. The 250 is sent only after this returns ok. */
  commit(): { ok: true; queueId: string } | MessageRefusal;
  /** The message is dropped: over a limit (called as soon as that is known) or connection lost. */
  abort(): void;
}

/** Cumulative figures of one session. */
export interface SmtpSessionCounters {
  /** Command lines handled, bad ones and overlong ones included. */
  commands: number;
  /** Messages the sink committed (250 sent). */
  messagesAccepted: number;
  /** Messages that reached the end of data and were refused (limits or sink). */
  messagesRejected: number;
  /** Commands answered with a protocol error (see `countsAsBad`), over the whole session. */
  badCommands: number;
  /** Every byte given to `receive`. */
  bytesReceived: number;
}

/**
 * - `command`: reading command lines.
 * - `data`: after the 354, reading the body up to `CRLF.CRLF`.
 * - `closed`: 221 or 421 sent, or the connection lost; input is ignored.
 */
export type SmtpPhase = 'command' | 'data' | 'closed';

/** The mail transaction opened by MAIL and closed by the end of data, RSET, HELO or EHLO. */
export interface SmtpTransaction {
  from: string;
  recipients: string[];
  bodyType: '7BIT' | '8BITMIME';
  declaredSize: number | null;
}

/**
 * Where the current body line stands. A line that follows CRLF (or opens the data) is `start`
 * until its first byte; if that is a dot the line is `dot`, then `dotCr` after a CR, and
 * `dotCr` + LF is the end of data. Anything else makes it `plain` (the dot, if any, was
 * stuffing and is dropped). A line after a bare LF is `plain` from its start.
 */
export type DataLineMark = 'start' | 'dot' | 'dotCr' | 'plain';

/** The body scanner's state: a few numbers, never body bytes. */
export interface DataState {
  lineMark: DataLineMark;
  /** Bytes of the current line so far, its stuffed dot not counted (RFC 5321 4.5.3.1.6). */
  lineBytes: number;
  /** The last byte of the current line so far is CR (for a LF at the start of the next chunk). */
  previousByteCr: boolean;
  /** Bytes given to `sink.data` for this message. */
  messageBytes: number;
  /** Why the message will be refused at the end of data (the sink was aborted then), or null. */
  rejection: 'size' | 'textLine' | null;
}

/** One SMTP session: plain data only, so it survives a structured clone at any pause. */
export interface SmtpSessionState {
  phase: SmtpPhase;
  /** The client's HELO/EHLO name, or null before the first one. */
  helo: string | null;
  /** True after EHLO: MAIL parameters (SIZE, BODY) are allowed only then (RFC 1869). */
  extended: boolean;
  transaction: SmtpTransaction | null;
  /** The partial command line from earlier chunks (latin1), < `commandLineBytesMax` chars. */
  commandCarry: string;
  /** True while discarding an overlong command line up to its LF. */
  commandDiscarding: boolean;
  /** The body scanner, while `phase` is `data`. */
  data: DataState | null;
  /** Bad commands since the last good one. */
  badCommandsInRow: number;
  counters: SmtpSessionCounters;
}

/** What one call of `receive` (or `closeSession`) produces. */
export interface SmtpOutput {
  /** Complete wire replies in order, each ending in CRLF (multi-line ones in one string). */
  replies: string[];
  /** True when the caller must close the connection after writing `replies`. */
  close: boolean;
}

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;

/** Throws `InputError` unless `config` is usable (names valid, limits at least RFC 5321's). */
export function checkSmtpConfig(config: SmtpServerConfig): void {
  if (!DOMAIN_RE.test(config.hostname) || config.hostname.length > 255) {
    throw new InputError(`SMTP hostname ${JSON.stringify(config.hostname)} is not a domain name`);
  }
  if (config.domains.length === 0) throw new InputError('SMTP server needs at least one domain');
  for (const domain of config.domains) {
    if (!DOMAIN_RE.test(domain) || domain.length > 255) {
      throw new InputError(`SMTP domain ${JSON.stringify(domain)} is not a domain name`);
    }
  }
  const limits = config.limits;
  const minimums: [keyof SmtpLimits, number][] = [
    ['messageBytesMax', 1],
    ['recipientsMax', 1],
    // Below RFC 5321's minimums, conforming clients would fail (an EHLO line may be 512).
    ['commandLineBytesMax', 512],
    ['textLineBytesMax', 1000],
    ['badCommandsMax', 1],
  ];
  for (const [name, minimum] of minimums) {
    const value = limits[name];
    if (!Number.isSafeInteger(value) || value < minimum) {
      throw new InputError(`SMTP limit ${name} must be an integer >= ${minimum}, got ${value}`);
    }
  }
}

/** Starts a session; `replies` holds the 220 greeting. Throws `InputError` for a bad config. */
export function openSession(config: SmtpServerConfig): {
  state: SmtpSessionState;
  replies: string[];
} {
  checkSmtpConfig(config);
  const state: SmtpSessionState = {
    phase: 'command',
    helo: null,
    extended: false,
    transaction: null,
    commandCarry: '',
    commandDiscarding: false,
    data: null,
    badCommandsInRow: 0,
    counters: {
      commands: 0,
      messagesAccepted: 0,
      messagesRejected: 0,
      badCommands: 0,
      bytesReceived: 0,
    },
  };
  return { state, replies: [`220 ${config.hostname} ESMTP xenvmc\r\n`] };
}

/**
 * Feeds one chunk of received bytes (split anywhere) and returns the replies it completes.
 * `config` must be the one given to `openSession`. Mutates `state`; keeps no reference to
 * `bytes`. After `close: true` every further call returns no replies. An exception thrown by
 * the sink propagates and leaves the session unusable (the program should drop the connection).
 */
export function receive(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  bytes: Uint8Array,
  sink: MessageSink,
): SmtpOutput {
  const output: SmtpOutput = { replies: [], close: false };
  if (isClosed(state)) return { replies: [], close: true };
  state.counters.bytesReceived += bytes.length;
  let position = 0;
  while (position < bytes.length && !isClosed(state)) {
    position =
      state.phase === 'data'
        ? scanData(state, config, bytes, position, sink, output)
        : scanCommands(state, config, bytes, position, sink, output);
  }
  output.close = isClosed(state);
  return output;
}

/** A function, not an inline test, so TypeScript does not narrow `phase` across calls. */
function isClosed(state: SmtpSessionState): boolean {
  return state.phase === 'closed';
}

/** The connection ended: aborts a message in progress, closes the session. */
export function connectionLost(state: SmtpSessionState, sink: MessageSink): void {
  if (state.phase === 'data' && state.data !== null && state.data.rejection === null) {
    sink.abort();
  }
  state.data = null;
  state.transaction = null;
  state.commandCarry = '';
  state.phase = 'closed';
}

/**
 * The server ends the session itself: an idle `timeout` (421 4.4.2, RFC 5321 4.5.3.2) or a
 * `shutdown` (421 4.3.2). Aborts a message in progress. The caller writes and closes.
 */
export function closeSession(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  sink: MessageSink,
  reason: 'timeout' | 'shutdown',
): SmtpOutput {
  if (state.phase === 'closed') return { replies: [], close: true };
  connectionLost(state, sink);
  const reply =
    reason === 'timeout'
      ? formatReply(421, '4.4.2', `${config.hostname} Error: timeout exceeded`)
      : formatReply(421, '4.3.2', `${config.hostname} Service shutting down`);
  return { replies: [reply], close: true };
}

/**
 * One single-line reply on the wire, `code enhanced text CRLF` (for replies the program sends
 * itself). `text` must be printable ASCII.
 */
export function formatReply(code: number, enhanced: string, text: string): string {
  return wire(reply(code, enhanced, text));
}

// ---------------------------------------------------------------------------------------------
// Command phase

/**
 * Handles the command lines in `bytes` from `position` until the data phase starts, the
 * session closes, or the chunk ends (the tail is carried). Returns the new position.
 */
function scanCommands(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  bytes: Uint8Array,
  position: number,
  sink: MessageSink,
  output: SmtpOutput,
): number {
  const lineBytesMax = config.limits.commandLineBytesMax;
  let cursor = position;
  while (cursor < bytes.length && state.phase === 'command') {
    const lineFeed = bytes.indexOf(LF, cursor);
    if (state.commandDiscarding) {
      if (lineFeed < 0) return bytes.length;
      state.commandDiscarding = false;
      cursor = lineFeed + 1;
      continue;
    }
    if (lineFeed < 0) {
      // Without its LF the line is already `carry + tail` bytes; with it one more.
      const tailBytes = bytes.length - cursor;
      if (state.commandCarry.length + tailBytes >= lineBytesMax) {
        state.commandCarry = '';
        state.commandDiscarding = true;
        answerLineTooLong(state, config, output);
      } else {
        state.commandCarry += latin1(bytes, cursor, bytes.length);
      }
      return bytes.length;
    }
    const lineBytes = state.commandCarry.length + lineFeed + 1 - cursor;
    if (lineBytes > lineBytesMax) {
      state.commandCarry = '';
      answerLineTooLong(state, config, output);
    } else {
      let line = state.commandCarry + latin1(bytes, cursor, lineFeed);
      state.commandCarry = '';
      if (line.endsWith('\r')) line = line.slice(0, -1);
      state.counters.commands += 1;
      const reply = handleCommand(state, config, line, sink);
      answer(state, config, reply, output);
    }
    cursor = lineFeed + 1;
  }
  return cursor;
}

function answerLineTooLong(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  output: SmtpOutput,
): void {
  state.counters.commands += 1;
  // RFC 5321 4.5.3.1.4 prescribes "500 Line too long". Enhanced 5.5.2 (syntax error), not
  // 5.5.6: RFC 4954 registers X.5.6 for an overlong AUTH exchange line only.
  answer(state, config, reply(500, '5.5.2', 'Line too long'), output);
}

/** A reply before it goes on the wire; `lines` has one entry per reply line. */
interface Reply {
  code: number;
  lines: string[];
}

/** A one-line reply; `enhanced` is '' for the replies RFC 2034 leaves without one (354). */
function reply(code: number, enhanced: string, text: string): Reply {
  return { code, lines: [enhanced === '' ? text : `${enhanced} ${text}`] };
}

/**
 * Protocol errors (5xx) count towards the bad-command limit; 552 (a size refusal, not a
 * misbehaving client) and 4xx do not; a 2xx or 3xx reply ends the run.
 */
function countsAsBad(code: number): boolean {
  return code >= 500 && code !== 552;
}

/** Appends the reply to a command, and a 421 after it when it is one bad command too many. */
function answer(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  result: Reply,
  output: SmtpOutput,
): void {
  output.replies.push(wire(result));
  if (result.code < 400) {
    state.badCommandsInRow = 0;
    return;
  }
  if (!countsAsBad(result.code)) return;
  state.badCommandsInRow += 1;
  state.counters.badCommands += 1;
  if (state.badCommandsInRow >= config.limits.badCommandsMax && state.phase !== 'closed') {
    // Pipelined data sent after a refused DATA arrives here as a stream of bad commands: the
    // limit ends it after `badCommandsMax` lines instead of answering a whole body line by line.
    output.replies.push(formatReply(421, '4.7.0', `${config.hostname} Error: too many errors`));
    state.transaction = null;
    state.phase = 'closed';
  }
}

function wire(result: Reply): string {
  const last = result.lines.length - 1;
  return result.lines
    .map((line, index) => `${result.code}${index === last ? ' ' : '-'}${line}\r\n`)
    .join('');
}

/** Commands that exist but that this server does not offer. */
const UNIMPLEMENTED = new Set([
  'EXPN',
  'TURN',
  'ETRN',
  'ATRN',
  'AUTH',
  'STARTTLS',
  'BDAT',
  'SEND',
  'SOML',
  'SAML',
]);

/** Dispatches one command line (without its line end). */
function handleCommand(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  rawLine: string,
  sink: MessageSink,
): Reply {
  // Trailing blanks are tolerated (some clients send `DATA `); RFC 5321 has none.
  const line = rawLine.replace(/[ \t]+$/, '');
  const space = line.indexOf(' ');
  const verb = (space < 0 ? line : line.slice(0, space)).toUpperCase();
  const argument = space < 0 ? '' : line.slice(space + 1).replace(/^ +/, '');
  switch (verb) {
    case 'EHLO':
    case 'HELO':
      return greet(state, config, verb, argument);
    case 'MAIL':
      return mail(state, config, argument);
    case 'RCPT':
      return recipient(state, config, argument);
    case 'DATA':
      return startData(state, argument, sink);
    case 'RSET':
      if (argument !== '') return reply(501, '5.5.4', 'Syntax: RSET');
      state.transaction = null;
      return reply(250, '2.0.0', 'Ok');
    case 'NOOP':
      return reply(250, '2.0.0', 'Ok'); // RFC 5321 4.1.1.9: a parameter is ignored.
    case 'QUIT':
      state.transaction = null;
      state.phase = 'closed';
      return reply(221, '2.0.0', `${config.hostname} closing connection`);
    case 'VRFY':
      if (argument === '') return reply(501, '5.5.4', 'Syntax: VRFY address');
      return reply(252, '2.5.2', 'Cannot VRFY user, but will accept message and attempt delivery');
    case 'HELP':
      return reply(214, '2.0.0', 'Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP');
    default:
      if (UNIMPLEMENTED.has(verb)) return reply(502, '5.5.1', 'Command not implemented');
      return reply(500, '5.5.1', 'Command unrecognized');
  }
}

function greet(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  verb: 'EHLO' | 'HELO',
  argument: string,
): Reply {
  // One token of visible ASCII: a domain, an address literal, or whatever name a client's
  // host has (clients send odd names; the value is only recorded, and echoed nowhere raw).
  if (!/^[\x21-\x7e]{1,255}$/.test(argument)) {
    return reply(501, '5.5.4', `Syntax: ${verb} hostname`);
  }
  state.helo = argument;
  state.extended = verb === 'EHLO';
  state.transaction = null; // RFC 5321 4.1.4: HELO/EHLO also reset the transaction.
  if (verb === 'HELO') return { code: 250, lines: [config.hostname] };
  return {
    code: 250,
    lines: [
      config.hostname,
      'PIPELINING',
      `SIZE ${config.limits.messageBytesMax}`,
      '8BITMIME',
      'ENHANCEDSTATUSCODES',
    ],
  };
}

// Address grammar (RFC 5321 4.1.2), ASCII only; quoted-string local parts are not accepted.
const ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]";
const DOT_STRING = `${ATEXT}+(?:\\.${ATEXT}+)*`;
const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
const DOMAIN = `${LABEL}(?:\\.${LABEL})*`;
const DOMAIN_RE = new RegExp(`^${DOMAIN}$`);
const MAILBOX_RE = new RegExp(`^(${DOT_STRING})@(${DOMAIN}|\\[[A-Za-z0-9.:-]{1,253}\\])$`);
/** An obsolete source route, `@a,@b:` before the mailbox: accepted and ignored (C.2). */
const SOURCE_ROUTE_RE = new RegExp(`^@${DOMAIN}(?:,@${DOMAIN})*:`);
/**
 * Local parts accepted for delivery: the server may use them as mailbox (file) names, so
 * letters, digits and `. _ + -` only, starting with a letter or digit, no `..`, no final dot.
 */
const LOCAL_PART_SAFE_RE = /^[A-Za-z0-9](?:[A-Za-z0-9_+-]|\.(?!\.)){0,63}(?<!\.)$/;
const PARAMETER_RE = /^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?$/;
/** RFC 5321 4.5.3.1: local part 64, domain 255, path 256 octets (brackets included). */
const LOCAL_PART_BYTES_MAX = 64;
const PATH_BYTES_MAX = 256;

/** `FROM:<path> params` or `TO:<path> params`, split; null when the shape is wrong. */
function splitPathArgument(
  argument: string,
  keyword: 'FROM' | 'TO',
): { path: string; parameters: string[] } | null {
  const match = new RegExp(`^${keyword}: ?<([^<> ]*)>(?: +(.*))?$`, 'i').exec(argument);
  if (match === null) return null;
  const rest = match[2] ?? '';
  return { path: match[1] ?? '', parameters: rest === '' ? [] : rest.split(/ +/) };
}

/** A mailbox from inside the brackets, its domain lower-cased, or null if malformed. */
function parseMailbox(path: string): { localPart: string; domain: string } | null {
  if (path.length + 2 > PATH_BYTES_MAX) return null;
  const bare = path.replace(SOURCE_ROUTE_RE, '');
  const match = MAILBOX_RE.exec(bare);
  if (match === null) return null;
  const localPart = match[1] ?? '';
  if (localPart.length > LOCAL_PART_BYTES_MAX) return null;
  return { localPart, domain: (match[2] ?? '').toLowerCase() };
}

function mail(state: SmtpSessionState, config: SmtpServerConfig, argument: string): Reply {
  if (state.helo === null) return reply(503, '5.5.1', 'Error: send HELO/EHLO first');
  if (state.transaction !== null) return reply(503, '5.5.1', 'Error: nested MAIL command');
  const split = splitPathArgument(argument, 'FROM');
  if (split === null) return reply(501, '5.5.4', 'Syntax: MAIL FROM:<address>');
  let from = '';
  if (split.path !== '') {
    const mailbox = parseMailbox(split.path);
    if (mailbox === null) return reply(501, '5.1.7', 'Bad sender address syntax');
    from = `${mailbox.localPart}@${mailbox.domain}`;
  }
  let bodyType: SmtpTransaction['bodyType'] = '7BIT';
  let declaredSize: number | null = null;
  const seen = new Set<string>();
  for (const parameter of split.parameters) {
    const match = PARAMETER_RE.exec(parameter);
    if (match === null) return reply(501, '5.5.4', 'Bad MAIL FROM parameter syntax');
    const keyword = (match[1] ?? '').toUpperCase();
    const value = match[2];
    if (!state.extended || (keyword !== 'SIZE' && keyword !== 'BODY')) {
      return reply(555, '5.5.4', 'MAIL FROM parameters not recognized or not implemented');
    }
    if (seen.has(keyword)) return reply(501, '5.5.4', `Duplicate MAIL FROM parameter ${keyword}`);
    seen.add(keyword);
    if (keyword === 'SIZE') {
      if (value === undefined || !/^\d{1,20}$/.test(value)) {
        return reply(501, '5.5.4', 'Syntax: SIZE=<bytes>');
      }
      declaredSize = Number(value);
      if (declaredSize > config.limits.messageBytesMax) {
        return reply(552, '5.3.4', 'Message size exceeds fixed maximum message size');
      }
    } else {
      const body = value?.toUpperCase();
      if (body !== '7BIT' && body !== '8BITMIME') {
        return reply(501, '5.5.4', 'Syntax: BODY=7BIT or BODY=8BITMIME');
      }
      bodyType = body;
    }
  }
  state.transaction = { from, recipients: [], bodyType, declaredSize };
  return reply(250, '2.1.0', `Sender <${from}> ok`);
}

function recipient(state: SmtpSessionState, config: SmtpServerConfig, argument: string): Reply {
  const transaction = state.transaction;
  if (transaction === null) return reply(503, '5.5.1', 'Error: need MAIL command');
  const split = splitPathArgument(argument, 'TO');
  if (split === null) return reply(501, '5.5.4', 'Syntax: RCPT TO:<address>');
  if (split.parameters.length > 0) {
    return reply(555, '5.5.4', 'RCPT TO parameters not recognized or not implemented');
  }
  let address: string;
  // RFC 5321 4.5.1: `<Postmaster>` without a domain must be accepted.
  const primaryDomain = (config.domains[0] ?? '').toLowerCase();
  if (split.path.toLowerCase() === 'postmaster') {
    address = `postmaster@${primaryDomain}`;
  } else {
    const mailbox = parseMailbox(split.path);
    if (mailbox === null) return reply(501, '5.1.3', 'Bad recipient address syntax');
    if (!config.domains.some((domain) => domain.toLowerCase() === mailbox.domain)) {
      return reply(550, '5.1.1', `<${mailbox.localPart}@${mailbox.domain}>: relay access denied`);
    }
    if (!LOCAL_PART_SAFE_RE.test(mailbox.localPart)) {
      return reply(553, '5.1.3', 'Mailbox name not allowed');
    }
    address = `${mailbox.localPart}@${mailbox.domain}`;
  }
  if (transaction.recipients.includes(address)) {
    return reply(250, '2.1.5', `Recipient <${address}> ok`);
  }
  if (transaction.recipients.length >= config.limits.recipientsMax) {
    return reply(452, '4.5.3', 'Error: too many recipients');
  }
  transaction.recipients.push(address);
  return reply(250, '2.1.5', `Recipient <${address}> ok`);
}

function startData(state: SmtpSessionState, argument: string, sink: MessageSink): Reply {
  if (argument !== '') return reply(501, '5.5.4', 'Syntax: DATA');
  const transaction = state.transaction;
  if (transaction === null) return reply(503, '5.5.1', 'Error: need MAIL command');
  if (transaction.recipients.length === 0) {
    return reply(503, '5.5.1', 'Error: need RCPT command');
  }
  assert(state.helo !== null, 'a transaction exists only after HELO/EHLO');
  sink.begin({
    from: transaction.from,
    recipients: [...transaction.recipients],
    helo: state.helo,
    bodyType: transaction.bodyType,
    declaredSize: transaction.declaredSize,
  });
  state.phase = 'data';
  state.data = {
    lineMark: 'start',
    lineBytes: 0,
    previousByteCr: false,
    messageBytes: 0,
    rejection: null,
  };
  return reply(354, '', 'End data with <CR><LF>.<CR><LF>');
}

// ---------------------------------------------------------------------------------------------
// Data phase

/**
 * Scans body bytes from `position`; on the end of data answers and returns the position after
 * it (the command phase goes on from there), else consumes the whole chunk.
 *
 * `runStart..cursor` is the run of body bytes not yet given to the sink; it spans many lines
 * and is cut only where a line-start dot is dropped. Invariant at the top of the loop: in
 * `dot` the run starts at `cursor` (the dot is excluded); in `dotCr` within this chunk the run
 * starts at the CR (`cursor - 1`), which is included only if the line is not the end marker.
 */
function scanData(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  bytes: Uint8Array,
  position: number,
  sink: MessageSink,
  output: SmtpOutput,
): number {
  const data = state.data;
  assert(data !== null, 'the data phase has a scanner state');
  let cursor = position;
  // A `.CR` held over from the previous chunk: its CR is not in `bytes`.
  if (data.lineMark === 'dotCr') {
    if (bytes[cursor] === LF) return endOfData(state, config, cursor + 1, sink, output);
    emitBody(data, config, Uint8Array.of(CR), sink); // Fresh: the sink may write into views.
    data.lineMark = 'plain';
    data.lineBytes = 1;
    data.previousByteCr = true;
  }
  let runStart = cursor;
  while (cursor < bytes.length) {
    const mark = data.lineMark;
    if (mark === 'start') {
      if (bytes[cursor] === DOT) {
        emitBody(data, config, bytes.subarray(runStart, cursor), sink);
        cursor += 1;
        runStart = cursor;
        data.lineMark = 'dot';
        continue;
      }
      data.lineMark = 'plain';
    } else if (mark === 'dot') {
      if (bytes[cursor] === CR) {
        cursor += 1;
        data.lineMark = 'dotCr';
        continue;
      }
      data.lineMark = 'plain'; // The dot was stuffing: dropped, not counted in the line.
      data.previousByteCr = false;
    } else if (mark === 'dotCr') {
      if (bytes[cursor] === LF) return endOfData(state, config, cursor + 1, sink, output);
      data.lineMark = 'plain';
      data.lineBytes = 1; // The CR after the dropped dot, already in the run.
      data.previousByteCr = true;
    }
    cursor = scanPlainLine(data, config, bytes, cursor, sink);
  }
  // A `.CR` at the very end of the chunk stays held: it may be the end marker.
  const runEnd = data.lineMark === 'dotCr' ? bytes.length - 1 : bytes.length;
  emitBody(data, config, bytes.subarray(runStart, runEnd), sink);
  return bytes.length;
}

/**
 * Advances over the rest of a line in the `plain` mark to just after its LF (or to the end of
 * the chunk), checking the line-length bound; the bytes stay in the caller's run.
 */
function scanPlainLine(
  data: DataState,
  config: SmtpServerConfig,
  bytes: Uint8Array,
  cursor: number,
  sink: MessageSink,
): number {
  const lineFeed = bytes.indexOf(LF, cursor);
  const end = lineFeed < 0 ? bytes.length : lineFeed + 1;
  data.lineBytes += end - cursor;
  if (data.lineBytes > config.limits.textLineBytesMax) reject(data, 'textLine', sink);
  if (lineFeed < 0) {
    data.previousByteCr = bytes[bytes.length - 1] === CR;
    return end;
  }
  const crlf = lineFeed > cursor ? bytes[lineFeed - 1] === CR : data.previousByteCr;
  data.lineMark = crlf ? 'start' : 'plain';
  data.lineBytes = 0;
  data.previousByteCr = false;
  return end;
}

/** Passes body bytes to the sink unless the message is already refused or grows too big. */
function emitBody(
  data: DataState,
  config: SmtpServerConfig,
  bytes: Uint8Array,
  sink: MessageSink,
): void {
  if (bytes.length === 0 || data.rejection !== null) return;
  if (data.messageBytes + bytes.length > config.limits.messageBytesMax) {
    reject(data, 'size', sink);
    return;
  }
  data.messageBytes += bytes.length;
  sink.data(bytes);
}

/** Refuses the message now (the sink drops what it has); the reply waits for the end of data. */
function reject(data: DataState, reason: 'size' | 'textLine', sink: MessageSink): void {
  if (data.rejection !== null) return;
  data.rejection = reason;
  sink.abort();
}

/** The end marker arrived: commit or refuse, reply, and return to the command phase. */
function endOfData(
  state: SmtpSessionState,
  config: SmtpServerConfig,
  position: number,
  sink: MessageSink,
  output: SmtpOutput,
): number {
  const data = state.data;
  assert(data !== null, 'end of data in the data phase');
  state.phase = 'command';
  state.data = null;
  state.transaction = null;
  let result: Reply;
  if (data.rejection === 'size') {
    result = reply(552, '5.3.4', 'Message size exceeds fixed maximum message size');
  } else if (data.rejection === 'textLine') {
    // 554 is the RFC 5321 4.3.2 reply for a failed end of data; X.6.0 is a content error.
    const limit = config.limits.textLineBytesMax;
    result = reply(554, '5.6.0', `Message has a text line longer than ${limit} octets`);
  } else {
    const stored = sink.commit();
    if (stored.ok) {
      result = reply(250, '2.0.0', `Ok: queued as ${printable(stored.queueId)}`);
    } else {
      assert(
        Number.isInteger(stored.code) && stored.code >= 400 && stored.code <= 599,
        `sink refusal code ${stored.code} must be 4xx or 5xx`,
      );
      assert(
        /^[45]\.\d{1,3}\.\d{1,3}$/.test(stored.enhanced) &&
          stored.enhanced[0] === String(stored.code)[0],
        `sink refusal enhanced code ${stored.enhanced} must match ${stored.code}`,
      );
      result = reply(stored.code, stored.enhanced, printable(stored.text));
    }
  }
  if (result.code === 250) state.counters.messagesAccepted += 1;
  else state.counters.messagesRejected += 1;
  // The verdict answers the message, not a command: it neither counts as bad nor resets.
  output.replies.push(wire(result));
  return position;
}

/** Printable ASCII only, so a sink's text cannot break the reply framing. */
function printable(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?').slice(0, 400);
}

function latin1(bytes: Uint8Array, start: number, end: number): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset + start, end - start).toString('latin1');
}
