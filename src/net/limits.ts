/**
 * Bounds of guest networking, each with the reason for its default (STYLE.md §3).
 *
 * Ring and buffer sizes decide how many distinct guest pages inter-VM traffic dirties, which
 * is what the paper measures, so they default to what Xen and Linux use and every one of them
 * can be overridden where the structure is created.
 */

/** Xen's netfront rings have 256 slots (`NET_TX_RING_SIZE` for a 4 KiB ring page). */
export const NETFRONT_SLOT_COUNT = 256;

/** One slot holds one frame in one granted 4 KiB page, as netfront's `skb` fragments do. */
export const NETFRONT_SLOT_SIZE_BYTES = 4096;

/**
 * Default size of a stream's send buffer and of its receive buffer, each in the 'sockbuf'
 * region. Linux starts TCP buffers near this size before autotuning (`tcp_wmem`/`tcp_rmem`
 * middle values are 16 KiB and 128 KiB; autotuning grows them to a few MiB); 256 KiB keeps a
 * window of 64 full netfront slots in flight, enough for the ring not to starve.
 */
export const STREAM_SEND_BUFFER_BYTES = 256 * 1024;
/** @see STREAM_SEND_BUFFER_BYTES */
export const STREAM_RECEIVE_BUFFER_BYTES = 256 * 1024;

/**
 * Largest socket buffer we accept (per direction). Linux's autotuning ceiling
 * (`tcp_rmem` max) is 6 MiB by default; 64 MiB bounds a typo, not a real configuration.
 */
export const STREAM_BUFFER_BYTES_MAX = 64 * 1024 * 1024;

/**
 * First retransmit timeout, and the value it returns to whenever the peer acknowledges
 * progress or the kernel rewinds a stream explicitly (a migration pause is not congestion).
 * Linux's `TCP_RTO_MIN` is 200 ms.
 */
export const RETRANSMIT_TIMEOUT_MS_MIN = 200;

/**
 * Ceiling of the exponential backoff (doubling per timeout). Far below Linux's 120 s: peers
 * here are in one data centre, and a stream must resume within a couple of seconds of a
 * migrated domain coming back, even when nobody tells the sender to rewind.
 */
export const RETRANSMIT_TIMEOUT_MS_MAX = 2000;

/**
 * How long the kernel should keep a closed stream (TCP's TIME_WAIT) so that it can still
 * acknowledge a retransmitted FIN whose acknowledgement was lost: two full backoff periods.
 */
export const STREAM_LINGER_MS = 2 * RETRANSMIT_TIMEOUT_MS_MAX;

/**
 * Largest stream offset a frame may carry: offsets are f64 on the wire, exact up to 2^53
 * (8 PiB per connection, far beyond any run).
 */
export const STREAM_OFFSET_MAX = 2 ** 53;
