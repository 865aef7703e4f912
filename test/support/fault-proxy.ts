// A TCP proxy that sits between a client under test and a real loopback server and
// injects network faults on command: latency, a bandwidth cap, outages, resets after
// N bytes and stalls. Tests use it to prove retry and resume behaviour against real
// sockets instead of mocks.
//
// Safety: it only forwards to loopback, caps connections and per-connection buffering,
// and stops itself after maxLifetimeMs. Neither the listening socket nor the lifetime
// timer keeps a process alive, so a proxy a test forgets to close cannot hang the run.
import net from 'node:net'

export interface FaultProxyOptions {
  /** Loopback address or `localhost`; anything else is refused. Default 127.0.0.1. */
  targetHost?: string
  targetPort: number
  /** The proxy closes itself after this long. Default 10 minutes. */
  maxLifetimeMs?: number
  /** Connections beyond this many open at once are reset on accept. Default 256. */
  maxConnections?: number
  /** Per connection and direction: above this the source is paused until the queue drains. Default 1 MiB. */
  maxBufferedBytes?: number
}

export interface ResetAfterBytesOptions {
  /** How many connections the fault applies to. Default 1. */
  count?: number
}

const DEFAULT_LIFETIME_MS = 10 * 60 * 1000
const DEFAULT_MAX_CONNECTIONS = 256
const DEFAULT_MAX_BUFFERED = 1024 * 1024
// Bandwidth is enforced by sending slices of 1/PACING_HZ seconds' worth of bytes, so a
// cap is smooth at the 50 ms scale without waking a timer per byte.
const PACING_HZ = 20

const loopback = new net.BlockList()
loopback.addSubnet('127.0.0.0', 8, 'ipv4')
loopback.addAddress('::1', 'ipv6')

function isLoopback(host: string): boolean {
  if (host === 'localhost') return true
  const family = net.isIP(host)
  if (family === 0) return false
  return loopback.check(host, family === 4 ? 'ipv4' : 'ipv6')
}

/** Fault settings shared by every connection; read on each forwarding step so changes apply at once. */
interface Faults {
  latencyMs: number
  bytesPerSec: number | null
  stalledUntil: number
  /** One byte budget per connection still to be cut by resetAfterBytes. */
  pendingResets: number[]
  readonly maxBufferedBytes: number
}

interface Counters {
  connections: number
  bytesToClient: number
  bytesToServer: number
  resets: number
}

interface Chunk {
  data: Buffer
  releaseAt: number
}

/** Forwards one direction of a connection through a FIFO queue, so delays never reorder bytes. */
class Pump {
  private readonly queue: Chunk[] = []
  private queuedBytes = 0
  private sourcePaused = false
  private sourceDone = false
  private ended = false
  private awaitingDrain = false
  private timer: NodeJS.Timeout | undefined
  private nextSendAt = 0

  constructor(
    private readonly conn: Connection,
    private readonly src: net.Socket,
    private readonly dst: net.Socket,
    private readonly toClient: boolean,
  ) {
    src.on('data', (data: Buffer) => this.push(data))
    src.on('end', () => this.finishSource())
    dst.on('drain', () => {
      this.awaitingDrain = false
      this.run()
    })
  }

  get buffered(): number {
    return this.queuedBytes
  }

  stop(): void {
    clearTimeout(this.timer)
    this.timer = undefined
  }

  private push(data: Buffer): void {
    if (this.conn.closed || this.dst.destroyed) return
    this.queue.push({ data, releaseAt: Date.now() + this.conn.faults.latencyMs })
    this.queuedBytes += data.length
    if (this.queuedBytes >= this.conn.faults.maxBufferedBytes && !this.sourcePaused) {
      this.sourcePaused = true
      this.src.pause()
    }
    // A non-empty queue means run() is already waiting on a timer or 'drain' for the head.
    if (this.queue.length === 1) this.run()
  }

  private finishSource(): void {
    this.sourceDone = true
    if (this.queue.length === 0) this.run()
  }

