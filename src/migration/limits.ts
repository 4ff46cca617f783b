/**
 * Bounds of the migration stream, each with the reason for its value. Every length read from
 * the wire is checked against one of these before anything is allocated or buffered, so a
 * corrupt or hostile peer costs at most one bounded record of memory (libp2p `doc/LIMITS.md`).
 */
import { PAGE_SIZE_BYTES } from '../core/units.ts';

/**
 * Pages per PAGE_BATCH record. Xen's `MAX_BATCH_SIZE` (xg_sr_common.h) is 1024: 4 MiB of data
 * per record amortises the per-record work (header, checksums, one allocation) to well under
 * 1 % while keeping the receiver's partial-record buffer small.
 */
export const MAX_BATCH_PAGES = 1024;

/**
 * DOMAIN_INFO body (UTF-8 JSON): name, ids, layout (four regions) and program descriptors.
 * A few KiB in practice; 64 KiB leaves room for program descriptors without letting a peer
 * make us parse megabytes of JSON.
 */
export const MAX_DOMAIN_INFO_BYTES = 64 * 1024;

/**
 * GUEST_STATE body: the v8-serialised vCPU/device/program control state. Bulk data lives in
 * guest pages (ARCHITECTURE principle 1), so this is normally KiB; 16 MiB bounds what the
 * receiver buffers while the domain is paused, i.e. it bounds the downtime it can add
 * (16 MiB at 1 Gbit/s is about 134 ms).
 */
export const MAX_GUEST_STATE_BYTES = 16 * 1024 * 1024;

/** Bytes before the per-page arrays in a PAGE_BATCH body: u32 round, u32 count, u32 metaCrc. */
export const PAGE_BATCH_FIXED_BYTES = 12;

/**
 * The largest legal PAGE_BATCH body: a full batch of `MAX_BATCH_PAGES` non-zero pages plus its
 * header arrays (u32 pageIndex, u32 pageCrc and u8 kind per page; 1024 kinds need no padding).
 * 12 + 1024 x 9 + 1024 x 4096 = 4,203,532 bytes.
 *
 * This is the bound for the bulk record, the one that sizes buffers on the hot path. The
 * GUEST_STATE record, sent once per migration, has its own larger bound
 * (`MAX_GUEST_STATE_BYTES`); `MAX_ANY_RECORD_BODY_BYTES` is the bound over all types.
 */
export const MAX_RECORD_BODY_BYTES =
  PAGE_BATCH_FIXED_BYTES + MAX_BATCH_PAGES * (4 + 4 + 1) + MAX_BATCH_PAGES * PAGE_SIZE_BYTES;

/** The largest body of any record type (today GUEST_STATE's). */
export const MAX_ANY_RECORD_BODY_BYTES = Math.max(
  MAX_RECORD_BODY_BYTES,
  MAX_GUEST_STATE_BYTES,
  MAX_DOMAIN_INFO_BYTES,
);

/**
 * First word of the HEADER body: 'XMIG' read as a big-endian word (on the little-endian wire
 * the bytes are 47 49 4d 58). Lets the receiver reject a peer that is not a migration sender
 * with a clear message instead of a confusing record error further on.
 */
export const STREAM_MAGIC = 0x584d4947;

/** Stream format version; bump on any incompatible change to the record layouts. */
export const STREAM_VERSION = 3;
