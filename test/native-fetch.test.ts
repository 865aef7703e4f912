// The mount core's fetch engine (cpp/mount/fetch_engine.cpp, under ASan + UBSan) against the real
// Swift S3 server: objects written by the AWS SDK, read back byte-exact through fetch_tool, the
// object's pin honoured, the server's errors typed, connections kept alive and warmed, close()
// cancelling what is in flight.
import { createHash, randomBytes } from 'node:crypto'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import t, { type Test } from 'tap'
import { freePort } from './support/free-port.js'
import { buildNativeTools, fetchTool, type FetchToolOptions, type FetchToolResult } from './support/native-tools.js'
import { createBucket, s3Client, useS3Server } from './support/s3-server.js'

const MiB = 1 << 20
const BUCKET = `native-fetch-${process.pid}`

const info = await useS3Server(t)
await createBucket(info, BUCKET)
await buildNativeTools()
const sdk = s3Client(info)
t.teardown(() => sdk.destroy())

async function put(key: string, body: Buffer): Promise<string> {
  const r = await sdk.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: body }))
  return r.ETag!.replaceAll('"', '')
}

type Options = Omit<FetchToolOptions, 'endpoint' | 'region' | 'accessKeyId' | 'secretAccessKey' | 'bucket'> & Partial<FetchToolOptions>

function fetch(o: Options): Promise<FetchToolResult> {
  return fetchTool({ endpoint: info.endpoint, region: info.region, accessKeyId: info.accessKeyId, secretAccessKey: info.secretAccessKey, bucket: BUCKET, ...o })
}

