/**
 * What the paper reports, as constants with the text they come from, so the report can set
 * our measurements beside them and nobody has to re-read the paper to check a number.
 *
 * The paper (`../shared/paper/000_f5bce386d15dd6b0.txt`, summarised in `SYNOPSIS.md`, section
 * 11) publishes graphs only: Figures 10 and 12 (total migration time vs the number of mails,
 * 1 MB and 3 MB attachments) and Figure 11 (network volume over time). It gives no table of
 * per-point values, no repetitions and no spread, so the only numbers we can compare with are
 * the three quoted below. Anything else read off its figures would be our guess, not its claim.
 */

/** One figure the paper states, with the sentence it comes from. */
export interface PaperClaim {
  /** A short name for the claim, used as a row label. */
  label: string;
  /** The paper's value, in `unit`; null when the claim is qualitative. */
  value: number | null;
  unit: string;
  /** Where in the paper, e.g. `section 11, Figure 11`. */
  where: string;
  /** The claim in the paper's words (translated from the Arabic, as in SYNOPSIS.md). */
  source: string;
}

/** One of the paper's two test tables: n x n mails from Mclient, each with one attachment. */
export interface PaperTable {
  /** The table name our scenarios use for it. */
  table: string;
  /** How the paper names it. */
  label: string;
  /** The paper's figure of total migration time for this table. */
  figure: string;
  nValues: readonly number[];
  /** n x n, as the paper's table lists them. */
  mails: readonly number[];
  /** The attachment size as the paper writes it ("Filesize/mb"); it does not say 10^6 or 2^20. */
  fileSizeMb: number;
}

/** The mode the paper calls "the proposed model" (Advance-XENVMC). */
export const PAPER_PROPOSED_MODE = 'advance';
/** The mode the paper calls "the base model" (the original XENVMC, channel cut at migration). */
export const PAPER_BASE_MODE = 'xenvmc';

/** True: the paper shows graphs only; it has no per-point numbers to compare with. */
export const PAPER_HAS_PER_POINT_NUMBERS = false;

export const PAPER_PER_POINT_NOTE =
  'The paper publishes graphs only (Figures 10-12): no per-point values, repetitions or spread. ' +
  'The figures quoted here are the only numbers it states; per-point comparison with it is not possible.';

export const PAPER_TABLES: readonly PaperTable[] = [
  {
    table: 'table1',
    label: 'Table 1 (test 1)',
    figure: 'Figure 10',
    nValues: [4, 8, 12, 16, 20],
    mails: [16, 64, 144, 256, 400],
    fileSizeMb: 1,
  },
  {
    table: 'table2',
    label: 'Table 2 (test 2)',
    figure: 'Figure 12',
    nValues: [4, 8, 12, 16, 20],
    mails: [16, 64, 144, 256, 400],
    fileSizeMb: 3,
  },
];

/** Up to 50 % lower total migration time with the proposed model, more as mails grow. */
export const PAPER_TMIG_REDUCTION_MAX: PaperClaim = {
  label: 'Tmig reduction, proposed vs base model (max over points)',
  value: 0.5,
  unit: 'fraction',
  where: 'section 11, Figure 10; and the conclusion',
  source:
    'The proposed model improved the total live-migration time markedly, more clearly as the ' +
    'number of requests (mails) grows, the improvement reaching 50 percent.',
};

/** Figure 11: the proposed model's transfer ends at about 245 s. */
export const PAPER_TRANSFER_END_PROPOSED_S: PaperClaim = {
  label: 'Transfer ends, proposed model (Figure 11)',
  value: 245,
  unit: 's',
  where: 'section 11, Figure 11',
  source:
    'Transfer peaks at the start in both plots (round 1 sends all memory); with the proposed ' +
    'model the transfer stops when migration ends at 245 s, while with the base model data ' +
    'transfer continues to 350 s.',
};

/** Figure 11: the base model's transfer continues to about 350 s. */
export const PAPER_TRANSFER_END_BASE_S: PaperClaim = {
  label: 'Transfer ends, base model (Figure 11)',
  value: 350,
  unit: 's',
  where: 'section 11, Figure 11',
  source: PAPER_TRANSFER_END_PROPOSED_S.source,
};

/** 3 MB attachments: both models take longer; the proposed one still wins, more with more mails. */
export const PAPER_LARGER_FILES: PaperClaim = {
  label: '3 MB attachments vs 1 MB',
  value: null,
  unit: '',
  where: 'section 11, Figure 12',
  source:
    'Larger files increased the network load and the total migration time in both models; the ' +
    'proposed model still improved the total time markedly, more clearly as requests grow.',
};

/** How the paper measured, where it differs from us; printed beside the comparison. */
export const PAPER_METHOD_NOTES: readonly string[] = [
  "The paper's Tmig (XenMotion) runs from the migrate command until the VM runs on the " +
    'target, so it includes preparation; ours starts at round 1 and reports setup apart.',
  "Figure 11's x axis is the experiment's time, sampled by NMON as 30 s averages; ours is " +
    'seconds since the migrate command, at the runner sampling interval.',
  'Paper testbed: three PCs (Core i3, 4 GB RAM, CentOS 7, Xen PV), 1 Gbit/s network.',
];

/** Every claim, in report order. */
export const PAPER_CLAIMS: readonly PaperClaim[] = [
  PAPER_TMIG_REDUCTION_MAX,
  PAPER_TRANSFER_END_PROPOSED_S,
  PAPER_TRANSFER_END_BASE_S,
  PAPER_LARGER_FILES,
];