  run(): void {
    this.stop()
    const { faults, counters } = this.conn
    while (this.queue.length > 0 && !this.awaitingDrain) {
      if (this.conn.closed || this.dst.destroyed) return
      const now = Date.now()
      const head = this.queue[0]
      const rate = this.toClient ? faults.bytesPerSec : null
      const wait = Math.max(faults.stalledUntil - now, head.releaseAt - now, rate ? this.nextSendAt - now : 0)
      if (wait > 0) {
        this.timer = setTimeout(() => this.run(), wait)
        return
      }
      let piece = head.data
      if (rate) {
        piece = piece.subarray(0, Math.max(1, Math.floor(rate / PACING_HZ)))
        // Idle time earns no credit beyond the current slice, so a cap cannot be burst past.
        this.nextSendAt = Math.max(this.nextSendAt, now) + (piece.length * 1000) / rate
      }
      if (this.toClient) {
        const budget = this.conn.resetBudget()
        if (budget !== undefined && piece.length >= budget) {
          counters.bytesToClient += budget
          this.conn.cutAfter(piece.subarray(0, budget))
          return
        }
        this.conn.spend(piece.length)
        counters.bytesToClient += piece.length
      } else {
        counters.bytesToServer += piece.length
      }
      this.consume(piece.length)
      if (!this.dst.write(piece)) this.awaitingDrain = true
    }
    if (this.queue.length === 0 && this.sourceDone && !this.ended && !this.conn.closed && !this.dst.destroyed) {
      this.ended = true
      this.dst.end()
    }
  }

  private consume(n: number): void {
    const head = this.queue[0]
    if (n === head.data.length) this.queue.shift()
    else head.data = head.data.subarray(n)
    this.queuedBytes -= n
    if (this.sourcePaused && this.queuedBytes < this.conn.faults.maxBufferedBytes) {
      this.sourcePaused = false
      this.src.resume()
    }
  }
}

class Connection {
  closed = false
  private upstreamEnded = false
  private budget: { initial: number; left: number } | undefined
  private readonly pumps: [Pump, Pump]

  constructor(
    readonly faults: Faults,
    readonly counters: Counters,
    private readonly client: net.Socket,
    private readonly upstream: net.Socket,
    onClose: () => void,
  ) {
    this.pumps = [new Pump(this, upstream, client, true), new Pump(this, client, upstream, false)]
    // A failure on either side reaches the other as a reset, as it would without a proxy.
    client.on('error', () => this.abort())
    upstream.on('error', () => this.abort())
    // With the client gone nothing more can be delivered; the upstream is closed at once.
    client.on('close', () => {
      this.finish()
      upstream.destroy()
      onClose()
    })
    // An upstream that vanishes without a FIN must not leave the client waiting forever.
    upstream.on('end', () => {
      this.upstreamEnded = true
    })
    upstream.on('close', () => {
      if (!this.upstreamEnded) this.abort()
    })
  }

  get buffered(): number {
    return this.pumps[0].buffered + this.pumps[1].buffered
  }

  kick(): void {
    for (const pump of this.pumps) pump.run()
  }

  /** The bytes this connection may still send to the client before it is cut, claiming a pending budget if any. */
  resetBudget(): number | undefined {
    if (!this.budget) {
      const initial = this.faults.pendingResets.shift()
      if (initial === undefined) return undefined
      this.budget = { initial, left: initial }
    }
    return this.budget.left
  }

  spend(n: number): void {
    if (this.budget) this.budget.left -= n
  }

  dropBudget(): void {
    this.budget = undefined
  }

  cutAfter(last: Buffer): void {
    this.budget = undefined
    this.counters.resets++
    this.finish()
    this.upstream.destroy()
    if (last.length === 0) this.client.resetAndDestroy()
    else this.client.write(last, () => this.client.resetAndDestroy())
  }

  /** Cuts the connection by a fault, so the client sees ECONNRESET. */
  reset(): void {
    if (this.closed) return
    this.counters.resets++
    this.abort()
  }

  destroy(): void {
    this.finish()
    this.client.destroy()
    this.upstream.destroy()
  }

  private abort(): void {
    if (this.closed) return
    this.finish()
    this.client.resetAndDestroy()
    this.upstream.destroy()
  }

  private finish(): void {
    if (this.closed) return
    this.closed = true
    for (const pump of this.pumps) pump.stop()
    // A budget this connection never used up goes back for the next connection, so
    // resetAfterBytes cuts as many connections as asked for.
    if (this.budget) this.faults.pendingResets.unshift(this.budget.initial)
    this.budget = undefined
  }
}

export class FaultProxy {
  readonly port: number
  readonly endpoint: string
  private readonly faults: Faults
  private readonly counters: Counters = { connections: 0, bytesToClient: 0, bytesToServer: 0, resets: 0 }
  private readonly conns = new Set<Connection>()
  private readonly outages = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>()
  private readonly lifetimeTimer: NodeJS.Timeout
  private closing: Promise<void> | undefined

  private constructor(
    private readonly server: net.Server,
    private readonly targetHost: string,
    private readonly targetPort: number,
    private readonly maxConnections: number,
    maxBufferedBytes: number,
    maxLifetimeMs: number,
  ) {
    this.faults = { latencyMs: 0, bytesPerSec: null, stalledUntil: 0, pendingResets: [], maxBufferedBytes }
    this.port = (server.address() as net.AddressInfo).port
    this.endpoint = `http://127.0.0.1:${this.port}`
    server.on('connection', (socket) => this.accept(socket))
    this.lifetimeTimer = setTimeout(() => void this.close(), maxLifetimeMs).unref()
  }

