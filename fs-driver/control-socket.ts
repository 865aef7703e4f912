/**
 * o3mount's control socket (`--control-socket PATH`): a Unix socket, mode 0600, speaking the
 * protocol of lib/control-protocol.ts. A trainer (o3train, examples/pytorch/announce.py) announces
 * the files it will read, in order; each request is checked whole (every path a file the mount
 * would open) before any of it is queued, and its files go to the byte path's ordered prefetch
 * queue as that connection's stream. Requests of one connection are answered in order; several
 * connections are served at once, and a client that goes away early harms nothing.
 */
import { lstatSync, rmSync, type Stats } from 'node:fs'
import net from 'node:net'
import { dirname } from 'node:path'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { BadRequest, MAX_REQUEST_BYTES, parseRequest, type ControlAnswer } from '../lib/control-protocol.js'
import type { Logger } from '../lib/log.js'
import { MountError } from './mount-error.js'

/** What the socket asks of the mount. */
export interface AnnounceTarget<F> {
  /** The file at `path` (`/a/b`) pinned as an open now would pin it; throws BadRequest when the mount would not open it. */
  resolve(path: string): Promise<F>
  /** Queues `files` to fetch in this order, behind what `stream` queued before (one stream per connection). */
  queue(files: F[], stream: number): void
}

/** The socket's own tallies, for the stats file. */
export interface ControlSocketCounters {
  /** Requests answered, and those of them refused. */
  requests: number
  refused: number
}

/** Lookups of one request in flight at once (answered from the metadata cache, or a listing page each). */
const RESOLVE_CONCURRENCY = 32
/** Lines read ahead of the one being served, per connection, before reading pauses. */
const MAX_PENDING_LINES = 8
/** Connections served at once; more are answered with an error and closed. */
const MAX_CONNECTIONS = 64
/** A refused client that keeps its side open this long without sending is closed. */
const REFUSED_IDLE_MS = 10_000

/** Longest path a Unix socket may have (sun_path, less its NUL). */
export const MAX_SOCKET_PATH = 107
/** The sticky bit (S_ISVTX): in such a directory only a file's owner may remove or rename it. */
const STICKY = 0o1000

const unsafe = (msg: string) => new MountError(msg, ExitCode.unsafePath)

/**
 * Makes `path` free for a new socket, refusing anything it should not replace: a file that is not a
 * socket, a socket of another user or one that someone listens on, or a directory others may
 * write into without the sticky bit (they could swap the socket for their own).
 */
async function claimPath(path: string): Promise<void> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH)
    throw new MountError(
      `--control-socket ${path} is longer than ${MAX_SOCKET_PATH} bytes, the most a Unix socket's path may be: choose a shorter one`,
      ExitCode.badOption,
    )
  const uid = process.getuid?.()
  const dir = dirname(path)
  let d: Stats
  try {
    d = lstatSync(dir)
  } catch (err) {
    throw new MountError(`--control-socket ${path}: its directory cannot be used (${(err as Error).message})`, ExitCode.badOption)
  }
  if (d.isSymbolicLink()) throw unsafe(`--control-socket ${path}: ${dir} is a symbolic link; refusing to follow it: name the real directory`)
  if (!d.isDirectory()) throw unsafe(`--control-socket ${path}: ${dir} is not a directory`)
  if (uid !== undefined && d.uid !== uid && d.uid !== 0)
    throw unsafe(`--control-socket ${path}: ${dir} belongs to uid ${d.uid}, not to you (uid ${uid}) or root`)
  if (d.mode & 0o022 && !(d.mode & STICKY))
    throw unsafe(
      `--control-socket ${path}: others may write into ${dir} (mode ${(d.mode & 0o7777).toString(8)}, not sticky): put the socket in a directory of yours`,
    )
  let st: Stats
  try {
    st = lstatSync(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  if (!st.isSocket()) throw unsafe(`--control-socket ${path} exists and is not a socket; refusing to replace it: remove it or choose another path`)
  if (uid !== undefined && st.uid !== uid) throw unsafe(`--control-socket ${path} is a socket of uid ${st.uid}, not yours (uid ${uid}); refusing to replace it`)
  if (await listening(path)) throw unsafe(`--control-socket ${path}: another process listens on it (another o3mount?); stop it or choose another path`)
  // A socket nobody listens on: left behind by a mount that was killed.
  rmSync(path)
}

function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(path)
    c.once('connect', () => {
      c.destroy()
      resolve(true)
    })
    c.once('error', () => resolve(false))
  })
}

