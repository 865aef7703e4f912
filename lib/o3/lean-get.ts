import { createHash, createHmac } from 'node:crypto'
import net from 'node:net'
import { SignatureV4 } from '@smithy/signature-v4'
import type { AwsCredentialIdentity, Hash, SourceData } from '@smithy/types'
import { O3IntegrityError } from './errors.js'
import { checkPinned, ifMatchOf, type ObjectPin } from './etag.js'
import { checkRangeAnswer } from './range-answer.js'

/** Where the body of a ranged GET goes: straight into the caller's buffers, without a copy. */
export interface RangeSink {
  /** The free space the next body bytes are read into (never empty while bytes are expected). */
  space(): Buffer
  /** `n` bytes were written at the start of the last space(). */
  wrote(n: number): void
}

export interface LeanGetOptions {
  endpoint: URL
  region: string
  credentials: () => Promise<AwsCredentialIdentity>
  /** Idle keep-alive connections kept for reuse. */
  maxIdle: number
  connectTimeoutMs: number
  /** Longest silence on a socket before the request fails. */
  requestTimeoutMs: number
}

/** An error shaped like the SDK's, so that retry.ts classifies and types it the same way. */
class HttpError extends Error {
  readonly $metadata: { httpStatusCode: number }
  constructor(status: number, code: string, message: string) {
    super(message)
    this.name = code
    this.$metadata = { httpStatusCode: status }
  }
}

function socketError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code })
}

const bytes = (d: SourceData): Uint8Array | string =>
  typeof d === 'string' ? d : ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : new Uint8Array(d)

/** node:crypto's sha256 and HMAC in the shape the signer takes. */
class Sha256 implements Hash {
  private readonly h
  constructor(secret?: SourceData) {
    this.h = secret ? createHmac('sha256', bytes(secret)) : createHash('sha256')
  }

  update(data: SourceData): void {
    this.h.update(bytes(data))
  }

  digest(): Promise<Uint8Array> {
    return Promise.resolve(this.h.digest())
  }
}

const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
const HEADER_LIMIT = 64 * 1024
/** Of an error body only this much is kept: S3 puts its <Code> and <Message> first. */
const ERROR_BODY_LIMIT = 4 * 1024
const CHUNKED_END = Buffer.from('0\r\n\r\n')
const CRLFCRLF = Buffer.from('\r\n\r\n')

interface Exchange {
  pin?: ObjectPin
  /** The bytes asked for, inclusive. */
  start: number
  end: number
  sink: RangeSink
  /** Body bytes still to come. */
  remaining: number
  /** Body bytes handed to the sink so far. */
  received: number
  status: number
  etag: string
  /** Only for error responses: the first ERROR_BODY_LIMIT bytes of their XML body, for the error code. */
  errorBody?: Buffer[]
  errorBytes?: number
  /** An error body sent chunked (Swift does): it ends with the zero-length chunk. */
  chunked?: boolean
  /** The last bytes of a chunked error body, to see that end marker across reads. */
  errorTail?: Buffer
  resolve(etag: string): void
  reject(err: Error): void
}

/**
 * One keep-alive HTTP/1.1 connection whose socket reads land where they are going: response
 * headers into a small scratch buffer, body bytes directly into the sink's buffers. No chunk is
 * allocated per read, so there is no copy from chunk to block and no garbage to collect.
 */
class Connection {
  private readonly socket: net.Socket
  private readonly scratch = Buffer.allocUnsafe(HEADER_LIMIT)
  private headerLen = 0
  private ex: Exchange | undefined
  closed = false

  constructor(
    url: URL,
    private readonly o: LeanGetOptions,
    onClose: (c: Connection) => void,
  ) {
    this.socket = net.connect({
      host: url.hostname,
      port: Number(url.port || 80),
      noDelay: true,
      timeout: o.connectTimeoutMs,
      onread: {
        buffer: () => this.nextBuffer(),
        callback: (n: number) => {
          this.onRead(n)
          return true
        },
      },
    })
    this.socket.once('connect', () => this.socket.setTimeout(o.requestTimeoutMs))
    this.socket.on('timeout', () => this.socket.destroy(socketError('ETIMEDOUT', `no data from ${url.host} within ${this.o.requestTimeoutMs} ms`)))
    this.socket.on('error', (err) => this.fail(err))
    this.socket.on('end', () => this.fail(socketError('ECONNRESET', 'the server closed the connection mid-response')))
    this.socket.on('close', () => {
      this.closed = true
      this.fail(socketError('ECONNRESET', 'the connection closed mid-response'))
      onClose(this)
    })
  }

