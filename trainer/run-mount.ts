import { mkdirSync, mkdtempSync, rmdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { launchMount } from '../fs-driver/launch.js'
import { MAX_SOCKET_PATH } from '../fs-driver/control-socket.js'
import { fusermountUnmount } from '../fs-driver/mount-table.js'
import { o3FlagsToArgv } from '../lib/cli/o3-flags.js'
import { withoutSigningKey } from '../lib/content/signer.js'
import type { O3Flags } from '../lib/o3/index.js'

export interface RunMount {
  dir: string
  pid: number
  /** The mount's control socket, to which the run announces its read order; absent when its path would be too long. */
  controlSocket?: string
  /** Its stats file, written a last time when it stops. */
  statsFile: string
  /** Unmounts and removes the mountpoint; safe to call twice and after the mount died. */
  close(): Promise<void>
}

/**
 * Mounts `o3://bucket/prefix` for one run at `mountpoint` (made here, mode 0700), or at a fresh
 * directory under the temp dir; the mount goes away with the run, even if the run is killed. Its
 * log and control socket go beside each other in `logFile`'s directory, which must be private to
 * this run.
 */
export async function mountForRun(location: string, o: O3Flags, logFile: string, mountpoint?: string): Promise<RunMount> {
  if (mountpoint) mkdirSync(mountpoint, { mode: 0o700 })
  const dir = mountpoint ?? mkdtempSync(join(tmpdir(), 'o3train-data-'))
  const socket = join(dirname(logFile), 'control.sock')
  const controlSocket = Buffer.byteLength(socket) <= MAX_SOCKET_PATH ? socket : undefined
  const args = [dir, location, '--metadata-ttl', 'indefinite', ...(controlSocket ? ['--control-socket', controlSocket] : []), ...o3FlagsToArgv(o)]
  let launched
  try {
    // The mount reads objects; it never signs, so it never sees the signing key.
    launched = await launchMount(args, { logFile, detached: false, env: withoutSigningKey(process.env) })
  } catch (err) {
    rmdirSync(dir)
    throw err
  }
  const { child, exited, info } = launched
  let closing: Promise<void> | undefined
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
    }
    // A mount that was killed leaves the mountpoint disconnected (ENOTCONN) until it is lazily
    // unmounted; after a clean stop there is nothing to unmount.
    await fusermountUnmount(dir).catch(() => {})
    rmdirSync(dir)
  }
  return {
    dir,
    pid: info.pid,
    controlSocket,
    statsFile: info.statsFile,
    // A second call (a forced stop racing the normal end) waits for the first to finish.
    close: () => (closing ??= close()),
  }
}
