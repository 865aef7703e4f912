import { constants, accessSync, readdirSync, statSync } from 'node:fs'
import { O3Client } from '../lib/o3/client.js'
import type { O3Config } from '../lib/o3/config.js'
import { O3AuthError, O3ClockSkewError, O3Error, O3NotFoundError, O3UnreachableError, O3UntrustedServerError } from '../lib/o3/errors.js'
import type { Logger } from '../lib/log.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { oneLine } from '../lib/cli/run-cli.js'
import { MountError } from './mount-error.js'
import { findMount, fusermountUnmount, fusermountVersion } from './mount-table.js'
import { loadMountAddon } from './native-mount.js'

/**
 * /dev/fuse, fusermount (for --unmount and to clear a dead mount), libfuse 3 (through the mount's
 * native addon) and, for a user other than root, libfuse 3's own fusermount3 (root mounts through
 * /dev/fuse directly).
 */
export async function checkFuse(): Promise<void> {
  try {
    if (!statSync('/dev/fuse').isCharacterDevice()) throw new Error('not a device')
    accessSync('/dev/fuse', constants.R_OK | constants.W_OK)
  } catch {
    throw new MountError(
      '/dev/fuse is missing or not accessible; load the fuse module (modprobe fuse) or run the container with --device /dev/fuse',
      ExitCode.noFuse,
    )
  }
  try {
    await fusermountVersion()
  } catch {
    throw new MountError('fusermount is not installed; install it with apt-get install -y fuse', ExitCode.noFuse)
  }
  try {
    loadMountAddon()
  } catch (err) {
    throw new MountError(oneLine(err), ExitCode.noFuse)
  }
  if (process.getuid?.() !== 0 && !onPath('fusermount3'))
    throw new MountError('mounting as a user other than root needs fusermount3 (libfuse 3); install it with apt-get install -y fuse3', ExitCode.noFuse)
}

function onPath(command: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => {
    try {
      accessSync(`${dir || '.'}/${command}`, constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

/** The mountpoint exists, is a directory, is empty and is not mounted; a mount left by a crashed daemon is cleared. */
export async function checkMountpoint(mountpoint: string, log: Logger): Promise<void> {
  if (findMount(mountpoint)) {
    let stale = false
    try {
      statSync(mountpoint)
    } catch (err) {
      stale = (err as NodeJS.ErrnoException).code === 'ENOTCONN'
    }
    if (!stale) throw new MountError(`${mountpoint} is already mounted; unmount it first (o3mount --unmount ${mountpoint})`, ExitCode.alreadyMounted)
    log.warn({ mountpoint }, 'clearing a stale mount left by a process that died (ENOTCONN)')
    try {
      await fusermountUnmount(mountpoint)
    } catch (err) {
      throw new MountError(
        `${mountpoint} holds a dead mount that fusermount could not clear (${oneLine(err)}); run fusermount -u -z ${mountpoint}`,
        ExitCode.alreadyMounted,
      )
    }
  }
  let st
  try {
    st = statSync(mountpoint)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new MountError(`mountpoint ${mountpoint} does not exist; create it with mkdir -p ${mountpoint}`, ExitCode.mountpointMissing)
    throw new MountError(`cannot stat mountpoint ${mountpoint} (${code}); check its path and permissions`, ExitCode.mountpointMissing)
  }
  if (!st.isDirectory()) throw new MountError(`mountpoint ${mountpoint} is not a directory; give an empty directory`, ExitCode.mountpointNotDirectory)
  if (readdirSync(mountpoint).length > 0) throw new MountError(`mountpoint ${mountpoint} is not empty; give an empty directory`, ExitCode.mountpointNotEmpty)
}

/**
 * The bucket exists and the credentials are accepted, asked with a short retry policy so that a
 * wrong endpoint fails in seconds, not after the data path's full retry span.
 */
export async function checkBucket(location: string, config: O3Config): Promise<void> {
  const client = O3Client.open(location, { config, retry: { maxAttempts: 2, baseDelayMs: 250 }, connectTimeoutMs: 5_000, requestTimeoutMs: 15_000 })
  const bucket = client.scope.bucket
  try {
    await client.checkBucket()
  } catch (err) {
    if (err instanceof O3NotFoundError)
      throw new MountError(`bucket ${bucket} does not exist at ${config.endpoint}; check the name (and O3_ENDPOINT)`, err.exitCode)
    if (err instanceof O3ClockSkewError) throw new MountError(err.message, err.exitCode)
    if (err instanceof O3AuthError)
      throw new MountError(
        `the server rejected the credentials for bucket ${bucket}; check O3_ACCESS_KEY_ID / O3_SECRET_ACCESS_KEY (from ${config.sources.credentials}) and the region`,
        err.exitCode,
      )
    if (err instanceof O3UntrustedServerError) throw new MountError(err.message, err.exitCode)
    if (err instanceof O3UnreachableError)
      throw new MountError(`cannot reach ${config.endpoint} (from ${config.sources.endpoint}); check O3_ENDPOINT and the network`, err.exitCode)
    if (err instanceof O3Error) throw new MountError(oneLine(err), err.exitCode)
    throw err
  } finally {
    client.close()
  }
}
