export * from './guest-memory.ts';
export * from './layout.ts';
