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

/** The mount at exactly `mountpoint` in /proc/self/mountinfo (the top one, if stacked); no FUSE request is made. */
export function findMount(mountpoint: string): MountInfo | undefined {
  let found: MountInfo | undefined
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ')
    if (f.length < 10 || unescape(f[4]!) !== mountpoint) continue
    const dash = f.indexOf('-', 6)
    found = { device: f[2]!, fsType: f[dash + 1] ?? '', source: unescape(f[dash + 2] ?? '') }
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
