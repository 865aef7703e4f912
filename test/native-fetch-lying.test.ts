// The fetch engine (under ASan + UBSan) against a server that lies: a 200 or 206 that is not the
// range asked for, lengths that disagree or overflow (2^63, 2^64 + 1, negative), chunked data,
// malformed heads, a 32 MiB error body, another ETag or version. Every lie is refused or retried,
// never delivered as data, and nothing crashes; the one honest variant of each (a 200 carrying the
// whole object) is used at the right offset. A raw socket server plays S3 (test/support/
// raw-http-server.ts): Node's http module would not send most of these.
import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import { buildNativeTools, fetchTool, type FetchToolOptions, type FetchToolResult } from './support/native-tools.js'
import { RawHttpServer, rangeOf, type RawConnection, type RawRequest } from './support/raw-http-server.js'

const OBJ = randomBytes(300_000)
const SIZE = OBJ.length
const ETAG = 'good-etag'
const ERROR_BODY_BYTES = 32 * 1024 * 1024

type Head = (string | [string, string | number])[]

function head(status: string, lines: Head): string {
  return `HTTP/1.1 ${status}\r\n${lines.map((l) => (typeof l === 'string' ? l : `${l[0]}: ${l[1]}`)).join('\r\n')}\r\n\r\n`
}

async function send206(conn: RawConnection, first: number, last: number, extra: Head = [], etag = ETAG): Promise<void> {
  const n = last - first + 1
  await conn.write(head('206 Partial Content', [['Content-Range', `bytes ${first}-${last}/${SIZE}`], ['Content-Length', n], ['ETag', `"${etag}"`], ...extra]))
  await conn.write(OBJ.subarray(first, last + 1))
}

/** What each lying error body managed to send before the client hung up. */
const errorBodies: { sent: number; complete: boolean }[] = []

async function hugeErrorBody(conn: RawConnection): Promise<void> {
  await conn.write(
    head('500 Internal Server Error', [
      ['Content-Type', 'application/xml'],
      ['Transfer-Encoding', 'chunked'],
    ]),
  )
  const xml = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>lying</Message>'
  const record = { sent: 0, complete: false }
  errorBodies.push(record)
  if (!(await conn.write(`${xml.length.toString(16)}\r\n${xml}\r\n`))) return
  const filler = Buffer.alloc(64 * 1024, 'x')
  const chunk = Buffer.concat([Buffer.from(`${filler.length.toString(16)}\r\n`), filler, Buffer.from('\r\n')])
  for (let sent = 0; sent < ERROR_BODY_BYTES; sent += filler.length) {
    if (!(await conn.write(chunk))) return
    record.sent += filler.length
  }
  record.complete = await conn.write('0\r\n\r\n')
}

