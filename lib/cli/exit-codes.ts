/**
 * Every command's exit statuses, in one table. The O3 errors use the sysexits.h numbers (64-78) so
 * that scripts can tell a missing bucket from bad credentials; o3mount's start-up checks take 80-89
 * and o3train's own failures 90-91. README.md's exit-code table is checked against this one.
 */
export const ExitCode = {
  ok: 0,
  usage: 64,
  integrity: 65,
  notFound: 66,
  unreachable: 69,
  internal: 70,
  stream: 74,
  auth: 77,
  config: 78,
  badOption: 80,
  mountpointMissing: 81,
  mountpointNotDirectory: 82,
  mountpointNotEmpty: 83,
  alreadyMounted: 84,
  noFuse: 85,
  mountFailed: 86,
  cacheDir: 87,
  notMounted: 88,
  unsafePath: 89,
  addon: 90,
  training: 91,
  interrupted: 130,
} as const

export type ExitCodeName = keyof typeof ExitCode

/** What each status means and which commands give it: the README's table is rendered from this. */
export const EXIT_MEANING: Record<ExitCodeName, { meaning: string; commands: string }> = {
  ok: { meaning: 'success', commands: 'all' },
  usage: { meaning: 'bad arguments or options (`O3UsageError`: also a key outside the prefix, a range past the end)', commands: 'o3train, o3ckpt, o3upload' },
  integrity: { meaning: 'content does not match its checksum, CID, ETag or trusted signer (`O3IntegrityError`)', commands: 'all' },
  notFound: { meaning: 'no such bucket or key (`O3NotFoundError`)', commands: 'all' },
  unreachable: { meaning: 'the endpoint cannot be reached (`O3UnreachableError`)', commands: 'all' },
  internal: { meaning: 'an unexpected internal error (a bug: please report it with the log)', commands: 'all' },
  stream: { meaning: 'a transfer failed after retries (`O3StreamError`)', commands: 'all' },
  auth: { meaning: 'bad or missing credentials, never retried (`O3AuthError`)', commands: 'all' },
  config: { meaning: 'unusable configuration: endpoint, key file, private key (`O3ConfigError`)', commands: 'all' },
  badOption: { meaning: 'bad option or option value', commands: 'o3mount' },
  mountpointMissing: { meaning: 'mountpoint missing', commands: 'o3mount' },
  mountpointNotDirectory: { meaning: 'mountpoint is not a directory', commands: 'o3mount' },
  mountpointNotEmpty: { meaning: 'mountpoint is not empty', commands: 'o3mount' },
  alreadyMounted: { meaning: 'mountpoint already mounted', commands: 'o3mount' },
  noFuse: { meaning: 'no `/dev/fuse` or libfuse', commands: 'o3mount' },
  mountFailed: { meaning: 'the mount itself failed', commands: 'o3mount, o3train' },
  cacheDir: { meaning: 'cache directory unusable', commands: 'o3mount' },
  notMounted: { meaning: '`--unmount` of something not mounted', commands: 'o3mount' },
  unsafePath: {
    meaning: 'a runtime, log, stats or control-socket path is unsafe: a symlink, a directory of another user, a file that is not a socket, a socket in use',
    commands: 'o3mount, o3train',
  },
  addon: { meaning: 'the native addon cannot be loaded', commands: 'o3train' },
  training: { meaning: 'training failed (e.g. the data mount went away)', commands: 'o3train' },
  interrupted: {
    meaning:
      'stopped by SIGINT/SIGTERM before it finished (o3train: by a second one; o3mount: before the mount was up), with nothing half-written: uploads in flight aborted, a partial download removed',
    commands: 'o3train, o3ckpt put, o3ckpt get, o3upload, o3mount',
  },
}

/** The exit-code table as Markdown, as it stands in README.md between its exit-codes markers. */
export function exitCodeTable(): string {
  const rows = (Object.keys(ExitCode) as ExitCodeName[]).map((k) => `| ${ExitCode[k]} | ${EXIT_MEANING[k].meaning} | ${EXIT_MEANING[k].commands} |`)
  return ['| exit code | meaning | commands |', '|---|---|---|', ...rows].join('\n')
}

/** A failure a command reports as one line with its own exit status. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message)
    this.name = new.target.name
  }
}
