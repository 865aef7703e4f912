import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface MountInfo {
  /** `major:minor` of the mount's anonymous device. */
  device: string
  fsType: string
  source: string
}

const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))

/** Every mount in /proc/self/mountinfo, in its order (a stacked mount after the one it covers). */
function mounts(): (MountInfo & { mountpoint: string })[] {
  const out: (MountInfo & { mountpoint: string })[] = []
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ')
    if (f.length < 10) continue
    const dash = f.indexOf('-', 6)
    out.push({ mountpoint: unescape(f[4]!), device: f[2]!, fsType: f[dash + 1] ?? '', source: unescape(f[dash + 2] ?? '') })
  }
  return out
}

/** The mount at exactly `mountpoint` in /proc/self/mountinfo (the top one, if stacked); no FUSE request is made. */
export function findMount(mountpoint: string): MountInfo | undefined {
  return mounts()
    .filter((m) => m.mountpoint === mountpoint)
    .at(-1)
}

/** The mount an absolute, normalised `path` lies in: the deepest mountpoint above it (the top one, if stacked). */
export function mountContaining(path: string): (MountInfo & { mountpoint: string }) | undefined {
  let found: (MountInfo & { mountpoint: string }) | undefined
  for (const m of mounts()) {
    const inside = m.mountpoint === '/' || path === m.mountpoint || path.startsWith(`${m.mountpoint}/`)
    if (inside && (!found || m.mountpoint.length >= found.mountpoint.length)) found = m
  }
  return found
}

/** Fails when fusermount is not installed. */
export async function fusermountVersion(): Promise<string> {
  return (await run('fusermount', ['-V'])).stdout.trim()
}

/** Lazy unmount; also what clears a mount whose daemon died (ENOTCONN). */
export async function fusermountUnmount(mountpoint: string, lazy = true): Promise<void> {
  await run('fusermount', lazy ? ['-u', '-z', mountpoint] : ['-u', mountpoint])
}
