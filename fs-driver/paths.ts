import { accessSync, constants, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

/** Where a mount keeps its stats file and, as a daemon, its log: /run/o3mount for root, else a per-user directory. */
export function runtimeDir(): string {
  const candidates = [process.getuid?.() === 0 ? '/run/o3mount' : undefined, process.env.XDG_RUNTIME_DIR && join(process.env.XDG_RUNTIME_DIR, 'o3mount'), join(tmpdir(), `o3mount-${process.getuid?.() ?? 'user'}`)]
  for (const dir of candidates) {
    if (!dir) continue
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 })
      accessSync(dir, constants.W_OK)
      return dir
    } catch {
      // try the next one
    }
  }
  return tmpdir()
}

/** A file name derived from the mountpoint, so other tools can find a mount's files from its path alone. */
function slug(mountpoint: string): string {
  return resolve(mountpoint).replace(/^\/+/, '').replace(/[^A-Za-z0-9._-]+/g, '_') || 'root'
}

/** The stats file a mount at `mountpoint` writes unless given --stats-file. */
export function defaultStatsFile(mountpoint: string): string {
  return join(runtimeDir(), `${slug(mountpoint)}.stats.json`)
}

export function defaultLogFile(mountpoint: string): string {
  return join(runtimeDir(), `${slug(mountpoint)}.log`)
}