  send(head: string, ex: Exchange): void {
    this.ex = ex
    this.headerLen = 0
    this.socket.write(head)
  }

  destroy(err?: Error): void {
    this.socket.destroy(err)
  }

  private nextBuffer(): Buffer {
    const ex = this.ex
    if (ex && ex.status > 0 && !ex.errorBody) {
      const space = ex.sink.space()
      return space.length > ex.remaining ? space.subarray(0, ex.remaining) : space
    }
    return this.scratch.subarray(this.headerLen)
  }

  private onRead(n: number): void {
    const ex = this.ex
    if (!ex) {
      // Bytes nobody asked for: the connection is out of step and cannot be reused.
      this.socket.destroy()
      return
    }
    if (ex.status === 0) {
      this.headerLen += n
      this.parseHead(ex)
    } else if (ex.errorBody) {
      this.addErrorBytes(ex, this.scratch.subarray(0, n))
    } else {
      ex.sink.wrote(n)
      ex.received += n
      ex.remaining -= n
    }
    if (ex.status > 0 && ex.remaining <= 0) this.finish(ex)
  }

  private parseHead(ex: Exchange): void {
    const end = this.scratch.subarray(0, this.headerLen).indexOf(CRLFCRLF)
    if (end < 0) {
      if (this.headerLen >= HEADER_LIMIT) this.socket.destroy(socketError('EPROTO', 'response headers over 64 KiB'))
      return
    }
    const lines = this.scratch.toString('latin1', 0, end).split('\r\n')
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!)?.[1] ?? 0)
    const headers = new Map<string, string>()
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':')
      if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim())
    }
    const chunked = status >= 300 && /chunked/i.test(headers.get('transfer-encoding') ?? '')
    const length = chunked ? Infinity : Number(headers.get('content-length') ?? NaN)
    if (!status || !(chunked || Number.isSafeInteger(length))) {
      // Chunked or malformed: this lean path reads Content-Length bodies only (every S3 GET has one).
      this.socket.destroy(socketError('EPROTO', `unexpected response: ${lines[0]} without Content-Length`))
      return
    }
    ex.status = status
    ex.etag = headers.get('etag') ?? ''
    ex.remaining = length
    if (status >= 300) {
      ex.errorBody = []
      ex.errorBytes = 0
      ex.chunked = chunked
      ex.errorTail = Buffer.alloc(0)
    } else {
      // Before a byte of the body reaches the sink: only the asked range, exactly, is data.
      const wrong = checkRangeAnswer(status, headers.get('content-range'), length, ex.start, ex.end)
      if (wrong) {
        this.socket.destroy()
        this.settle(ex, wrong)
        return
      }
      if (ex.pin) {
        // Checked as well as sent: a server that ignores If-Match or VersionId must still not mix two versions.
        try {
          checkPinned(ex.pin, ex.etag, headers.get('x-amz-version-id'))
        } catch (err) {
          this.socket.destroy()
          this.settle(ex, new O3IntegrityError((err as Error).message))
          return
        }
      }
    }
    // Body bytes that came in with the headers.
    const extra = this.scratch.subarray(end + 4, this.headerLen)
    this.headerLen = 0
    for (let off = 0; off < extra.length; ) {
      if (ex.errorBody) {
        this.addErrorBytes(ex, extra)
        break
      }
      const space = ex.sink.space()
      const n = Math.min(space.length, extra.length - off, ex.remaining)
      if (n <= 0) break
      extra.copy(space, 0, off, off + n)
      ex.sink.wrote(n)
      ex.received += n
      ex.remaining -= n
      off += n
    }
  }

  /**
   * Keeps the start of an error body; once it holds ERROR_BODY_LIMIT bytes the rest is not worth
   * reading (the request fails either way, and get() drops the connection), so the exchange ends.
   */
  private addErrorBytes(ex: Exchange, bytes: Buffer): void {
    const keep = Math.min(bytes.length, ERROR_BODY_LIMIT - ex.errorBytes!)
    if (keep > 0) ex.errorBody!.push(Buffer.from(bytes.subarray(0, keep)))
    ex.errorBytes! += keep
    ex.remaining -= bytes.length
    if (ex.chunked) {
      ex.errorTail = Buffer.concat([ex.errorTail!, bytes.subarray(-CHUNKED_END.length)]).subarray(-CHUNKED_END.length)
      if (ex.errorTail.equals(CHUNKED_END)) ex.remaining = 0
    }
    if (ex.errorBytes! >= ERROR_BODY_LIMIT) ex.remaining = 0
  }

  private finish(ex: Exchange): void {
    this.ex = undefined
    if (!ex.errorBody) return this.settle(ex)
    const body = Buffer.concat(ex.errorBody).toString('utf8')
    const code = /<Code>([^<]+)<\/Code>/.exec(body)?.[1] ?? `Http${ex.status}`
    const message = /<Message>([^<]+)<\/Message>/.exec(body)?.[1] ?? `HTTP ${ex.status}`
    this.settle(ex, new HttpError(ex.status, code, message))
  }

  private settle(ex: Exchange, err?: Error): void {
    this.ex = undefined
    if (err) ex.reject(err)
    else ex.resolve(ex.etag)
  }

  private fail(err: Error): void {
    const ex = this.ex
    if (ex) this.settle(ex, err)
  }
}

