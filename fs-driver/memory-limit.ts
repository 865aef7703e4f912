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

/** Where each cgroup hierarchy keeps the memory limit of the cgroup a /proc/self/cgroup line names. */
const HIERARCHIES = [
  { line: /^0::(\/.*)$/, root: '/sys/fs/cgroup', file: 'memory.max' },
  { line: /^\d+:(?:[^:]*,)?memory(?:,[^:]*)?:(\/.*)$/, root: '/sys/fs/cgroup/memory', file: 'memory.limit_in_bytes' },
]

export function memoryLimit(): MemoryLimit {
  let limit: MemoryLimit = { bytes: totalmem(), of: "this machine's memory" }
  for (const bytes of cgroupLimits()) if (bytes < limit.bytes) limit = { bytes, of: "its cgroup's memory limit" }
  return limit
}

/**
 * The limits of this process's cgroup and of each one above it, in either hierarchy (v2, or v1's
 * memory controller), where set. In a container the namespace's root is the container's own cgroup.
 */
function cgroupLimits(): number[] {
  let lines: string[]
  try {
    lines = readFileSync('/proc/self/cgroup', 'utf8').split('\n')
  } catch {
    return []
  }
  const limits: number[] = []
  for (const h of HIERARCHIES) {
    const own = lines.map((l) => h.line.exec(l)?.[1]).find((p) => p !== undefined)
    if (own === undefined) continue
    for (let dir = path.join(h.root, own); ; dir = path.dirname(dir)) {
      try {
        const value = readFileSync(path.join(dir, h.file), 'utf8').trim()
        if (/^\d+$/.test(value)) limits.push(Number(value))
      } catch {
        // not this hierarchy's controller, or no limit file at its root
      }
      if (path.relative(h.root, dir) === '') break
    }
  }
  return limits
}