  static async start(opts: FaultProxyOptions): Promise<FaultProxy> {
    const targetHost = opts.targetHost ?? '127.0.0.1'
    if (!isLoopback(targetHost)) {
      throw new Error(`fault proxy forwards to loopback only; refusing target ${targetHost}`)
    }
    if (!Number.isInteger(opts.targetPort) || opts.targetPort <= 0 || opts.targetPort > 65535) {
      throw new Error(`fault proxy target port must be 1-65535, got ${opts.targetPort}`)
    }
    const server = net.createServer({ allowHalfOpen: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    server.unref()
    return new FaultProxy(
      server,
      targetHost,
      opts.targetPort,
      opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      opts.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED,
      opts.maxLifetimeMs ?? DEFAULT_LIFETIME_MS,
    )
  }

  /** Connections accepted since start, including those refused by a fault or the cap. */
  get connections(): number {
    return this.counters.connections
  }
  get active(): number {
    return this.conns.size
  }
  get bytesToClient(): number {
    return this.counters.bytesToClient
  }
  get bytesToServer(): number {
    return this.counters.bytesToServer
  }
  /** Connections cut by a fault: outages, resetAfterBytes, and refusals over maxConnections. */
  get resets(): number {
    return this.counters.resets
  }
  /** Bytes held inside the proxy right now, across all connections and both directions. */
  get buffered(): number {
    let total = 0
    for (const conn of this.conns) total += conn.buffered
    return total
  }
  get closed(): boolean {
    return this.closing !== undefined
  }

  /** Delays each chunk, in both directions, by ms from when the proxy receives it. */
  setLatency(ms: number): void {
    this.faults.latencyMs = Math.max(0, ms)
    this.kick()
  }

  /**
   * Caps server-to-client throughput of each connection separately (not the total), so
   * a transfer's duration does not depend on what else runs in parallel. null removes it.
   */
  setBandwidth(bytesPerSec: number | null): void {
    if (bytesPerSec !== null && !(bytesPerSec > 0)) {
      throw new Error(`bandwidth must be a positive number of bytes per second or null, got ${bytesPerSec}`)
    }
    this.faults.bytesPerSec = bytesPerSec
    this.kick()
  }

  /**
   * Resets every open connection and, for ms, every new one. Resolves when this outage's
   * window ends; an overlapping outage started later keeps the proxy down until it ends too.
   */
  outage(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve()
    for (const conn of this.conns) conn.reset()
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.outages.delete(entry)
          resolve()
        }, ms),
        resolve,
      }
      this.outages.add(entry)
    })
  }

  /**
   * The next `count` connections to send data to the client (new ones, or idle keep-alive
   * ones that carry a new response) are reset once n more bytes have reached the client.
   * A connection that closes before reaching n hands its turn to the next one.
   */
  resetAfterBytes(n: number, opts: ResetAfterBytesOptions = {}): void {
    const count = opts.count ?? 1
    for (let i = 0; i < count; i++) this.faults.pendingResets.push(Math.max(0, n))
  }

  /** Holds all data in both directions, on open and new connections, for ms; nothing is closed or lost. */
  stall(ms: number): void {
    this.faults.stalledUntil = Math.max(this.faults.stalledUntil, Date.now() + ms)
  }

  clear(): void {
    this.faults.latencyMs = 0
    this.faults.bytesPerSec = null
    this.faults.stalledUntil = 0
    this.faults.pendingResets.length = 0
    for (const conn of this.conns) conn.dropBudget()
    this.endOutages()
    this.kick()
  }

  close(): Promise<void> {
    if (!this.closing) {
      clearTimeout(this.lifetimeTimer)
      this.endOutages()
      this.closing = new Promise((resolve) => this.server.close(() => resolve()))
      for (const conn of this.conns) conn.destroy()
    }
    return this.closing
  }

  private accept(client: net.Socket): void {
    this.counters.connections++
    if (this.closed || this.outages.size > 0 || this.conns.size >= this.maxConnections) {
      this.counters.resets++
      client.on('error', () => {})
      client.resetAndDestroy()
      return
    }
    const upstream = net.connect({ host: this.targetHost, port: this.targetPort, allowHalfOpen: true })
    const conn = new Connection(this.faults, this.counters, client, upstream, () => this.conns.delete(conn))
    this.conns.add(conn)
  }

  private kick(): void {
    for (const conn of this.conns) conn.kick()
  }

  private endOutages(): void {
    for (const { timer, resolve } of this.outages) {
      clearTimeout(timer)
      resolve()
    }
    this.outages.clear()
  }
}

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  return FaultProxy.start(opts)
}
