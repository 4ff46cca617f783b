/**
 * Progress of a running migration on stderr: a cli-progress bar on a terminal (round, pages
 * left in the round, rate), one line per round otherwise, nothing with --json --quiet.
 */
import cliProgress from 'cli-progress';
import { formatBytes } from '../core/units.ts';
import type { MigrationProgress } from '../migration/stats.ts';

export class MigrationProgressDisplay {
  private bar: cliProgress.SingleBar | null = null;
  private lastRound = -1;
  private lastPhase = '';
  private readonly interactive: boolean;
  private readonly enabled: boolean;

  constructor(init: { enabled: boolean }) {
    this.enabled = init.enabled;
    this.interactive = init.enabled && Boolean(process.stderr.isTTY);
  }

  update(progress: MigrationProgress): void {
    if (!this.enabled) return;
    const rateBytesPerSec =
      progress.elapsedMs > 0 ? (progress.bytesOnWire * 1000) / progress.elapsedMs : 0;
    const payload = {
      round: progress.round,
      phase: progress.phase,
      rate: `${formatBytes(rateBytesPerSec)}/s`,
      sent: progress.pagesSentTotal,
    };
    if (!this.interactive) {
      if (progress.round !== this.lastRound || progress.phase !== this.lastPhase) {
        process.stderr.write(
          `  ${progress.phase} round ${progress.round}: ${progress.pagesInRound} pages to send (${progress.pagesSentTotal} sent so far)\n`,
        );
      }
    } else {
      if (!this.bar) {
        this.bar = new cliProgress.SingleBar(
          {
            format:
              '  {phase} round {round} |{bar}| {value}/{total} pages | {rate} | {sent} pages sent',
            hideCursor: true,
            clearOnComplete: true,
            stream: process.stderr,
          },
          cliProgress.Presets.shades_classic,
        );
        this.bar.start(Math.max(1, progress.pagesInRound), progress.pagesSentInRound, payload);
      }
      if (progress.round !== this.lastRound) this.bar.setTotal(Math.max(1, progress.pagesInRound));
      this.bar.update(progress.pagesSentInRound, payload);
    }
    this.lastRound = progress.round;
    this.lastPhase = progress.phase;
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