/** The engine kept the sink contract and no sanitizer spoke. */
function clean(t: Test, r: FetchToolResult): void {
  t.equal(r.code, 0, `fetch_tool exited ${r.code}: ${r.stderr}`)
  t.same(r.violations, [], 'the sink contract held')
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

t.test('byte-exact ranges: first byte, last byte, whole object, across MiB boundaries, many at once', async (t) => {
  const body = randomBytes(3 * MiB + 4097)
  const key = 'ranges/data.bin'
  const etag = await put(key, body)
  const size = body.length
  const ranges: [number, number][] = [
    [0, 1],
    [size - 1, 1],
    [0, size],
    [MiB - 3, MiB + 6],
    [2 * MiB, size - 2 * MiB],
    [12345, 1],
  ]
  const r = await fetch({ key, etag, size, ranges })
  clean(t, r)
  for (const res of r.results) {
    t.equal(res.status, 'Ok', `${res.offset}+${res.length}: ${res.message}`)
    t.equal(res.written, res.length)
    t.equal(res.pin.etag, etag)
  }
  t.equal(sha(r.image), sha(body), 'the whole object, each range at its offset')
  t.equal(r.stats.requests, ranges.length, 'one request per range')
  t.equal(r.stats.retries, 0)
  t.equal(
    r.stats.bytesReceived,
    ranges.reduce((n, [, l]) => n + l, 0),
  )
})

t.test('a sink that offers little space at a time still gets every byte in order', async (t) => {
  const body = randomBytes(MiB + 333)
  const key = 'ranges/small-spaces.bin'
  const etag = await put(key, body)
  const r = await fetch({ key, etag, size: body.length, ranges: [[7, body.length - 7]], sinkChunk: 1000 })
  clean(t, r)
  t.equal(r.results[0]!.status, 'Ok', r.results[0]!.message)
  t.ok(r.image.subarray(7).equals(body.subarray(7)))
})

t.test('keys with spaces, unicode and the bytes URL encoders disagree on', async (t) => {
  const keys = ['dir/a b+c%d~e ü€ 日本.bin', "x/!'()*=&?#;,:@$.txt", 'deep/a/b/c/./d.bin', 'trailing space ']
  for (const key of keys) {
    const body = randomBytes(70_000)
    const etag = await put(key, body)
    const r = await fetch({ key, etag, size: body.length, ranges: [[0, body.length]] })
    clean(t, r)
    t.equal(r.results[0]!.status, 'Ok', `${key}: ${r.results[0]!.message}`)
    t.ok(r.image.equals(body), `${key}: the same bytes`)
  }
})

t.test('an object replaced after it was pinned: Integrity, not retried, nothing delivered', async (t) => {
  const key = 'replaced.bin'
  const oldEtag = await put(key, randomBytes(200_000))
  await put(key, randomBytes(200_000))
  const r = await fetch({ key, etag: oldEtag, size: 200_000, ranges: [[0, 100_000]], baseDelayMs: 10 })
  clean(t, r)
  t.equal(r.results[0]!.status, 'Integrity', r.results[0]!.message)
  t.equal(r.results[0]!.written, 0)
  t.equal(r.stats.requests, 1, 'final at once')
  t.equal(r.stats.errors, 1)
})

t.test('a missing key is NotFound, a wrong secret is Auth: neither retried', async (t) => {
  const missing = await fetch({ key: 'no/such/key', etag: 'abc', size: 10, ranges: [[0, 10]], baseDelayMs: 10 })
  clean(t, missing)
  t.equal(missing.results[0]!.status, 'NotFound', missing.results[0]!.message)
  t.match(missing.results[0]!.message, /HTTP 404 NoSuchKey/)
  t.equal(missing.stats.requests, 1)

  const etag = await put('auth.bin', randomBytes(1000))
  const denied = await fetch({ key: 'auth.bin', etag, size: 1000, ranges: [[0, 1000]], secretAccessKey: 'wrong', baseDelayMs: 10 })
  clean(t, denied)
  t.equal(denied.results[0]!.status, 'Auth', denied.results[0]!.message)
  t.match(denied.results[0]!.message, /HTTP 403 SignatureDoesNotMatch/)
  t.equal(denied.stats.requests, 1)
  t.notMatch(denied.results[0]!.message, /wrong|testing/, 'no secret in the message')
})

t.test('a refused port is Unreachable after every attempt', async (t) => {
  const port = await freePort()
  const r = await fetch({ endpoint: `http://127.0.0.1:${port}`, key: 'k', etag: 'e', size: 10, ranges: [[0, 10]], baseDelayMs: 10, attempts: 4 })
  clean(t, r)
  t.equal(r.results[0]!.status, 'Unreachable', r.results[0]!.message)
  t.match(r.results[0]!.message, /cannot reach the endpoint.*after 4 attempts/)
  t.equal(r.stats.requests, 4)
  t.equal(r.stats.retries, 3)
})

t.test('connections are kept alive and reused, and warm() opens them ahead', async (t) => {
  const body = randomBytes(64 * 1024)
  const key = 'reuse.bin'
  const etag = await put(key, body)
  const ranges = Array.from({ length: 24 }, (_, i): [number, number] => [i * 1000, 1000])
  const r = await fetch({ key, etag, size: body.length, ranges, sequential: true, maxConnections: 4 })
  clean(t, r)
  t.ok(r.results.every((x) => x.status === 'Ok'))
  t.equal(r.stats.requests, 24)
  t.equal(r.stats.connectionsOpened, 1, 'one after another: one kept-alive connection')

  const warmed = await fetch({ key, etag, size: body.length, ranges: ranges.slice(0, 4), maxConnections: 4, warm: 4 })
  clean(t, warmed)
  t.ok(warmed.results.every((x) => x.status === 'Ok'))
  t.equal(warmed.stats.connectionsBeforeFetches, 4, 'warm(4) opened four connections')
  t.equal(warmed.stats.connectionsOpened, 4, 'the four fetches after it opened none')
  t.ok(
    warmed.results.every((x) => x.timing.connectUs === 0),
    'no fetch waited for a handshake',
  )
})

t.test('at most maxConnections at once; timings and averages are reported', async (t) => {
  const body = randomBytes(4 * MiB)
  const key = 'parallel.bin'
  const etag = await put(key, body)
  const ranges = Array.from({ length: 8 }, (_, i): [number, number] => [i * 512 * 1024, 512 * 1024])
  const r = await fetch({ key, etag, size: body.length, ranges, maxConnections: 2 })
  clean(t, r)
  t.ok(r.image.equals(body))
  t.ok(r.stats.connectionsOpened <= 2, `${r.stats.connectionsOpened} connections for 8 ranges`)
  const firstBytes = Math.min(...r.results.map((x) => x.timing.firstByteUs))
  t.ok(Math.max(...r.results.map((x) => x.timing.queuedUs)) >= firstBytes, 'later ranges waited for a connection to come free')
  t.ok(r.results.every((x) => x.timing.firstByteUs > 0 && x.timing.totalUs >= x.timing.firstByteUs && x.timing.attempts === 1))
  t.ok(r.stats.firstByteUsAverage > 0, 'a latency average')
  t.ok(r.stats.bytesPerSecondPerConnection > 0, 'a per-connection rate from 512 KiB responses')
})

t.test('a range past the pinned size and an empty range are answered without a request', async (t) => {
  const r = await fetch({
    key: 'anything',
    etag: 'e',
    size: 100,
    ranges: [
      [90, 11],
      [50, 0],
    ],
  })
  clean(t, r)
  t.equal(r.results[0]!.status, 'Integrity')
  t.match(r.results[0]!.message, /past the end/)
  t.equal(r.results[1]!.status, 'Ok')
  t.equal(r.stats.requests, 0)
})
