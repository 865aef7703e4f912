// An HTTP/1.1 server on loopback that answers with whatever bytes a test writes: wrong ranges,
// lengths past 2^63, malformed heads, endless error bodies. Node's http module would refuse to send
// most of these, so requests are parsed and responses written on the raw socket. Keep-alive works
// as a client expects: after a response the next request on the connection is read.
import net from 'node:net'

export interface RawRequest {
  method: string
  /** The path as sent, percent-encoding kept. */
  path: string
  query: URLSearchParams
  /** Header names in lower case. */
  headers: Map<string, string>
  /** The n-th request for this path (compared decoded), from 1. */
  attempt: number
}

export interface RawConnection {
  /** Resolves once the bytes are handed to the kernel, false when the client has gone. */
  write(data: Buffer | string): Promise<boolean>
  /** Closes the connection (after what was written). */
  end(): void
  /** Resets the connection at once. */
  reset(): void
  readonly closed: boolean
}

/** Writes a response; resolves when done. The connection stays open for the next request unless the handler closes it. */
export type RawHandler = (req: RawRequest, conn: RawConnection) => Promise<void>

const HEAD_LIMIT = 16 * 1024

export class RawHttpServer {
  readonly requests: RawRequest[] = []
  private readonly sockets = new Set<net.Socket>()
  private readonly attempts = new Map<string, number>()

  private constructor(
    private readonly server: net.Server,
    private readonly handler: RawHandler,
  ) {
    server.on('connection', (socket) => this.accept(socket))
  }

  static async start(handler: RawHandler): Promise<RawHttpServer> {
    const server = net.createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => resolve())
    })
    return new RawHttpServer(server, handler)
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`
  }

  /** Requests seen for this path, decoded ("/bucket/a b", not "/bucket/a%20b"). */
  count(path: string): number {
    return this.attempts.get(path) ?? 0
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    return new Promise((resolve) => this.server.close(() => resolve()))
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    socket.on('error', () => {})
    let buffered = Buffer.alloc(0)
    let busy = false
    const conn: RawConnection = {
      write: (data) =>
        new Promise((resolve) => {
          if (socket.destroyed || !socket.writable) return resolve(false)
          socket.write(data, (err) => resolve(!err))
        }),
      end: () => socket.end(),
      reset: () => socket.resetAndDestroy(),
      get closed() {
        return socket.destroyed || !socket.writable
      },
    }
    const next = async (): Promise<void> => {
      if (busy) return
      const end = buffered.indexOf('\r\n\r\n')
      if (end < 0) {
        if (buffered.length > HEAD_LIMIT) socket.destroy()
        return
      }
      const lines = buffered.subarray(0, end).toString('latin1').split('\r\n')
      buffered = buffered.subarray(end + 4)
      const [method = '', target = ''] = lines[0]!.split(' ')
      const q = target.indexOf('?')
      const path = q < 0 ? target : target.slice(0, q)
      const headers = new Map<string, string>()
      for (const line of lines.slice(1)) {
        const i = line.indexOf(':')
        if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim())
      }
      let decoded = path
      try {
        decoded = decodeURIComponent(path)
      } catch {
        // not percent-encoding: counted as sent
      }
      const attempt = (this.attempts.get(decoded) ?? 0) + 1
      this.attempts.set(decoded, attempt)
      const req: RawRequest = { method, path, query: new URLSearchParams(q < 0 ? '' : target.slice(q + 1)), headers, attempt }
      this.requests.push(req)
      busy = true
      try {
        await this.handler(req, conn)
      } catch {
        socket.destroy()
      }
      busy = false
      if (!conn.closed) void next()
    }
    socket.on('data', (d: Buffer) => {
      buffered = Buffer.concat([buffered, d])
      void next()
    })
  }
}

/** bytes=a-b of a Range header, or undefined. */
export function rangeOf(req: RawRequest): [number, number] | undefined {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.get('range') ?? '')
  return m ? [Number(m[1]), Number(m[2])] : undefined
}
