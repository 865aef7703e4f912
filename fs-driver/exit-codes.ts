/**
 * The mount's own exit statuses. O3 client errors keep theirs (64-78, see lib/o3/errors.ts:
 * bucket missing 66, bad credentials 77, endpoint unreachable 69), so these start at 80.
 */
export const ExitCode = {
  ok: 0,
  badOption: 80,
  mountpointMissing: 81,
  mountpointNotDirectory: 82,
  mountpointNotEmpty: 83,
  alreadyMounted: 84,
  noFuse: 85,
  mountFailed: 86,
  cacheDir: 87,
  notMounted: 88,
  internal: 89,
} as const

/** A start-up or CLI failure: one line saying what is wrong and what to do, and its exit status. */
export class MountError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message)
    this.name = 'MountError'
  }
}
