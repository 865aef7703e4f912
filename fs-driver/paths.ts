import { chmodSync, constants, lstatSync, mkdirSync, openSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { MountError } from './mount-error.js'

const unsafe = (msg: string) => new MountError(msg, ExitCode.unsafePath)

/**
 * Creates `dir` (mode 0700) or accepts it as it is only if it is a real directory of ours: a name
 * in a shared directory such as /tmp can be taken first by another user, as a directory of theirs
 * or a symlink to one, to read or plant what the mount writes there.
 */
export function privateDir(dir: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const st = lstatSync(dir)
  if (st.isSymbolicLink()) throw unsafe(`${dir} is a symbolic link; refusing to follow it: remove it or set XDG_RUNTIME_DIR to a directory of yours`)
  if (!st.isDirectory()) throw unsafe(`${dir} is not a directory: remove it or set XDG_RUNTIME_DIR to a directory of yours`)
  const uid = process.getuid?.()
  if (uid !== undefined && st.uid !== uid)
    throw unsafe(`${dir} belongs to uid ${st.uid}, not to you (uid ${uid}); refusing to use it: remove it or set XDG_RUNTIME_DIR to a directory of yours`)
  if (st.mode & 0o077) chmodSync(dir, 0o700)
  return dir
}

/**
 * Where a mount keeps its stats file and, as a daemon, its log, created private: under
 * $XDG_RUNTIME_DIR when set, /run/o3mount for root, else a per-user directory in the temp dir.
 */
export function runtimeDir(): string {
  const candidates = [
    process.env.XDG_RUNTIME_DIR && join(process.env.XDG_RUNTIME_DIR, 'o3mount'),
    process.getuid?.() === 0 ? '/run/o3mount' : undefined,
    join(tmpdir(), `o3mount-${process.getuid?.() ?? 'user'}`),
  ]
  let lastError: unknown
  for (const dir of candidates) {
    if (!dir) continue
    try {
      return privateDir(dir)
    } catch (err) {
      // A directory we may not create is a reason to try the next place; one that is not safe is not.
      if (err instanceof MountError) throw err
      lastError = err
    }
  }
  throw unsafe(`cannot create a private runtime directory (${(lastError as Error).message}): set XDG_RUNTIME_DIR to a directory of yours`)
}

/**
 * Opens a file the mount writes (log, stats) without following a symlink at its name; its
 * directory is created private if missing. `exclusive` also refuses a file that already exists.
 */
export function openPrivateFile(path: string, how: 'append' | 'exclusive'): number {
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW | (how === 'append' ? constants.O_APPEND : constants.O_EXCL)
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  try {
    return openSync(path, flags, 0o600)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP')
      throw unsafe(`${path} is a symbolic link; refusing to write through it: remove it or choose another path`)
    throw err
  }
}

/** A file name derived from the mountpoint, so other tools can find a mount's files from its path alone. */
function slug(mountpoint: string): string {
  return (
    resolve(mountpoint)
      .replace(/^\/+/, '')
      .replace(/[^A-Za-z0-9._-]+/g, '_') || 'root'
  )
}

/** The stats file a mount at `mountpoint` writes unless given --stats-file. */
export function defaultStatsFile(mountpoint: string): string {
  return join(runtimeDir(), `${slug(mountpoint)}.stats.json`)
}

export function defaultLogFile(mountpoint: string): string {
  return join(runtimeDir(), `${slug(mountpoint)}.log`)
}
