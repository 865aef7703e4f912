/**
 * o3train's side of the mount's control socket: at each epoch's start the run tells the mount
 * which files it will read, in order (lib/control-protocol.ts), so that the mount fetches them
 * before the loader opens them. Announcing is a hint: a socket that is missing, refuses or breaks
 * is logged once and training goes on without it.
 */
import net from 'node:net'
import { posix, relative, resolve } from 'node:path'
import { prefetchLines, type ControlAnswer } from '../lib/control-protocol.js'
import type { Logger } from '../lib/log.js'
import { mountContaining } from '../fs-driver/mount-table.js'

/**
 * Paths per request: the mount checks a request whole before queueing any of it, so small
 * requests let the first files start while the later ones are checked.
 */
const PATHS_PER_REQUEST = 1_000

export class OrderAnnouncer {
  private socket: net.Socket | undefined
  private answers = ''
  private warned = false

  /**
   * `socketPath`: the mount's control socket; `prefix`: the data directory relative to the mount's
   * root ('' when the data is the mount's root), put in front of every path announced.
   */
  constructor(
    readonly socketPath: string,
    private readonly prefix: string,
    private readonly log: Logger,
  ) {}

  /**
   * For a data directory on a mount served elsewhere (`--mount-control`): the prefix comes from
   * where the directory sits below its mountpoint. Undefined (and logged) when it is on no FUSE mount.
   */
  static forDataDir(socketPath: string, dataDir: string, log: Logger): OrderAnnouncer | undefined {
    const dir = resolve(dataDir)
    const mount = mountContaining(dir)
    if (!mount || !mount.fsType.startsWith('fuse')) {
      log.warn({ data: dir, mountControl: socketPath }, '--mount-control: the data directory is on no FUSE mount; the read order is not announced')
      return undefined
    }
    return new OrderAnnouncer(socketPath, relative(mount.mountpoint, dir), log)
  }

  /** Queues `files` (relative to the data directory) with the mount, in this order; never throws. */
  announce(files: readonly string[]): void {
    if (files.length === 0) return
    const socket = this.connect()
    const paths = this.prefix === '' ? files : files.map((f) => posix.join(this.prefix, f))
    for (const line of prefetchLines(paths, PATHS_PER_REQUEST)) socket.write(line)
    this.log.debug({ files: files.length, socket: this.socketPath }, 'read order announced to the mount')
  }

  /** Closes the connection; what was announced stays queued in the mount. */
  close(): void {
    this.socket?.end()
    this.socket = undefined
  }

  private connect(): net.Socket {
    if (this.socket && !this.socket.destroyed) return this.socket
    const socket = net.connect(this.socketPath)
    this.socket = socket
    socket.setEncoding('utf8')
    // A request still unanswered must not keep the process alive at its end.
    socket.unref()
    socket.on('data', (text: string) => this.read(text))
    socket.on('error', (err) => {
      this.failed(`${err.message}`)
      socket.destroy()
    })
    socket.on('close', () => {
      if (this.socket === socket) this.socket = undefined
    })
    return socket
  }

  private read(text: string): void {
    this.answers += text
    let nl: number
    while ((nl = this.answers.indexOf('\n')) !== -1) {
      const line = this.answers.slice(0, nl)
      this.answers = this.answers.slice(nl + 1)
      let answer: ControlAnswer
      try {
        answer = JSON.parse(line) as ControlAnswer
      } catch {
        this.failed(`the mount answered ${JSON.stringify(line.slice(0, 200))}, not JSON`)
        continue
      }
      if (!answer.ok) this.failed(`the mount refused it: ${answer.error}`)
    }
  }

  /** Said once per run: the same cause would repeat at every epoch. */
  private failed(why: string): void {
    if (this.warned) return
    this.warned = true
    this.log.warn({ socket: this.socketPath, err: why }, 'announcing the read order to the mount failed; training goes on without it')
  }
}
