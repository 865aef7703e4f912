// The fetch engine (under ASan + UBSan) through the fault proxy in front of the real Swift server:
// a body cut midway resumes byte-exact from the first byte not yet written; a 5 s outage under
// the default retry policy fails nothing; a stalled connection times out and the retry succeeds;
// a body that keeps breaking stops after four retry budgets, one that trickles fails its attempts;
// close() cancels what is in flight.
// Faults start on observed progress (bytes through the proxy), never on a guessed delay.
import { createHash, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import t from 'tap'
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js'
import { buildNativeTools, fetchTool, type FetchToolOptions, type FetchToolResult } from './support/native-tools.js'
import { createBucket, s3Client, useS3Server } from './support/s3-server.js'

const MiB = 1 << 20
const BUCKET = `native-faults-${process.pid}`

const info = await useS3Server(t)
await createBucket(info, BUCKET)
await buildNativeTools()
const sdk = s3Client(info)
t.teardown(() => sdk.destroy())

const body = randomBytes(8 * MiB + 11)
const KEY = 'faults/object.bin'
const etag = (await sdk.send(new PutObjectCommand({ Bucket: BUCKET, Key: KEY, Body: body }))).ETag!.replaceAll('"', '')
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

async function proxy(t: Tap): Promise<FaultProxy> {
  const p = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => p.close())
  return p
}
type Tap = { teardown(fn: () => unknown): void }

function fetch(p: FaultProxy, o: Partial<FetchToolOptions> = {}): Promise<FetchToolResult> {
  return fetchTool({
    endpoint: p.endpoint,
    region: info.region,
    accessKeyId: info.accessKeyId,
    secretAccessKey: info.secretAccessKey,
    bucket: BUCKET,
    key: KEY,
    etag,
    size: body.length,
    ranges: [[0, body.length]],
    ...o,
  })
}

/** Resolves once `cond` holds, checked every 5 ms. */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(5)
}

t.test('a body cut midway resumes from the first byte not yet written, byte-exact', async (t) => {
  const p = await proxy(t)
  p.resetAfterBytes(3 * MiB + 1234)
  p.resetAfterBytes(2 * MiB + 17)
  const r = await fetch(p, { ranges: [[100, body.length - 100]], baseDelayMs: 20 })
  t.equal(r.code, 0, r.stderr)
  t.same(r.violations, [])
  const res = r.results[0]!
  t.equal(res.status, 'Ok', res.message)
  t.ok(r.image.subarray(100).equals(body.subarray(100)), 'byte-exact after two cuts')
  t.equal(p.resets, 2, 'both cuts happened')
  t.equal(res.timing.attempts, 3)
  t.equal(r.stats.retries, 2)
  t.equal(r.stats.bytesReceived, body.length - 100, 'no byte fetched twice')
})

t.test('a 5 s outage mid-transfer fails nothing under the default retry policy', async (t) => {
  const p = await proxy(t)
  // Slow enough that the transfer is still running when the outage starts.
  p.setBandwidth(2 * MiB)
  let outage: Promise<void> | undefined
  let outageStart = 0
  const watcher = until(() => p.bytesToClient > 256 * 1024).then(() => {
    outageStart = Date.now()
    p.setBandwidth(null)
    outage = p.outage(5000)
  })
  const r = await fetch(p)
  await watcher
  await outage
  t.equal(r.code, 0, r.stderr)
  t.same(r.violations, [])
  const res = r.results[0]!
  t.equal(res.status, 'Ok', res.message)
  t.equal(sha(r.image), sha(body), 'byte-exact across the outage')
  t.ok(r.stats.retries >= 1, `${r.stats.retries} retries`)
  t.ok(Date.now() - outageStart >= 5000, 'it finished after the outage, not before')
})

t.test('a stalled connection times out and the retry finishes the range', async (t) => {
  const p = await proxy(t)
  p.setBandwidth(2 * MiB)
  const watcher = until(() => p.bytesToClient > 256 * 1024).then(() => {
    p.setBandwidth(null)
    p.stall(2500)
  })
  const started = Date.now()
  const r = await fetch(p, { requestTimeoutMs: 1000, baseDelayMs: 100 })
  await watcher
  t.equal(r.code, 0, r.stderr)
  const res = r.results[0]!
  t.equal(res.status, 'Ok', res.message)
  t.equal(sha(r.image), sha(body))
  t.ok(r.stats.retries >= 1, `the stalled attempt timed out (${r.stats.retries} retries)`)
  t.ok(Date.now() - started < 60_000)
})

t.test('a stall longer than every attempt fails with a timeout, after the attempts', async (t) => {
  const p = await proxy(t)
  p.stall(60_000)
  const r = await fetch(p, { ranges: [[0, 1000]], requestTimeoutMs: 1000, baseDelayMs: 10, attempts: 2 })
  p.clear()
  t.equal(r.code, 0, r.stderr)
  const res = r.results[0]!
  t.equal(res.status, 'Stream')
  t.match(res.message, /timed out: no data for 1000 ms.*after 2 attempts/)
  t.equal(r.stats.requests, 2)
  t.equal(res.written, 0)
})

t.test('a body that breaks after every few KiB resumes, but fails after four retry budgets of attempts in all', async (t) => {
  const p = await proxy(t)
  // Every connection is cut after 64 KiB: each attempt moves the range forward a little.
  p.resetAfterBytes(64 * 1024, { count: 1000 })
  const r = await fetch(p, { baseDelayMs: 1, attempts: 3 })
  p.clear()
  t.equal(r.code, 0, r.stderr)
  t.same(r.violations, [])
  const res = r.results[0]!
  t.equal(res.status, 'Stream', res.message)
  t.match(res.message, /after 12 attempts/)
  t.equal(res.timing.attempts, 12, '4 x 3 attempts, not one per 64 KiB of the 8 MiB')
  t.ok(res.written > 0 && res.written < body.length, `some bytes arrived (${res.written})`)
  t.ok(r.image.subarray(0, res.written).equals(body.subarray(0, res.written)), 'and they are the right ones')
})

t.test('a body that trickles too slowly to finish fails its attempts, and the fetch ends', async (t) => {
  const p = await proxy(t)
  // 300 B/s in slices every 50 ms: never silent for the 1 s request timeout, never done either.
  p.setBandwidth(300)
  const started = Date.now()
  const r = await fetch(p, { ranges: [[0, 64 * 1024]], requestTimeoutMs: 1000, baseDelayMs: 10, attempts: 2 })
  p.clear()
  t.equal(r.code, 0, r.stderr)
  t.same(r.violations, [])
  const res = r.results[0]!
  t.equal(res.status, 'Stream', res.message)
  t.match(res.message, /too slow.*after 8 attempts/i)
  t.ok(res.written < 64 * 1024, `not finished (${res.written} bytes)`)
  t.ok(Date.now() - started < 60_000, 'within a minute, where the whole range would take 218 s')
})

t.test('close() fails what is in flight and queued with Cancelled, at once', async (t) => {
  const p = await proxy(t)
  p.stall(60_000)
  const ranges = Array.from({ length: 6 }, (_, i): [number, number] => [i * MiB, MiB])
  const started = Date.now()
  const r = await fetch(p, { ranges, maxConnections: 2, closeAfterMs: 300 })
  p.clear()
  t.equal(r.code, 0, r.stderr)
  t.same(r.violations, [])
  t.same(
    r.results.map((x) => x.status),
    ranges.map(() => 'Cancelled'),
  )
  t.ok(Date.now() - started < 30_000, 'without waiting for the stall')
})
