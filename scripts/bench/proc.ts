/**
 * What /proc says about a mount's process while a bench reads from it: CPU of the whole process
 * tree, CPU per thread (grouped by thread name), and peak resident memory.
 */
import { readFileSync, readdirSync } from 'node:fs'

/** Linux's USER_HZ: /proc times are in ticks of 1/100 s on every architecture we run on. */
const CLK_TCK = 100

interface Stat {
  comm: string
  ppid: number
  /** user + system ticks. */
  ticks: number
}

function readStat(path: string): Stat | undefined {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch {
    return undefined
  }
  // comm may hold spaces and parentheses: it ends at the last ')'.
  const close = text.lastIndexOf(')')
  const comm = text.slice(text.indexOf('(') + 1, close)
  const f = text.slice(close + 2).split(' ')
  return { comm, ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) }
}

/** `pid` and every process below it, now. */
function tree(pid: number): number[] {
  const children = new Map<number, number[]>()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const s = readStat(`/proc/${name}/stat`)
    if (s) (children.get(s.ppid) ?? children.set(s.ppid, []).get(s.ppid)!).push(Number(name))
  }
  const out = [pid]
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []))
  return out
}

/** User + system CPU seconds of a process and all its descendants so far. */
export function treeCpuSeconds(pid: number): number {
  return tree(pid).reduce((sum, p) => sum + (readStat(`/proc/${p}/stat`)?.ticks ?? 0), 0) / CLK_TCK
}

/** CPU ticks per thread of a process, keyed by thread id, with the thread's name. */
export type ThreadTicks = Map<number, { name: string; ticks: number }>

export function threadTicks(pid: number): ThreadTicks {
  const out: ThreadTicks = new Map()
  let tids: string[]
  try {
    tids = readdirSync(`/proc/${pid}/task`)
  } catch {
    return out
  }
  for (const tid of tids) {
    const s = readStat(`/proc/${pid}/task/${tid}/stat`)
    // The main thread carries the process's name; it is where JavaScript runs in a Node process.
    if (s) out.set(Number(tid), { name: Number(tid) === pid ? 'main' : s.comm, ticks: s.ticks })
  }
  return out
}

/**
 * CPU seconds per thread name between two snapshots, per GiB read: threads that share a name
 * (a pool) are summed, and their count is shown, e.g. `{ "o3-fetch": …, "V8 Worker x4": … }`.
 */
export function threadSplitPerGiB(before: ThreadTicks, after: ThreadTicks, bytes: number): Record<string, number> {
  const byName = new Map<string, { ticks: number; threads: number }>()
  for (const [tid, a] of after) {
    const name = a.name.replace(/[\s#:-]*\d+$/, '')
    const e = byName.get(name) ?? byName.set(name, { ticks: 0, threads: 0 }).get(name)!
    e.ticks += a.ticks - (before.get(tid)?.ticks ?? 0)
    e.threads++
  }
  const out: Record<string, number> = {}
  for (const [name, e] of byName) {
    if (e.ticks > 0) out[e.threads > 1 ? `${name} x${e.threads}` : name] = (e.ticks / CLK_TCK) * ((1 << 30) / bytes)
  }
  return out
}

/** The highest resident set of a process since it started (VmHWM), in bytes; 0 once it is gone. */
export function peakRss(pid: number): number {
  try {
    return Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024
  } catch {
    return 0
  }
}
