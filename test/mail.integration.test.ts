/**
 * The paper's workload end to end on real host processes: every mail arrives exactly once and
 * intact in every mode while VM1 (the mail server) is migrated mid-run; and an unmodified
 * nodemailer SMTP transport delivers to the guest mail server through host port forwarding,
 * every stored message parsed back with mailparser.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { simpleParser } from 'mailparser';
import nodemailer from 'nodemailer';
import { LocalCluster } from '../src/experiments/local-cluster.ts';
import { runMailRun } from '../src/experiments/mail-run.ts';
import type { ForwardView } from '../src/hypervisor/dom0-net.ts';
import { splitMbox } from '../src/workloads/mail/mailbox-check.ts';
import { XENVMC_MODES } from '../src/xenvmc/protocol.ts';

const MiB = 2 ** 20;

describe('Mclient to the mail server, VM1 migrated mid-run', { concurrency: false }, () => {
  for (const mode of XENVMC_MODES) {
    test(`mode ${mode}: all 9 mails arrive once and intact`, { timeout: 120_000 }, async () => {
      const storageDir = mkdtempSync(path.join(os.tmpdir(), 'xenvmc-mail-test-'));
      const cluster = await LocalCluster.start({
        hostNames: ['h1', 'h2'],
        xenvmcMode: mode,
        storageDir,
      });
      try {
        const result = await runMailRun({
          server: {
            name: 'vm1',
            memoryBytes: 32 * MiB,
            ip: '10.77.0.1',
            tenant: 'lab',
            programs: [],
          },
          client: {
            name: 'vm2',
            memoryBytes: 16 * MiB,
            ip: '10.77.0.2',
            tenant: 'lab',
            programs: [],
          },
          from: cluster.host('h1'),
          to: cluster.host('h2'),
          storageDir,
          n: 3,
          fileSizeBytes: 96 * 1024,
          seed: 11,
          pacingMs: 20,
          warmupMs: 100,
          policy: 'paper',
          timeoutMs: 90_000,
        });
        assert.equal(result.failure, null, `the run failed: ${result.failure}`);
        assert.ok(result.migration, 'VM1 was migrated');
        assert.equal(result.migration.xenvmcMode, mode, 'the migration ran in this mode');
        assert.equal(result.mailbox.mailsExpected, 9, '3 x 3 mails expected');
        assert.equal(result.mailbox.mailsDelivered, 9, 'every mail is in a mailbox');
        assert.equal(result.mailbox.mailsIntact, 9, 'every attachment digest matches');
        assert.equal(result.mailbox.mailsDuplicated, 0, 'no mail is stored twice');
        assert.equal(result.mailbox.unexpectedMessages, 0, 'no stray message');
        assert.equal(result.mailsSent, 9, 'Mclient saw a 250 for every mail');
        if (mode === 'off') assert.equal(result.channelBytes, 0, 'mode off uses no channel');
      } finally {
        await cluster.stop();
        rmSync(storageDir, { recursive: true, force: true });
      }
    });
  }
});

describe('nodemailer through port forwarding', { concurrency: false }, () => {
  let cluster: LocalCluster;
  let storageDir: string;
  let forward: ForwardView;

  before(async () => {
    storageDir = mkdtempSync(path.join(os.tmpdir(), 'xenvmc-mail-test-'));
    cluster = await LocalCluster.start({ hostNames: ['h1'], storageDir });
    const h1 = cluster.host('h1');
    await h1.client.post('/v1/domains', {
      name: 'vm1',
      memory: 32 * MiB,
      ip: '10.77.0.1',
      programs: [{ kind: 'mail-server', params: { messageBytesMax: 2 * MiB } }],
    });
    forward = await h1.client.post<ForwardView>('/v1/forwards', { domain: 'vm1', port: 25 });
  });

  after(async () => {
    await cluster?.stop();
    if (storageDir) rmSync(storageDir, { recursive: true, force: true });
  });

  const transport = () => {
    const [host, port] = [forward.listen.split(':')[0], Number(forward.listen.split(':')[1])];
    return nodemailer.createTransport({ host, port, secure: false, ignoreTLS: true, pool: false });
  };

  test('every message and attachment survives the trip, dot-stuffing and mbox quoting included', async () => {
    // Lines that test the transparency procedures: a lone dot, a leading dot, `From ` lines.
    const text = 'Hello\r\n.\r\n..two dots\r\nFrom the desk of test1\r\n>From quoted\r\n.end\r\n';
    const attachments = [0, 1, 70_000, 300_001].map((size, index) => {
      const content = Buffer.alloc(size);
      for (let i = 0; i < size; i++) content[i] = (i * 31 + index * 7) & 0xff;
      return { filename: `f${index}.bin`, content };
    });
    const sent = [];
    for (let k = 0; k < 3; k++) {
      sent.push(
        await transport().sendMail({
          from: 'test1.user@xenlab.local',
          to: ['test2.user@xenlab.local', 'test3.user@xenlab.local'],
          subject: `This is test ${k}`,
          text,
          attachments,
        }),
      );
    }
    for (const info of sent) {
      assert.deepEqual(info.rejected, [], 'no recipient refused');
      assert.match(info.response, /^250 /, `accepted with 250: ${info.response}`);
    }
    for (const mailbox of ['test2.user.mbox', 'test3.user.mbox']) {
      const file = path.join(storageDir, 'vm1', 'mail', mailbox);
      const messages = splitMbox(readFileSync(file));
      assert.equal(messages.length, 3, `${mailbox} holds the 3 mails, once each`);
      for (const [k, raw] of messages.entries()) {
        const parsed = await simpleParser(raw);
        assert.equal(parsed.subject, `This is test ${k}`, 'in order, with their subjects');
        assert.equal(parsed.text?.replace(/\n/g, '\r\n'), text, 'the text survives exactly');
        assert.equal(parsed.attachments.length, attachments.length, 'every attachment is there');
        parsed.attachments.forEach((attachment, index) => {
          const want = createHash('sha256').update(attachments[index]!.content).digest('hex');
          const got = createHash('sha256').update(attachment.content).digest('hex');
          assert.equal(got, want, `attachment ${index} of mail ${k} is intact`);
        });
      }
    }
  });

  test('limits and bad recipients get the right replies, and nothing is stored for them', async () => {
    const mailDir = path.join(storageDir, 'vm1', 'mail');
    const before = readdirSync(mailDir).sort();
    await assert.rejects(
      transport().sendMail({
        from: 'test1.user@xenlab.local',
        to: 'someone@example.com',
        subject: 'relay attempt',
        text: 'no',
      }),
      (error: { responseCode?: number }) => error.responseCode === 550,
      'a recipient outside xenlab.local is refused with 550',
    );
    await assert.rejects(
      transport().sendMail({
        from: 'test1.user@xenlab.local',
        to: 'test9.user@xenlab.local',
        subject: 'too big',
        text: 'x',
        attachments: [{ filename: 'big.bin', content: Buffer.alloc(3 * MiB, 1) }],
      }),
      (error: { responseCode?: number }) => error.responseCode === 552,
      'a message over the size limit is refused with 552',
    );
    assert.deepEqual(readdirSync(mailDir).sort(), before, 'no mailbox was created for them');
  });
});
