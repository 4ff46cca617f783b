/**
 * Reading a TCP socket into one reused buffer, whoever opened the socket.
 *
 * Node gives every read of a socket a fresh 64 KiB Buffer and passes it through the Readable
 * stream machinery ('data' events). For a migration target landing 1 GiB that is 16,384
 * allocations and as many stream pushes, and V8 then runs a scavenge "for external memory
 * pressure" about every 25 ms; measured here, a bare receiver that copies what it reads into a
 * SharedArrayBuffer and checksums every page ran at 0.89-1.07 GB/s with 'data' events and at
 * 1.37-1.47 GB/s reading into one reused 1 MiB buffer (Node's `onread` option).
 *
 * Node 20 offers `onread` only to sockets it creates (`new net.Socket({ onread })`), not to the
 * sockets a server accepts, and the migration stream arrives on an accepted one. `readInto`
 * therefore installs, on an accepted socket, exactly the state that `onread` installs on a
 * created one: Node's own three symbol-keyed fields (found by description on a probe socket
 * made with `onread`) and the handle's `useUserBuffer`. That is Node's internal interface, not
 * its public one: where it is missing (another Node version, another handle type), `readInto`
 * falls back to 'data' events (each a fresh chunk, which meets the same contract), and says
 * which it used. Both paths are tested on every run
 * (`read-into.test.ts`).
 *
 * Contract, as for `onread`: `onBytes(bytes)` gets a view of the reused buffer, valid only
 * until it returns (copy what you keep); returning false pauses the socket (`socket.resume()`
 * reads on). 'end', 'error' and 'close' are emitted as usual.
 */
import net from 'node:net';

export type ReadIntoPath = 'reused-buffer' | 'data-events';

interface OnreadInternals {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let internals: OnreadInternals | null | undefined;

/** Node's `onread` fields, found on a probe socket; null if this Node has no such fields. */
function onreadInternals(): OnreadInternals | null {
  if (internals !== undefined) return internals;
  // Node 20 takes `onread` in the constructor; @types/node lists it only for `connect`.
  const onread = { buffer: Buffer.alloc(1), callback: () => true };
  const probe = new net.Socket({ onread } as net.SocketConstructorOpts);
  const find = (description: string) =>
    Object.getOwnPropertySymbols(probe).find((symbol) => symbol.description === description);
  const buffer = find('kBuffer');
  const callback = find('kBufferCb');
  const generator = find('kBufferGen');
  probe.destroy();
  internals =
    buffer && callback && generator && (probe as unknown as Record<symbol, unknown>)[buffer]
      ? { buffer, callback, generator }
      : null;
  return internals;
}

interface HandleWithUserBuffer {
  useUserBuffer?: (buffer: Uint8Array) => void;
}

/**
 * Makes `socket` read into `buffer` and hand each read to `onBytes` (see the module comment).
 * Call it before the socket's first read is consumed (a paused socket, or one just accepted).
 *
 * @param options.path force a path (tests); by default the reused buffer where Node allows.
 * @returns the path taken.
 */
export function readInto(
  socket: net.Socket,
  buffer: Uint8Array,
  onBytes: (bytes: Uint8Array) => boolean | undefined,
  options: { path?: ReadIntoPath } = {},
): ReadIntoPath {
  // Chunks Node had already buffered before this call, and every chunk on the fallback path,
  // come as 'data' events; a fresh chunk outlives the call, so it meets the contract as is.
  socket.on('data', (chunk: Buffer) => {
    if (onBytes(chunk) === false) socket.pause();
  });
  const found = options.path === 'data-events' ? null : onreadInternals();
  const handle = (socket as unknown as { _handle?: HandleWithUserBuffer })._handle;
  if (found !== null && typeof handle?.useUserBuffer === 'function') {
    const fields = socket as unknown as Record<symbol, unknown>;
    fields[found.buffer] = buffer;
    fields[found.callback] = (length: number) => onBytes(buffer.subarray(0, length)) !== false;
    fields[found.generator] = null;
    handle.useUserBuffer(buffer);
    return 'reused-buffer';
  }
  if (options.path === 'reused-buffer') {
    throw new Error('readInto: this Node offers no reused-buffer reads on this socket');
  }
  return 'data-events';
}
