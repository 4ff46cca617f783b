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
  /** Runs `callback` after `delayMs`; `unref` timers do not keep the process alive. */
  setTimer(delayMs: number, callback: () => void, options?: { unref?: boolean }): TimerHandle;
}

export const realClock: Clock = {
  nowMs: () => performance.now(),
  setTimer(delayMs, callback, options) {
    const timer = setTimeout(callback, Math.max(0, delayMs));
    if (options?.unref) timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
};

/** Resolves after `delayMs` on the real clock. */
export function sleepMs(delayMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, delayMs));
}
