import cliProgress from 'cli-progress'
import { forPeople, prettyLine } from './log.js'
import { setShownBar } from './terminal.js'

/** Numbers shown for long work; `unit` names what `done`/`total` count (samples, bytes). */
export interface ProgressUpdate {
  done: number
  total: number
  /** Extra fields for the line: loss, samples/s, ... */
  fields?: Record<string, number | string>
}

export interface Progress {
  update(u: ProgressUpdate): void
  /** Ends the bar or writes a closing line. */
  stop(fields?: Record<string, number | string>): void
}

/**
 * A bar on a TTY (unless --log-format json), and JSON lines (at most one every `intervalMs`)
 * otherwise (readable ones with --log-format pretty), so that logs and CI output stay readable and
 * parseable. Both go to stderr: stdout is kept for results. Log lines are printed above the bar
 * (lib/terminal.ts).
 */
export function createProgress(
  label: string,
  options: { unit: string; tty?: boolean; intervalMs?: number; stream?: NodeJS.WriteStream } = { unit: 'items' },
): Progress {
  const stream = options.stream ?? process.stderr
  const tty = options.tty ?? (stream.isTTY === true && forPeople(true))
  if (tty) {
    // forceRedraw: a redraw after a line printed above the bar must draw it even though it has not changed.
    const bar = new cliProgress.SingleBar(
      {
        format: `${label} [{bar}] {percentage}% {value}/{total} ${options.unit} | {extra} | ETA {eta_formatted}`,
        stream,
        hideCursor: true,
        etaBuffer: 50,
        forceRedraw: true,
      },
      cliProgress.Presets.shades_classic,
    )
    const shown = { stream, redraw: () => bar.render(), end: () => bar.stop() }
    let started = false
    const extra = (f?: Record<string, number | string>) =>
      Object.entries(f ?? {})
        .map(([k, v]) => `${k} ${typeof v === 'number' ? fmt(v) : v}`)
        .join(' ')
    return {
      update(u) {
        if (!started) {
          bar.start(u.total, u.done, { extra: extra(u.fields) })
          setShownBar(shown)
          started = true
        } else {
          bar.setTotal(u.total)
          bar.update(u.done, { extra: extra(u.fields) })
        }
      },
      stop(fields) {
        if (started) {
          if (fields) bar.update({ extra: extra(fields) })
          bar.stop()
          setShownBar(undefined)
        }
      },
    }
  }
  const interval = options.intervalMs ?? 2000
  let last = 0
  const started = Date.now()
  // Off a terminal a person still gets readable lines with --log-format pretty, in the log's format.
  const readable = forPeople(stream.isTTY === true)
  const write = (event: string, u: Partial<ProgressUpdate>, fields?: Record<string, number | string>) => {
    const line = { time: new Date().toISOString(), event, label, unit: options.unit, ...u, ...u.fields, ...fields, fields: undefined }
    stream.write(
      `${readable ? prettyLine(JSON.stringify({ ...line, level: 30, msg: `${label} ${event}`, event: undefined, label: undefined })) : JSON.stringify(line)}\n`,
    )
  }
  let latest: ProgressUpdate | undefined
  return {
    update(u) {
      latest = u
      const now = Date.now()
      if (now - last >= interval || u.done === u.total) {
        last = now
        const elapsed = (now - started) / 1000
        const eta = u.done > 0 ? Math.round((elapsed * (u.total - u.done)) / u.done) : undefined
        write('progress', u, eta === undefined ? undefined : { etaSeconds: eta })
      }
    },
    stop(fields) {
      write('done', latest ?? {}, fields)
    },
  }
}

function fmt(v: number): string {
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3)
}