/**
 * Signed ranged GETs for the mount's block fetches, without the SDK: one SigV4 signature (the
 * SDK's own signer), a request line written to a keep-alive socket, and the body read by the
 * kernel straight into the block buffers. Plain-HTTP endpoints only (the loopback server, a
 * gateway in the same network); HTTPS endpoints keep the SDK path. Retries and resumption are the
 * caller's (O3Client.readRangeInto), with the same policy as every other request.
 */
export class LeanGet {
  private readonly idle: Connection[] = []
  private readonly signer: SignatureV4
  private closed = false

  constructor(private readonly o: LeanGetOptions) {
    this.signer = new SignatureV4({ credentials: o.credentials, region: o.region, service: 's3', sha256: Sha256, uriEscapePath: false, applyChecksum: false })
  }

  static supports(endpoint: string): boolean {
    return endpoint.startsWith('http:')
  }

  /**
   * GET `path` (bucket and key, already URI-encoded) for bytes [start, end] into `sink`. Resolves
   * with the response's ETag; on failure `received()` tells how far the body got.
   */
  async get(
    path: string,
    start: number,
    end: number,
    pin: ObjectPin | undefined,
    sink: RangeSink,
    signal?: AbortSignal,
  ): Promise<{ etag: string; received: number }> {
    const url = this.o.endpoint
    const headers: Record<string, string> = { host: url.host, range: `bytes=${start}-${end}`, 'x-amz-content-sha256': EMPTY_SHA256 }
    if (pin) headers['if-match'] = ifMatchOf(pin)
    const query: Record<string, string> = pin?.versionId ? { versionId: pin.versionId } : {}
    const signed = await this.signer.sign({ method: 'GET', protocol: 'http:', hostname: url.hostname, port: Number(url.port || 80), path, query, headers })
    const target = pin?.versionId ? `${path}?versionId=${encodeURIComponent(pin.versionId)}` : path
    const head = `GET ${target} HTTP/1.1\r\n${Object.entries(signed.headers)
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('')}connection: keep-alive\r\n\r\n`
    for (let attempt = 0; ; attempt++) {
      const reused = this.idle.pop()
      const conn = reused ?? new Connection(url, this.o, (c) => this.forget(c))
      const ex: Exchange = { pin, start, end, sink, remaining: 0, received: 0, status: 0, etag: '', resolve: () => {}, reject: () => {} }
      const done = new Promise<string>((resolve, reject) => {
        ex.resolve = resolve
        ex.reject = reject
      })
      const onAbort = () => conn.destroy(Object.assign(new Error('the request was aborted'), { name: 'AbortError' }))
      signal?.addEventListener('abort', onAbort, { once: true })
      conn.send(head, ex)
      try {
        const etag = await done
        if (!this.closed && !conn.closed && this.idle.length < this.o.maxIdle) this.idle.push(conn)
        else conn.destroy()
        return { etag, received: ex.received }
      } catch (err) {
        conn.destroy()
        // A kept-alive socket the server had already closed fails before any byte of the
        // response: that is not a failed request, so it goes out again on a fresh connection.
        if (reused && ex.status === 0 && attempt === 0 && !signal?.aborted) continue
        throw Object.assign(err as Error, { received: ex.received })
      } finally {
        signal?.removeEventListener('abort', onAbort)
      }
    }
  }

  private forget(c: Connection): void {
    const i = this.idle.indexOf(c)
    if (i >= 0) this.idle.splice(i, 1)
  }

  close(): void {
    this.closed = true
    for (const c of this.idle.splice(0)) c.destroy()
  }
}
