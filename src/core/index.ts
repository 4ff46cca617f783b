export * from './clock.ts';
export * from './errors.ts';
export * from './ipv4.ts';
export * from './random.ts';
export * from './units.ts';
