// An HTTP server in front of the real S3 server that forwards every request unchanged (so that
// signatures, ETags and errors are the real server's) and, on command, lies in its answers to
// ranged GETs the way broken gateways and caches do: the whole object with 200, a 206 whose
// Content-Range names another range (with that range's bytes), a Content-Length longer than the
// range, or a 500 with a huge chunked body. Tests use it to prove that a client never takes a lie
// for data. It can also play what Swift's tempauth and a shared clock cannot: the expiry of
// temporary credentials (a request signed with a session token it was told has expired gets S3's
// 403 ExpiredToken) and a client whose clock is off (a request signed too far from its own clock
// gets 403 RequestTimeTooSkewed with that clock's Date, as S3 answers). Loopback only; it never
// keeps the process alive.
import http from 'node:http'
import { listenOnLoopback } from './loopback-server.js'

export type Lie =
  /** 200 and the whole object, for any range. */
  | 'whole'
  /** 206 naming the range one byte further (or back, at the end) with the bytes of that range. */
  | 'other-range'
  /** 206 with the right Content-Range but a Content-Length, and body, 100 bytes longer. */
  | 'long-length'
  /** 500 with a chunked XML error body of `errorBodyBytes`. */
  | 'error-500-chunked'
  /**
   * Metadata, not bytes: a HEAD of a matching path, and a matching key's entry in a ListObjectsV2
   * answer, name a LastModified of 1969-12-31T23:59:59Z (before the epoch: no real object has one).
   */
  | 'before-1970'
  /**
   * A ListObjectsV2 page that starts after a name (`start-after`), of a prefix whose
   * `/bucket/prefix` matches: no entries, but truncated with a continuation token, as S3 may
   * answer where a page's keys were all skipped.
   */
  | 'empty-page'

export interface LyingS3Options {
  /** The real server, `http://127.0.0.1:port`. */
  target: string
  /** The bytes of the object at a request path (`/bucket/key`), for the lies that need them. */
  objectBytes: (path: string) => Buffer | undefined
  /** Size of the 'error-500-chunked' body. Default 32 MiB. */
  errorBodyBytes?: number
}

export interface LyingS3 {
  endpoint: string
  /** The next `count` (default 1; Infinity: all) ranged GETs of paths matching `path` get `lie`. */
  lie(lie: Lie, opts?: { count?: number; path?: RegExp }): void
  /** Honest again. */
  clear(): void
  /** Lies told so far. */
  readonly told: number
  /** From now on, requests signed with session token `token` are answered 403 ExpiredToken, as S3 does once it expires. */
  expire(token: string): void
  /** The session tokens (x-amz-security-token) requests came with, each once, in order of first use. */
  readonly tokens: readonly string[]
  /**
   * From now on its clock runs `aheadMs` ahead of this machine's: a request whose X-Amz-Date is more
   * than 5 minutes from it is answered 403 RequestTimeTooSkewed with its Date (those within pass on
   * to the server, whose own limit is 15 minutes).
   */
  skew(aheadMs: number): void
  /** Requests refused as skewed so far. */
  readonly skewed: number
  /**
   * The server's answer to the next request whose URL (path and query) matches `url` is read whole
   * and kept back until release(): an answer on its way while the bucket changes.
   */
  hold(url: RegExp): void
  /** Answers read and kept back so far. */
  readonly held: number
  release(): void
  close(): Promise<void>
}

const EXTRA = 100
const SKEW_LIMIT_MS = 5 * 60_000
const CHUNK = 64 << 10

