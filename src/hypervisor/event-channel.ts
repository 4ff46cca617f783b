/**
 * An event channel between a domain and Dom0, as in Xen: a pending bit per direction in shared
 * memory plus a notification. The sender raises the bit and notifies only if it was clear;
 * the receiver clears it before it looks at the ring, so a raise that races with the look
 * always produces a fresh notification, and a burst of raises costs one notification.
 *
 * Notifications are worker `postMessage`s: on this machine they cost about the same as an
 * `Atomics.notify` wake (20 us vs 10-16 us, reference/machine-limits.md §2), they keep the
 * worker's event loop alive (a pending `Atomics.waitAsync` does not, in Node 20), and they
 * arrive as ordinary events between two guest events.
 */
export type EventDirection = 'toDom0' | 'toGuest';

const WORD: Record<EventDirection, number> = { toDom0: 0, toGuest: 16 };

export class EventChannel {
  readonly buffer: SharedArrayBuffer;
  private readonly words: Int32Array;

  constructor(buffer: SharedArrayBuffer = new SharedArrayBuffer(128)) {
    this.buffer = buffer;
    this.words = new Int32Array(buffer);
  }

  /** Sets the pending bit; true if it was clear (the caller must send a notification). */
  raise(direction: EventDirection): boolean {
    return Atomics.exchange(this.words, WORD[direction], 1) === 0;
  }

  /** Clears the pending bit, before the receiver looks for work. */
  clear(direction: EventDirection): void {
    Atomics.store(this.words, WORD[direction], 0);
  }
}
