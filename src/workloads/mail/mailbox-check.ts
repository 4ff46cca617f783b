/**
 * Checks the mailboxes a mail server left on shared storage against what Mclient sent: every
 * mail of the n x n loop must be there exactly once, with its attachment intact. Runs in the
 * runner's process after the run, on the files themselves (the disk is shared storage), and
 * parses each stored message with mailparser, an independent MIME parser, so the check does
 * not trust our own encoder.
 *
 * mbox here is mboxrd (see `mail-server.ts`): messages start at `From ` lines, body lines
 * matching `>+From ` carry one extra `>`, and each message ends with a blank line.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { simpleParser } from 'mailparser';
import { MAILBOX_DIR } from './mail-server.ts';
import { attachmentSha256, mailFrom, mailSpecAt, mailTo, messageId } from './message.ts';

export interface MailLoop {
  n: number;
  fileSizeBytes: number;
  seed: number;
  domain: string;
}

export interface MailboxReport {
  mailsExpected: number;
  /** Distinct expected mails found. */
  mailsDelivered: number;
  /** Found mails whose headers, recipient mailbox and attachment digest are right. */
  mailsIntact: number;
  /** Extra copies of expected mails (must be 0). */
  mailsDuplicated: number;
  /** Messages that are not mails of this loop (must be 0 in an experiment). */
  unexpectedMessages: number;
  /** Up to 10 reasons, one line each, for mails found but not intact. */
  problems: string[];
  mailboxes: number;
  bytesChecked: number;
}

/** Splits an mbox file into its messages (the `From ` line removed, quoting undone). */
export function splitMbox(bytes: Buffer): Buffer[] {
  const text = bytes.toString('latin1');
  const messages: Buffer[] = [];
  const starts: number[] = [];
  if (text.startsWith('From ')) starts.push(0);
  for (let at = text.indexOf('\nFrom '); at !== -1; at = text.indexOf('\nFrom ', at + 1)) {
    starts.push(at + 1);
  }
  starts.forEach((start, index) => {
    const end = index + 1 < starts.length ? starts[index + 1]! : text.length;
    const bodyStart = text.indexOf('\n', start) + 1;
    // The separating blank line (CRLF) before the next `From ` line is not part of the message.
    let chunk = text.slice(bodyStart, end);
    if (chunk.endsWith('\r\n\r\n')) chunk = chunk.slice(0, -2);
    else if (chunk.endsWith('\n\n')) chunk = chunk.slice(0, -1);
    messages.push(Buffer.from(chunk.replace(/^>(>*From )/gm, '$1'), 'latin1'));
  });
  return messages;
}

/** Checks the mailboxes under `diskDir` (the mail server domain's disk) against the loop. */
export async function checkMailboxes(diskDir: string, loop: MailLoop): Promise<MailboxReport> {
  const expected = loop.n * loop.n;
  const report: MailboxReport = {
    mailsExpected: expected,
    mailsDelivered: 0,
    mailsIntact: 0,
    mailsDuplicated: 0,
    unexpectedMessages: 0,
    problems: [],
    mailboxes: 0,
    bytesChecked: 0,
  };
  const dir = path.join(diskDir, MAILBOX_DIR);
  if (!existsSync(dir)) return report;
  const seen = new Map<number, number>();
  const problem = (line: string): void => {
    if (report.problems.length < 10) report.problems.push(line);
  };
  for (const file of readdirSync(dir).filter((name) => name.endsWith('.mbox'))) {
    report.mailboxes++;
    const bytes = readFileSync(path.join(dir, file));
    report.bytesChecked += bytes.length;
    for (const raw of splitMbox(bytes)) {
      const parsed = await simpleParser(raw);
      const number = mailNumberOf(parsed.messageId ?? '', loop);
      if (number === null) {
        report.unexpectedMessages++;
        continue;
      }
      const copies = (seen.get(number) ?? 0) + 1;
      seen.set(number, copies);
      if (copies > 1) {
        report.mailsDuplicated++;
        continue;
      }
      report.mailsDelivered++;
      const spec = mailSpecAt(number, loop);
      const attachment = parsed.attachments[0];
      const digest = attachment
        ? createHash('sha256').update(attachment.content).digest('hex')
        : null;
      const wantMailbox = `${mailTo(spec).split('@')[0]}.mbox`;
      if (file !== wantMailbox) problem(`mail ${number} is in ${file}, not ${wantMailbox}`);
      else if (parsed.from?.value[0]?.address !== mailFrom(spec))
        problem(`mail ${number}: From is ${parsed.from?.text}, not ${mailFrom(spec)}`);
      else if (parsed.attachments.length !== 1)
        problem(`mail ${number} has ${parsed.attachments.length} attachments, not 1`);
      else if (digest !== attachmentSha256(spec))
        problem(`mail ${number}: attachment digest ${digest} is not ${attachmentSha256(spec)}`);
      else report.mailsIntact++;
    }
  }
  return report;
}

/** The loop position of a Message-ID of this loop, or null for any other message. */
function mailNumberOf(id: string, loop: MailLoop): number | null {
  const match = /^<xenvmc-(\d+)-(\d+)-(\d+)@([^>]+)>$/.exec(id.trim());
  if (!match) return null;
  const [seed, i, j] = [Number(match[1]), Number(match[2]), Number(match[3])];
  if (seed !== loop.seed || match[4] !== loop.domain) return null;
  if (i < 1 || i > loop.n || j < 1 || j > loop.n) return null;
  const number = (i - 1) * loop.n + j;
  return messageId(mailSpecAt(number, loop)) === id.trim() ? number : null;
}