/** Key -> how the server answers a GET of it. Names say the lie. */
const scenarios: Record<string, (req: RawRequest, conn: RawConnection, first: number, last: number) => Promise<void>> = {
  honest: (_r, c, a, b) => send206(c, a, b),
  'whole-200': async (_r, c) => {
    await c.write(
      head('200 OK', [
        ['Content-Length', SIZE],
        ['ETag', `"${ETAG}"`],
      ]),
    )
    await c.write(OBJ)
  },
  'short-200': async (_r, c) => {
    await c.write(
      head('200 OK', [
        ['Content-Length', SIZE - 1],
        ['ETag', `"${ETAG}"`],
      ]),
    )
    await c.write(OBJ.subarray(0, SIZE - 1))
  },
  'other-range': async (_r, c, a, b) => {
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a + 1}-${b + 1}/${SIZE}`],
        ['Content-Length', b - a + 1],
        ['ETag', ETAG],
      ]),
    )
    await c.write(OBJ.subarray(a + 1, b + 2))
  },
  'length-longer': async (_r, c, a, b) => {
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a}-${b}/${SIZE}`],
        ['Content-Length', b - a + 2],
        ['ETag', ETAG],
      ]),
    )
    await c.write(OBJ.subarray(a, b + 2))
  },
  'length-shorter': async (_r, c, a, b) => {
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a}-${b}/${SIZE}`],
        ['Content-Length', b - a],
        ['ETag', ETAG],
      ]),
    )
    await c.write(OBJ.subarray(a, b))
  },
  'other-total': async (_r, c, a, b) => {
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a}-${b}/${SIZE + 1}`],
        ['Content-Length', b - a + 1],
        ['ETag', ETAG],
      ]),
    )
    await c.write(OBJ.subarray(a, b + 1))
  },
  'chunked-206': async (_r, c, a, b) => {
    const data = OBJ.subarray(a, b + 1)
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a}-${b}/${SIZE}`],
        ['Transfer-Encoding', 'chunked'],
        ['ETag', ETAG],
      ]),
    )
    await c.write(Buffer.concat([Buffer.from(`${data.length.toString(16)}\r\n`), data, Buffer.from('\r\n0\r\n\r\n')]))
  },
  'error-32mib': (_r, c) => hugeErrorBody(c),
  'chunk-size-overflow': async (_r, c) => {
    await c.write(head('503 Slow Down', [['Transfer-Encoding', 'chunked']]))
    await c.write('fffffffffffffffffffff\r\n<Error><Code>SlowDown</Code></Error>\r\n0\r\n\r\n')
    c.end()
  },
  ...Object.fromEntries(
    [
      ['length-2^63', '9223372036854775808'],
      ['length-2^64+1', '18446744073709551617'],
      ['length-negative', '-1'],
      ['length-hex', '0x10'],
      ['length-twice', '10\r\nContent-Length: 11'],
    ].map(([name, value]) => [
      name,
      async (_r: RawRequest, c: RawConnection, a: number, b: number) => {
        await c.write(
          head('206 Partial Content', [
            ['Content-Range', `bytes ${a}-${b}/${SIZE}`],
            ['Content-Length', value!],
            ['ETag', ETAG],
          ]),
        )
        await c.write(OBJ.subarray(a, b + 1))
        c.end()
      },
    ]),
  ),
  'garbage-status': async (_r, c, a, b) => {
    await c.write(`HTTP/1.1 2x6 Partial\r\nContent-Length: ${b - a + 1}\r\n\r\n`)
    await c.write(OBJ.subarray(a, b + 1))
  },
  'binary-junk': async (_r, c) => {
    await c.write(Buffer.concat([randomBytes(3000), Buffer.from('\r\n\r\n')]))
    c.end()
  },
  'no-colon': async (_r, c, a, b) => {
    await c.write(
      head('206 Partial Content', [['Content-Range', `bytes ${a}-${b}/${SIZE}`], ['Content-Length', b - a + 1], 'this line has no colon', ['ETag', ETAG]]),
    )
    await c.write(OBJ.subarray(a, b + 1))
  },
  'control-bytes': async (_r, c, a, b) => {
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a}-${b}/${SIZE}`],
        ['Content-Length', b - a + 1],
        ['ETag', 'go\x01od-etag'],
      ]),
    )
    await c.write(OBJ.subarray(a, b + 1))
  },
  'huge-head': async (_r, c, a, b) => {
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a}-${b}/${SIZE}`],
        ['Content-Length', b - a + 1],
        ['X-Pad', 'p'.repeat(200_000)],
        ['ETag', ETAG],
      ]),
    )
    await c.write(OBJ.subarray(a, b + 1))
  },
  'many-headers': async (_r, c, a, b) => {
    const pad: Head = Array.from({ length: 2000 }, (_, i): [string, string] => [`X-Pad-${i}`, 'p'.repeat(40)])
    await c.write(head('206 Partial Content', [['Content-Range', `bytes ${a}-${b}/${SIZE}`], ['Content-Length', b - a + 1], ...pad, ['ETag', ETAG]]))
    await c.write(OBJ.subarray(a, b + 1))
  },
  'no-status-line': async (_r, c, a, b) => {
    await c.write(OBJ.subarray(a, b + 1))
    c.end()
  },
  'status-204': async (_r, c) => {
    await c.write(head('204 No Content', [['ETag', ETAG]]))
  },
  'lie-once': async (r, c, a, b) => (r.attempt === 1 ? scenarios['other-range']!(r, c, a, b) : send206(c, a, b)),
  'other-etag': (_r, c, a, b) => send206(c, a, b, [], 'evil-etag'),
  'other-version': (_r, c, a, b) => send206(c, a, b, [['x-amz-version-id', 'v2']]),
  'learn-version': async (r, c, a, b) => {
    if (r.attempt > 1) return send206(c, a, b, [['x-amz-version-id', 'v7']])
    // The first response names the version and breaks off halfway.
    const n = b - a + 1
    await c.write(
      head('206 Partial Content', [
        ['Content-Range', `bytes ${a}-${b}/${SIZE}`],
        ['Content-Length', n],
        ['ETag', ETAG],
        ['x-amz-version-id', 'v7'],
      ]),
    )
    await c.write(OBJ.subarray(a, a + Math.floor(n / 2)))
    c.reset()
  },
  'redirect-301': async (_r, c) => {
    const body = '<Error><Code>PermanentRedirect</Code></Error>'
    await c.write(
      head('301 Moved Permanently', [
        ['Location', 'http://127.0.0.1:1/elsewhere'],
        ['Content-Length', body.length],
      ]),
    )
    await c.write(body)
  },
  'not-found-1mib-body': async (_r, c) => {
    const body = Buffer.concat([Buffer.from('<Error><Code>NoSuchKey</Code>'), Buffer.alloc(1 << 20, 'y')])
    await c.write(head('404 Not Found', [['Content-Length', body.length]]))
    await c.write(body)
  },
}

const server = await RawHttpServer.start(async (req, conn) => {
  const name = decodeURIComponent(req.path.split('/').at(-1) ?? '')
  const range = rangeOf(req)
  const scenario = scenarios[name]
  if (!scenario || !range) {
    await conn.write(head('400 Bad Request', [['Content-Length', 0]]))
    return
  }
  await scenario(req, conn, range[0], range[1])
})
t.teardown(() => server.close())
await buildNativeTools()

function fetch(key: string, o: Partial<FetchToolOptions> = {}): Promise<FetchToolResult> {
  return fetchTool({
    endpoint: server.endpoint,
    region: 'akave-network',
    accessKeyId: 'lies',
    secretAccessKey: 'lies',
    bucket: 'lies',
    key,
    etag: ETAG,
    size: SIZE,
    ranges: [[1000, 50_000]],
    attempts: 3,
    baseDelayMs: 5,
    ...o,
  })
}

function clean(t: Test, r: FetchToolResult): void {
  t.equal(r.code, 0, `fetch_tool exited ${r.code}: ${r.stderr}`)
  t.same(r.violations, [], 'the sink contract held')
}

/** The lie was refused on every attempt and not one byte of it reached the sink. */
async function refused(t: Test, key: string, kind = 'Stream', attempts = 3): Promise<FetchToolResult> {
  const r = await fetch(key)
  clean(t, r)
  const res = r.results[0]!
  t.equal(res.status, kind, `${key}: ${res.message}`)
  t.equal(res.written, 0, 'nothing delivered')
  t.equal(r.stats.bytesReceived, 0)
  t.ok(
    r.image.every((b) => b === 0),
    'no byte of the lie in the output',
  )
  t.equal(server.count(`/lies/${key}`), attempts, `${attempts} request(s)`)
  return r
}

t.test('the honest server, and a 200 with the whole object used at the right offset', async (t) => {
  for (const key of ['honest', 'whole-200']) {
    const r = await fetch(key, {
      ranges: [
        [1000, 50_000],
        [SIZE - 10, 10],
        [0, SIZE],
      ],
    })
    clean(t, r)
    t.same(
      r.results.map((x) => x.status),
      ['Ok', 'Ok', 'Ok'],
    )
    t.ok(r.image.equals(OBJ), `${key}: every range byte-exact`)
    t.equal(r.stats.retries, 0)
  }
})

for (const key of [
  'short-200',
  'other-range',
  'length-longer',
  'length-shorter',
  'other-total',
  'chunked-206',
  'length-2^63',
  'length-2^64+1',
  'length-negative',
  'length-hex',
  'length-twice',
  'garbage-status',
  'binary-junk',
  'no-colon',
  'control-bytes',
  'huge-head',
  'many-headers',
  'no-status-line',
  'status-204',
  'chunk-size-overflow',
]) {
  t.test(`${key}: refused and retried, never delivered`, (t) => refused(t, key).then(() => {}))
}

t.test('a 32 MiB chunked 500: read 4 KiB deep, its code parsed, retried, memory bounded', async (t) => {
  const control = await fetch('honest')
  const r = await refused(t, 'error-32mib')
  t.match(r.results[0]!.message, /HTTP 500 InternalError: lying.*after 3 attempts/)
  t.equal(errorBodies.length, 3)
  for (const body of errorBodies) {
    t.notOk(body.complete, 'the client hung up before the end of the body')
    t.ok(body.sent < ERROR_BODY_BYTES / 2, `${body.sent} bytes sent before it did`)
  }
  t.ok(r.maxRssKb < control.maxRssKb + 8 * 1024, `peak RSS ${r.maxRssKb} KiB, ${control.maxRssKb} KiB for an honest read`)
})

t.test('a lie once, then the truth: retried and delivered byte-exact', async (t) => {
  const r = await fetch('lie-once')
  clean(t, r)
  t.equal(r.results[0]!.status, 'Ok', r.results[0]!.message)
  t.ok(r.image.subarray(1000, 51_000).equals(OBJ.subarray(1000, 51_000)))
  t.equal(r.stats.retries, 1)
})

t.test('another ETag or version: Integrity at once, nothing delivered', async (t) => {
  await refused(t, 'other-etag', 'Integrity', 1)
  const r = await fetch('other-version', { versionId: 'v1' })
  clean(t, r)
  t.equal(r.results[0]!.status, 'Integrity', r.results[0]!.message)
  t.equal(r.results[0]!.written, 0)
  t.equal(server.count('/lies/other-version'), 1)
})

t.test('a version id learnt from the first response is pinned for the resumed request', async (t) => {
  const r = await fetch('learn-version')
  clean(t, r)
  const res = r.results[0]!
  t.equal(res.status, 'Ok', res.message)
  t.equal(res.pin.versionId, 'v7', 'finished() gets the pin with the version learnt')
  t.ok(r.image.subarray(1000, 51_000).equals(OBJ.subarray(1000, 51_000)), 'byte-exact across the cut')
  const [first, second] = server.requests.filter((q) => q.path === '/lies/learn-version')
  t.equal(first!.query.get('versionId'), null, 'the first request knew no version')
  t.equal(first!.headers.get('if-match'), `"${ETAG}"`)
  t.equal(second!.query.get('versionId'), 'v7', 'the resumed request asks for that version')
  t.equal(second!.headers.get('if-match'), `"${ETAG}"`)
  t.equal(second!.headers.get('range'), `bytes=${1000 + 25_000}-${50_999}`, 'from the first byte not yet written')
})

t.test('a redirect is not followed and not retried; a 404 with a 1 MiB body is NotFound', async (t) => {
  await refused(t, 'redirect-301', 'Stream', 1)
  const r = await refused(t, 'not-found-1mib-body', 'NotFound', 1)
  t.match(r.results[0]!.message, /HTTP 404 NoSuchKey/)
})