export async function startLyingS3(o: LyingS3Options): Promise<LyingS3> {
  const target = new URL(o.target)
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(target.hostname)) throw new Error(`lying S3 forwards to loopback only, not ${target.hostname}`)
  let pending: { lie: Lie; count: number; path?: RegExp } | undefined
  let told = 0
  const expired = new Set<string>()
  const tokens: string[] = []
  let aheadMs = 0
  let skewed = 0
  let holding: RegExp | undefined
  let held = 0
  let release = () => {}
  let released = Promise.resolve()
  const refuse = (req: http.IncomingMessage, res: http.ServerResponse, code: string, message: string, headers: http.OutgoingHttpHeaders = {}) => {
    req.resume()
    const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message></Error>`
    res.writeHead(403, { ...headers, 'content-type': 'application/xml', 'content-length': Buffer.byteLength(xml) })
    res.end(xml)
  }

  const server = http.createServer((req, res) => {
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]!)
    const token = req.headers['x-amz-security-token']
    if (typeof token === 'string') {
      if (!tokens.includes(token)) tokens.push(token)
      if (expired.has(token)) return refuse(req, res, 'ExpiredToken', 'The provided token has expired.')
    }
    if (aheadMs !== 0) {
      const stamp = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(String(req.headers['x-amz-date'] ?? ''))
      const signedAt = stamp ? Date.UTC(+stamp[1]!, +stamp[2]! - 1, +stamp[3]!, +stamp[4]!, +stamp[5]!, +stamp[6]!) : NaN
      const now = Date.now() + aheadMs
      if (!(Math.abs(now - signedAt) <= SKEW_LIMIT_MS)) {
        skewed++
        return refuse(req, res, 'RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.', {
          date: new Date(now).toUTCString(),
        })
      }
    }
    if (pending?.lie === 'before-1970' || pending?.lie === 'empty-page') return void forwardMetadataLie(req, res, path)
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '')
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
      const bytes = o.objectBytes(path)
      const start = Number(range?.[1])
      const end = bytes && range ? (range[2] === '' ? bytes.length - 1 : Math.min(Number(range[2]), bytes.length - 1)) : -1
      // A lie needs a ranged GET the server answered, the object's bytes, and (for another range) room to move.
      const lie = pending && req.method === 'GET' && upRes.statusCode === 206 && bytes && (!pending.path || pending.path.test(path)) ? pending.lie : undefined
      if (!lie || !bytes || (lie === 'other-range' && start === 0 && end === bytes.length - 1)) {
        if (holding?.test(req.url ?? '')) {
          holding = undefined
          const chunks: Buffer[] = []
          upRes.on('data', (c: Buffer) => chunks.push(c))
          upRes.on('end', () => {
            held++
            void released.then(() => {
              res.writeHead(upRes.statusCode ?? 502, upRes.headers)
              res.end(Buffer.concat(chunks))
            })
          })
          return
        }
        res.writeHead(upRes.statusCode ?? 502, upRes.headers)
        upRes.pipe(res)
        return
      }
      upRes.resume()
      if (--pending!.count <= 0) pending = undefined
      told++
      const headers = { ...upRes.headers }
      delete headers['content-length']
      delete headers['content-range']
      if (lie === 'whole') {
        res.writeHead(200, { ...headers, 'content-length': bytes.length })
        res.end(bytes)
      } else if (lie === 'other-range') {
        const d = end + 1 < bytes.length ? 1 : -1
        res.writeHead(206, { ...headers, 'content-length': end - start + 1, 'content-range': `bytes ${start + d}-${end + d}/${bytes.length}` })
        res.end(bytes.subarray(start + d, end + d + 1))
      } else if (lie === 'long-length') {
        const body = Buffer.concat([bytes.subarray(start, end + 1), Buffer.alloc(EXTRA, 0x5a)])
        res.writeHead(206, { ...headers, 'content-length': body.length, 'content-range': `bytes ${start}-${end}/${bytes.length}` })
        res.end(body)
      } else {
        res.writeHead(500, { 'content-type': 'application/xml', 'transfer-encoding': 'chunked', etag: headers.etag ?? '' })
        res.write('<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>')
        let left = o.errorBodyBytes ?? 32 << 20
        const filler = Buffer.alloc(CHUNK, 0x78)
        const more = () => {
          while (left > 0) {
            const n = Math.min(left, CHUNK)
            left -= n
            if (!res.write(filler.subarray(0, n))) return void res.once('drain', more)
          }
          res.end('</Message></Error>')
        }
        res.on('close', () => (left = 0))
        more()
      }
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  /** The metadata lies: HEADs and listings rewritten (each counts as one lie), anything else forwarded as is. */
  function forwardMetadataLie(req: http.IncomingMessage, res: http.ServerResponse, path: string): void {
    const p = pending!
    const query = new URLSearchParams((req.url ?? '').split('?')[1] ?? '')
    const listing = req.method === 'GET' && query.get('list-type') === '2'
    const bucket = path.split('/')[1]
    const emptyPage = p.lie === 'empty-page' && listing && query.has('start-after') && (!p.path || p.path.test(`/${bucket}/${query.get('prefix') ?? ''}`))
    const head = p.lie === 'before-1970' && req.method === 'HEAD' && (!p.path || p.path.test(path))
    const dates = p.lie === 'before-1970' && listing
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
      if (upRes.statusCode !== 200 || !(head || dates || emptyPage)) {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers)
        return void upRes.pipe(res)
      }
      const headers = { ...upRes.headers }
      const lied = () => {
        told++
        if (--p.count <= 0 && pending === p) pending = undefined
      }
      if (head) {
        lied()
        res.writeHead(200, { ...headers, 'last-modified': 'Wed, 31 Dec 1969 23:59:59 GMT' })
        return void upRes.pipe(res)
      }
      const chunks: Buffer[] = []
      upRes.on('data', (c: Buffer) => chunks.push(c))
      upRes.on('end', () => {
        let xml = Buffer.concat(chunks).toString('utf8')
        if (emptyPage) {
          lied()
          xml = xml
            .replace(/<Contents>.*?<\/Contents>|<CommonPrefixes>.*?<\/CommonPrefixes>|<NextContinuationToken>.*?<\/NextContinuationToken>/gs, '')
            .replace(/<KeyCount>\d+<\/KeyCount>/, '<KeyCount>0</KeyCount>')
            .replace(/<IsTruncated>\w+<\/IsTruncated>/, '<IsTruncated>true</IsTruncated><NextContinuationToken>lied</NextContinuationToken>')
        } else {
          let any = false
          xml = xml.replace(/<Contents>.*?<\/Contents>/gs, (entry) => {
            const key = /<Key>(.*?)<\/Key>/s.exec(entry)?.[1] ?? ''
            if (p.path && !p.path.test(`/${bucket}/${key}`)) return entry
            any = true
            return entry.replace(/<LastModified>.*?<\/LastModified>/s, '<LastModified>1969-12-31T23:59:59.000Z</LastModified>')
          })
          if (any) lied()
        }
        delete headers['transfer-encoding']
        res.writeHead(200, { ...headers, 'content-length': Buffer.byteLength(xml) })
        res.end(xml)
      })
    })
    up.on('error', () => res.destroy())
    req.pipe(up)
  }

  const { port, close } = await listenOnLoopback(server)
  return {
    endpoint: `http://127.0.0.1:${port}`,
    lie: (lie, opts = {}) => {
      pending = { lie, count: opts.count ?? 1, path: opts.path }
    },
    clear: () => {
      pending = undefined
    },
    get told() {
      return told
    },
    expire: (token) => {
      expired.add(token)
    },
    tokens,
    skew: (ms) => {
      aheadMs = ms
    },
    get skewed() {
      return skewed
    },
    hold: (url) => {
      holding = url
      released = new Promise<void>((resolve) => (release = resolve))
    },
    get held() {
      return held
    },
    release: () => release(),
    close,
  }
}
