/** One line of the README's performance table. Each bench module returns its rows. */
export interface BenchRow {
  /** The area measured, e.g. "O3 client", "o3mount", "trainer", "checkpoints". */
  area: string
  /** What was measured, e.g. "ranged GET, 8 parallel streams, 1 GiB". */
  case: string
  /** The measured value, already formatted with its unit, e.g. "412 MB/s". */
  value: string
  /** The target from the issue and whether it was met, e.g. ">= 0.8x ceiling: met (0.91x)". */
  target?: string
  /** Peers or context measured in the same run, e.g. "s3fs 390 MB/s, rclone 201 MB/s". */
  note?: string
}

/** What `npm run bench` hands every module: one S3 server for the run, and numbers shared between modules. */
export interface BenchContext {
  server: { endpoint: string; region: string; accessKeyId: string; secretAccessKey: string; dir: string }
  /** A scratch directory removed after the run. */
  workDir: string
  /** Raw numbers later modules compare against, e.g. metrics['o3.rangedGet.parallelMBps']. */
  metrics: Record<string, number>
  /** Progress lines for the person waiting. */
  log(line: string): void
}

export type BenchModule = (ctx: BenchContext) => Promise<BenchRow[]>