/** One client: its unread bytes, its lines waiting, and whether it can still be answered. */
class Connection {
  private buffered: Buffer[] = []
  private bufferedBytes = 0
  /** Inside a line that was already refused as too long: skip to its newline. */
  private skipping = false
  private readonly lines: (string | BadRequest)[] = []
  private serving = false
  private ended = false
  private gone = false

  constructor(
    private readonly socket: net.Socket,
    private readonly serve: (line: string) => Promise<ControlAnswer>,
    private readonly refuse: (err: BadRequest) => ControlAnswer,
    onClose: () => void,
  ) {
    socket.on('data', (chunk: Buffer) => this.take(chunk))
    socket.on('end', () => {
      this.ended = true
      this.finishIfIdle()
    })
    // A client that resets or vanishes mid-answer: its requests already read are still served.
    socket.on('error', () => (this.gone = true))
    socket.on('close', () => {
      this.gone = true
      onClose()
    })
  }

  private take(chunk: Buffer): void {
    let start = 0
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, nl)
      start = nl + 1
      if (this.skipping) {
        this.skipping = false
        continue
      }
      if (this.bufferedBytes + piece.length + 1 > MAX_REQUEST_BYTES) {
        this.lines.push(new BadRequest(`the request is longer than ${MAX_REQUEST_BYTES} bytes: announce long lists in several requests`))
      } else {
        this.lines.push(Buffer.concat([...this.buffered, piece]).toString('utf8'))
      }
      this.buffered = []
      this.bufferedBytes = 0
    }
    const rest = chunk.subarray(start)
    if (rest.length > 0 && !this.skipping) {
      if (this.bufferedBytes + rest.length >= MAX_REQUEST_BYTES) {
        // Refused now, not buffered any further; the rest of the line is skipped when it comes.
        this.lines.push(new BadRequest(`the request is longer than ${MAX_REQUEST_BYTES} bytes: announce long lists in several requests`))
        this.buffered = []
        this.bufferedBytes = 0
        this.skipping = true
      } else {
        this.buffered.push(Buffer.from(rest))
        this.bufferedBytes += rest.length
      }
    }
    if (this.lines.length > MAX_PENDING_LINES) this.socket.pause()
    void this.pump()
  }

  private async pump(): Promise<void> {
    if (this.serving) return
    this.serving = true
    try {
      for (let line = this.lines.shift(); line !== undefined; line = this.lines.shift()) {
        const answer = line instanceof BadRequest ? this.refuse(line) : await this.serve(line)
        // A client that sends without reading its answers waits for them to go: reading stops
        // (lines past MAX_PENDING_LINES pause it) instead of answers piling up in the mount.
        if (!this.gone && !this.socket.write(`${JSON.stringify(answer)}\n`)) await this.drained()
        if (this.lines.length <= MAX_PENDING_LINES && this.socket.isPaused()) this.socket.resume()
      }
    } finally {
      this.serving = false
    }
    this.finishIfIdle()
  }

  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done)
        this.socket.off('close', done)
        resolve()
      }
      this.socket.on('drain', done)
      this.socket.on('close', done)
    })
  }

  private finishIfIdle(): void {
    // A line without its newline when the input ends is a request cut short: dropped unanswered.
    if (this.ended && !this.serving && this.lines.length === 0 && !this.gone) this.socket.end()
  }

  destroy(): void {
    this.socket.destroy()
  }
}

export class ControlSocket<F> {
  readonly counters: ControlSocketCounters = { requests: 0, refused: 0 }
  private readonly connections = new Set<Connection>()
  /** Clients refused past MAX_CONNECTIONS, until they close. */
  private readonly turnedAway = new Set<net.Socket>()
  private nextStream = 1
  private ino = 0

  private constructor(
    readonly path: string,
    private readonly server: net.Server,
    private readonly target: AnnounceTarget<F>,
    private readonly log: Logger,
  ) {}

