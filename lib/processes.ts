/** Facts about other processes, read from /proc (Linux, as FUSE is). */
import { readdirSync, readFileSync } from 'node:fs'

/** The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses). */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return undefined
  }
}

/** The processes whose parent is `pid`. */
export function childPids(pid: number): number[] {
  const out: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    // Field 4 of stat is the parent's pid; the list starts at field 3 (the state).
    if (Number(statFields(Number(name))?.[1]) === pid) out.push(Number(name))
  }
  return out
}

/**
 * When `pid` started, in clock ticks since boot (field 22 of its stat): with the pid, it names one
 * process for good, since a pid is reused only by a process started later. Undefined when no
 * process has that pid or it is a zombie (it has exited; only its exit status is left).
 */
export function processStart(pid: number): number | undefined {
  const fields = statFields(pid)
  if (!fields || fields[0] === 'Z' || fields[0] === 'X') return undefined
  return Number(fields[19])
}

/** Whether the process that was `pid` when it started at `start` (see processStart) is still running. */
export function isRunning(pid: number, start: number): boolean {
  return processStart(pid) === start
}
