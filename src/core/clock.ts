/**
 * Time as an interface, so protocol logic can later run under simulated time.
 * `realClock` is the only place outside `cli/` that reads the wall clock.
 */
export interface TimerHandle {
  cancel(): void;
}

export interface Clock {
  /** Monotonic milliseconds (fractional). */
  nowMs(): number;
  /**
   * Runs `callback` after `delayMs`; `unref` timers do not keep the process alive. A delay of
   * 0 runs it on the next turn of the event loop (not after Node's 1 ms timer minimum).
   */
  setTimer(delayMs: number, callback: () => void, options?: { unref?: boolean }): TimerHandle;
}

export const realClock: Clock = {
  nowMs: () => performance.now(),
  setTimer(delayMs, callback, options) {
    if (delayMs <= 0) {
      // setTimeout(0) waits at least 1 ms: too long for a guest kernel that yields to Dom0
      // between two batches of socket events.
      const immediate = setImmediate(callback);
      if (options?.unref) immediate.unref();
      return { cancel: () => clearImmediate(immediate) };
    }
    const timer = setTimeout(callback, delayMs);
    if (options?.unref) timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
};

/** Resolves after `delayMs` on the real clock. */
export function sleepMs(delayMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, delayMs));
}
