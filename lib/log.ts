import { writeSync } from 'node:fs'
import { pino, type Logger, type DestinationStream } from 'pino'
import { printAboveBar } from './terminal.js'

export type { Logger }

/** `auto`: readable lines on a terminal, JSON lines anywhere else (pipes, files). */
export const LOG_FORMATS = ['auto', 'pretty', 'json'] as const
export type LogFormat = (typeof LOG_FORMATS)[number]

let chosenFormat: LogFormat = 'auto'

/** Set from `--log-format`, which every command takes (lib/cli/run-cli.ts); loggers made after this use it. */
export function setLogFormat(format: LogFormat): void {
  chosenFormat = format
}

/** Whether output meant for a person goes to a destination: `--log-format pretty`, or `auto` on a terminal. */
export function forPeople(isTTY: boolean): boolean {
  return chosenFormat === 'pretty' || (chosenFormat === 'auto' && isTTY)
}

/**
 * Logs on stderr (or a file for daemons): JSON lines, or readable ones (see prettyLine) where
 * forPeople says so; on stderr those are printed above a progress bar rather than into it.
 * Credentials are redacted by path before either format sees a line, as a second line of defence:
 * no code path is meant to hand them to a logger in the first place.
 * A log file is passed as a descriptor the caller opened (o3mount opens its log without following symlinks).
 */
export function createLogger(component: string, destination?: DestinationStream | number): Logger {
  return pino(
    {
      name: component,
      level: process.env.O3_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      redact: {
        paths: [
          'credentials',
          '*.credentials',
          'secretAccessKey',
          '*.secretAccessKey',
          'accessKeyId',
          '*.accessKeyId',
          'privateKey',
          '*.privateKey',
          'headers.authorization',
          '*.headers.authorization',
        ],
        censor: '[redacted]',
      },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    typeof destination === 'object' ? destination : logDestination(destination),
  )
}

/** stderr, or the file open at `fd`, in the format chosen for it. */
function logDestination(fd?: number): DestinationStream {
  const stderr = fd === undefined
  if (!forPeople(stderr && process.stderr.isTTY === true)) return stderr ? pino.destination(2) : pino.destination({ fd, sync: false })
  const color = stderr && process.stderr.isTTY === true && !process.env.NO_COLOR
  // pino hands over whole lines; formatted and written at once, they keep their order with the bar's output.
  const lines = (chunk: string) =>
    chunk
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => `${prettyLine(l, color)}\n`)
      .join('')
  return stderr ? { write: (chunk: string) => printAboveBar(process.stderr, lines(chunk)) } : { write: (chunk: string) => void writeSync(fd, lines(chunk)) }
}

const LEVELS: Record<number, { label: string; tint: string }> = {
  10: { label: 'TRACE', tint: '\x1b[90m' },
  20: { label: 'DEBUG', tint: '\x1b[36m' },
  30: { label: 'INFO', tint: '\x1b[32m' },
  40: { label: 'WARN', tint: '\x1b[33m' },
  50: { label: 'ERROR', tint: '\x1b[31m' },
  60: { label: 'FATAL', tint: '\x1b[35m' },
}
/** Shown in the line's head, or the same for every line of a process. */
const HEAD_KEYS = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name'])
/** Control characters (a key name from a bucket may hold any) are shown escaped, never sent to the terminal. */
const CONTROL = /\p{Cc}/gu
const BARE = /^[^\s"=\p{Cc}]+$/u
const escapeControls = (s: string) => s.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)

const two = (n: number) => String(n).padStart(2, '0')

/** A value as `key=value` shows it: plain words bare, other strings quoted, structures as compact JSON, errors by their message. */
function showValue(v: unknown): string {
  if (typeof v === 'string') return BARE.test(v) ? v : escapeControls(JSON.stringify(v))
  const err = v as { message?: unknown; stack?: unknown } | null
  if (err !== null && typeof err === 'object' && typeof err.message === 'string' && 'stack' in err) return showValue(err.message)
  return escapeControls(JSON.stringify(v) ?? String(v))
}

/**
 * One pino JSON line as a person reads it: local time, level, message, then the other fields as
 * key=value (the process id and logger name left out: they are the same on every line).
 * `17:02:11.042 INFO  checkpoint saved step=500 epoch=1 cid=bafybei…`. A line that is not
 * pino's JSON is returned as it came.
 */
export function prettyLine(line: string, color = false): string {
  let o: Record<string, unknown>
  try {
    o = JSON.parse(line) as Record<string, unknown>
  } catch {
    return line
  }
  if (o === null || typeof o !== 'object') return line
  const at = new Date(typeof o.time === 'string' || typeof o.time === 'number' ? o.time : Date.now())
  const time = `${two(at.getHours())}:${two(at.getMinutes())}:${two(at.getSeconds())}.${String(at.getMilliseconds()).padStart(3, '0')}`
  const level = LEVELS[o.level as number] ?? { label: String(o.level), tint: '' }
  const label = level.label.padEnd(5)
  const msg = escapeControls(String(o.msg ?? ''))
  const fields = Object.entries(o)
    .filter(([k]) => !HEAD_KEYS.has(k))
    .map(([k, v]) => `${k}=${showValue(v)}`)
  return [`${time} ${color && level.tint ? `${level.tint}${label}\x1b[0m` : label} ${msg}`, ...fields].join(' ')
}

/** A logger that drops everything, for library use without a caller-supplied logger. */
export const silentLogger: Logger = pino({ level: 'silent' })
