/**
 * Goal: with `--migrate-channel-pages`, channel regions travel as CHANNEL_PAGES records: all
 * pages first, then only the pages that changed, then all of them at the pause; a corrupted
 * record is refused; the decoder accepts them between page batches and nowhere else.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { defaultLayout } from '../memory/layout.ts';
import { ChannelPagesTracker } from './channel-pages.ts';
import {
  encodeChannelPages,
  encodeDomainInfo,
  encodeEnd,
  encodeGuestState,
  encodeHeader,
  StreamDecoder,
  tallyRecords,
} from './codec.ts';
import { MigrationError } from './errors.ts';

describe('ChannelPagesTracker', () => {
  it('takes every page first, then the changed ones, then all of them at the pause', () => {
    const region = new SharedArrayBuffer(4 * 4096);
    const tracker = new ChannelPagesTracker(() => [region]);
    assert.equal(tracker.take(false).length, 4, 'round 1 sends every channel page');
    assert.equal(tracker.take(false).length, 0, 'nothing changed since');
    new Uint8Array(region)[2 * 4096 + 7] = 9;
    const changed = tracker.take(false);
    assert.equal(changed.length, 1, 'one page changed');
    assert.equal(changed[0]![7], 9, 'and it is a copy of that page');
    assert.equal(tracker.take(true).length, 4, 'the pause marks every page dirty');
  });
});

describe('CHANNEL_PAGES records', () => {
  const info = {
    name: 'vm',
    domId: 1,
    pageCount: 4096,
    layout: defaultLayout(4096),
    ip: null,
    tenant: 't',
    programs: [],
  };
  const pages = [new Uint8Array(4096).fill(1), new Uint8Array(4096).fill(2)];

  it('decode between page batches, before and after the guest state', () => {
    const decoder = new StreamDecoder();
    const sent = [
      encodeHeader(),
      encodeDomainInfo(info),
      encodeChannelPages(pages),
      encodeGuestState(Uint8Array.of(1, 2, 3)),
      encodeChannelPages(pages.slice(0, 1)),
    ];
    const records = [...sent, encodeEnd(tallyRecords(sent))].flatMap((bytes) =>
      decoder.push(bytes),
    );
    const channel = records.filter((r) => r.type === 'channelPages');
    assert.deepEqual(
      channel.map((r) => (r.type === 'channelPages' ? r.pageCount : -1)),
      [2, 1],
      'both records decoded',
    );
    decoder.finish();
  });

  it('refuses a corrupted channel page', () => {
    const decoder = new StreamDecoder();
    decoder.push(encodeHeader());
    decoder.push(encodeDomainInfo(info));
    const record = encodeChannelPages(pages);
    record[record.length - 100] = record[record.length - 100]! ^ 0xff;
    assert.throws(
      () => decoder.push(record),
      (error: unknown) => error instanceof MigrationError && error.code === 'STREAM_CHECKSUM',
      'a corrupted channel page fails its CRC-32 check',
    );
  });
});
