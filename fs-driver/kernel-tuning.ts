import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import type { Logger } from '../lib/log.js'
import { findMount } from './mount-table.js'

/**
 * The connection's background request limits, named as both libfuse's mount options and the
 * fusectl files call them. Past the congestion threshold the kernel stops queueing readahead;
 * three quarters of max_background is the kernel's own default ratio.
 */
export function backgroundLimits(maxBackground: number): { max_background: number; congestion_threshold: number } {
  return { max_background: maxBackground, congestion_threshold: Math.floor((maxBackground * 3) / 4) }
}

/**
 * Raises the kernel side of the mount: its readahead (the bdi's read_ahead_kb, which libfuse can
 * only lower) and, where the fusectl filesystem is mounted, the connection's background request
 * limit. Failure only costs speed, so it is logged, not fatal.
 */
export function tuneKernel(mountpoint: string, o: { readAheadKb: number; maxBackground: number }, log: Logger): void {
  const m = findMount(mountpoint)
  if (!m) {
    log.warn({ mountpoint }, 'mount not found in /proc/self/mountinfo; kernel readahead left as is')
    return
  }
  const done: Record<string, number> = {}
  const write = (path: string, value: number) => {
    try {
      writeFileSync(path, `${value}\n`)
      done[path] = Number(readFileSync(path, 'utf8'))
    } catch (err) {
      log.warn({ path, code: (err as NodeJS.ErrnoException).code }, 'cannot raise a kernel limit for the mount (needs root); reads will be slower')
    }
  }
  write(`/sys/class/bdi/${m.device}/read_ahead_kb`, o.readAheadKb)
  const minor = m.device.split(':')[1]!
  const conn = `/sys/fs/fuse/connections/${minor}`
  if (existsSync(conn)) {
    for (const [name, value] of Object.entries(backgroundLimits(o.maxBackground))) write(`${conn}/${name}`, value)
  }
  log.info({ device: m.device, ...done }, 'kernel tuning applied')
}
