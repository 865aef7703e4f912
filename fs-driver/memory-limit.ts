/**
 * How much memory the mount may have: the machine's, or less where a cgroup limits it (a container,
 * a systemd unit, a Kubernetes pod's `limits.memory`), so that a `--cache-mem` beyond it is refused
 * at the start rather than met by the OOM killer in the middle of a run.
 */
import { readFileSync } from 'node:fs'
import { totalmem } from 'node:os'
import path from 'node:path'

export interface MemoryLimit {
  bytes: number
  /** Whose limit it is, for the error that names it. */
  of: string
}

const CGROUP_ROOT = '/sys/fs/cgroup'

export function memoryLimit(): MemoryLimit {
  let limit: MemoryLimit = { bytes: totalmem(), of: "this machine's memory" }
  for (const bytes of cgroupLimits()) if (bytes < limit.bytes) limit = { bytes, of: 'the memory.max of its cgroup' }
  return limit
}

/** memory.max of this process's cgroup (v2) and of each one above it, where set to a number. */
function cgroupLimits(): number[] {
  let dir: string
  try {
    const own = readFileSync('/proc/self/cgroup', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('0::'))
    if (own === undefined) return []
    dir = path.join(CGROUP_ROOT, own.slice(3))
  } catch {
    return []
  }
  const limits: number[] = []
  // In a container the cgroup namespace's root is the container's own cgroup: its limit is there.
  for (;;) {
    try {
      const value = readFileSync(path.join(dir, 'memory.max'), 'utf8').trim()
      if (/^\d+$/.test(value)) limits.push(Number(value))
    } catch {
      // no memory controller here, or no file at the hierarchy's root
    }
    if (dir === CGROUP_ROOT || !dir.startsWith(`${CGROUP_ROOT}/`)) return limits
    dir = path.dirname(dir)
  }
}
