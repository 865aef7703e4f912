// A command on a real pseudo-terminal, as a person's shell runs it: Python's pty module
// (/usr/bin/python3) gives it a terminal of 200 columns as stdin, stdout and stderr, and passes
// SIGINT/SIGTERM on to it. What it writes comes back as the raw bytes a terminal would receive.
import { spawn, type ChildProcess } from 'node:child_process'

const WRAPPER = `
import fcntl, os, pty, signal, struct, sys, termios
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 50, 200, 0, 0))
    os.execvp(sys.argv[1], sys.argv[1:])
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, _: os.kill(pid, s))
while True:
    try:
        data = os.read(fd, 65536)
    except OSError:  # EIO once the terminal's last user is gone
        break
    if not data:
        break
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
`

export interface OnTerminal {
  /** The Python process holding the terminal; signals sent to it reach the command. */
  child: ChildProcess
  /** Everything written to the terminal so far. */
  output(): string
  /** Resolves once the output matches `pattern`; rejects if the command ends first or after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>
  /** The command's exit status (one killed by a signal ends the wrapper with 256 minus the signal number). */
  done: Promise<number | null>
}

export function onTerminal(command: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): OnTerminal {
  const child = spawn('/usr/bin/python3', ['-c', WRAPPER, command, ...args], { env: opts.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')))
  const done = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)))
  const waitFor = (pattern: RegExp, timeoutMs = 300_000) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!pattern.test(out)) return
        clearTimeout(timer)
        child.stdout!.off('data', check)
        resolve()
      }
      const timer = setTimeout(() => reject(new Error(`never saw ${pattern} on the terminal:\n${out}`)), timeoutMs)
      child.stdout!.on('data', check)
      void done.then(() => {
        check()
        clearTimeout(timer)
        reject(new Error(`the command ended without ${pattern}:\n${out}`))
      })
      check()
    })
  return { child, output: () => out, waitFor, done }
}

/**
 * The lines a terminal of unlimited height shows for `raw` output: carriage returns, newlines,
 * erase-in-line (ESC[K, ESC[2K), cursor-to-column (ESC[nG) and cursor save and restore (ESC 7,
 * ESC 8) applied as a terminal applies them; other sequences (cursor visibility, line wrapping,
 * colours) dropped. A line overwritten or torn by a redraw shows as such.
 */
const ESC = String.fromCharCode(27)
const CSI = new RegExp(`^${ESC}\\[([?\\d;]*)([A-Za-z])`)

export function screenLines(raw: string): string[] {
  const rows: string[][] = [[]]
  let row = 0
  let col = 0
  let saved = { row: 0, col: 0 }
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!
    if (c === ESC) {
      if (raw[i + 1] === '7' || raw[i + 1] === '8') {
        if (raw[++i] === '7') saved = { row, col }
        else ({ row, col } = saved)
        continue
      }
      const m = CSI.exec(raw.slice(i))
      if (!m) continue
      i += m[0].length - 1
      const n = m[1] === '' ? 0 : Number(m[1])
      const line = rows[row]!
      if (m[2] === 'K') rows[row] = n === 2 ? [] : n === 1 ? line.map((ch, j) => (j <= col ? ' ' : ch)) : line.slice(0, col)
      else if (m[2] === 'G') col = Math.max(0, (n || 1) - 1)
      continue
    }
    if (c === '\r') col = 0
    else if (c === '\n') {
      row++
      col = 0
      while (rows.length <= row) rows.push([])
    } else {
      const line = rows[row]!
      while (line.length < col) line.push(' ')
      line[col++] = c
    }
  }
  return rows.map((r) => r.join('').trimEnd())
}