  /** Listens at `path` (mode 0600), after checking that nothing there may not be replaced. */
  static async listen<F>(path: string, target: AnnounceTarget<F>, log: Logger): Promise<ControlSocket<F>> {
    await claimPath(path)
    // Clients that shut down their side after writing (`socat`, a script) still get their answers.
    const server = net.createServer({ allowHalfOpen: true })
    const socket = new ControlSocket(path, server, target, log)
    server.on('connection', (s) => socket.accept(s))
    const listening = new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.once('listening', () => {
        server.off('error', reject)
        resolve()
      })
    })
    // Created 0600, with no moment in which another user could connect: the socket file is made
    // by bind(), inside listen(), under this umask (restored at once: the process has one).
    const umask = process.umask(0o177)
    try {
      server.listen(path)
    } finally {
      process.umask(umask)
    }
    try {
      await listening
    } catch (err) {
      throw new MountError(`--control-socket ${path}: cannot listen there (${(err as Error).message})`, ExitCode.badOption)
    }
    server.on('error', (err) => log.error({ err: err.message, path }, 'control socket failed'))
    socket.ino = lstatSync(path).ino
    return socket
  }

  private accept(s: net.Socket): void {
    if (this.connections.size >= MAX_CONNECTIONS) {
      s.on('error', () => {})
      // Its requests are read and dropped (a socket closed on unread bytes resets, and the client
      // could lose the answer), and it closes once the client ends its side; one that never does
      // is closed after a while without a byte, or by close(), which would otherwise wait on it.
      s.resume()
      s.setTimeout(REFUSED_IDLE_MS, () => s.destroy())
      this.turnedAway.add(s)
      s.once('close', () => this.turnedAway.delete(s))
      s.end(`${JSON.stringify({ ok: false, error: `already serving ${MAX_CONNECTIONS} connections; close one first` })}\n`)
      return
    }
    const stream = this.nextStream++
    const c: Connection = new Connection(
      s,
      (line) => this.serve(line, stream),
      (err) => this.refused(err, stream),
      () => this.connections.delete(c),
    )
    this.connections.add(c)
  }

  private refused(err: BadRequest, stream: number): ControlAnswer {
    this.counters.requests++
    this.counters.refused++
    this.log.warn({ stream, err: err.message }, 'control socket: request refused')
    return { ok: false, error: err.message }
  }

  /** Checks the whole request, resolves every path, and only then queues any of it. */
  private async serve(line: string, stream: number): Promise<ControlAnswer> {
    let files: F[]
    try {
      const req = parseRequest(line)
      files = await this.resolveAll(req.paths)
    } catch (err) {
      if (err instanceof BadRequest) return this.refused(err, stream)
      this.counters.requests++
      this.counters.refused++
      this.log.error({ stream, err: (err as Error).message }, 'control socket: request failed')
      return { ok: false, error: `the mount could not look the paths up: ${(err as Error).message}` }
    }
    this.counters.requests++
    if (files.length > 0) this.target.queue(files, stream)
    this.log.debug({ stream, files: files.length }, 'control socket: files announced')
    return { ok: true, queued: files.length }
  }

  private async resolveAll(paths: string[]): Promise<F[]> {
    const out = new Array<F>(paths.length)
    let next = 0
    const worker = async () => {
      while (next < paths.length) {
        const i = next++
        try {
          out[i] = await this.target.resolve(`/${paths[i]}`)
        } catch (err) {
          // The first refusal ends the request: the other lookups finish, but nothing is queued.
          next = paths.length
          throw err instanceof BadRequest ? new BadRequest(`paths[${i}] ${JSON.stringify(paths[i])}: ${err.message}`) : err
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(RESOLVE_CONCURRENCY, paths.length) }, worker))
    return out
  }

  /** Stops listening, drops every connection and removes the socket file (if it is still ours). */
  async close(): Promise<void> {
    for (const c of this.connections) c.destroy()
    for (const s of this.turnedAway) s.destroy()
    this.connections.clear()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
    try {
      if (lstatSync(this.path).ino === this.ino) rmSync(this.path)
    } catch {
      // already gone
    }
  }
}
