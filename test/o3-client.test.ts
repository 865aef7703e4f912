import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import {
  O3Client,
  resolveConfig,
  O3AuthError,
  O3IntegrityError,
  O3NotFoundError,
  O3UnreachableError,
  O3UsageError,
  MultipartSink,
  type O3ClientOptions,
} from '../lib/o3/index.js'
import { createBucket, createVersionedBucket, serverClient, serverEnv, useS3Server, type S3ServerInfo } from './support/s3-server.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { until } from './support/until.js'

const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

function open(info: S3ServerInfo, location: string, extra: O3ClientOptions = {}, endpoint = info.endpoint, secret = info.secretAccessKey): O3Client {
  const client = serverClient({ ...info, secretAccessKey: secret }, location, { ...extra, endpoint })
  t.teardown(() => client.close())
  return client
}

async function readAll(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of stream) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

const info = await useS3Server(t)
const BUCKET = `client-test-${process.pid}`
await createBucket(info, BUCKET)

t.test('put, head, get, delete', async (t) => {
  const c = open(info, BUCKET)
  const body = randomBytes(100_000)
  const { etag } = await c.put('obj/a.bin', body, { contentType: 'application/x-test', metadata: { step: '7' } })
  const h = await c.head('obj/a.bin')
  t.equal(h.size, body.length)
  t.equal(h.etag, etag)
  t.equal(h.contentType, 'application/x-test')
  t.same(h.metadata, { step: '7' })
  t.ok(h.lastModified instanceof Date && h.lastModified.getTime() > Date.now() - 600_000)
  t.equal(sha256(await readAll(c.getRange('obj/a.bin'))), sha256(body))
  await c.delete('obj/a.bin')
  await t.rejects(c.head('obj/a.bin'), O3NotFoundError)
  await t.rejects(readAll(c.getRange('obj/a.bin')), O3NotFoundError)
})

t.test('ranges: first byte, last byte, a middle span, past the end', async (t) => {
  const c = open(info, BUCKET)
  const body = randomBytes(3 * MiB + 17)
  await c.put('ranges.bin', body)
  t.same(await c.getBytes('ranges.bin', 0, 0), body.subarray(0, 1), 'bytes=0-0')
  t.same(await c.getBytes('ranges.bin', body.length - 1, body.length - 1), body.subarray(-1), 'the last byte')
  t.same(await c.getBytes('ranges.bin', MiB - 3, 2 * MiB + 5), body.subarray(MiB - 3, 2 * MiB + 6), 'across a MiB boundary')
  t.same(await c.getBytes('ranges.bin', body.length - 10, body.length + 1000), body.subarray(-10), 'an end past EOF is cut at EOF')
  t.same(await readAll(c.getRange('ranges.bin', { start: 5 })), body.subarray(5), 'open-ended')
  await t.rejects(c.getBytes('ranges.bin', body.length, body.length + 5), O3UsageError, 'a start past EOF')
  t.throws(() => c.getRange('ranges.bin', { start: 10, end: 2 }), O3UsageError)
})

t.test('list: past 1,000 keys, nested prefixes with a delimiter', async (t) => {
  const c = open(info, `${BUCKET}/many`)
  const keys = Array.from({ length: 1105 }, (_, i) => `k${String(i).padStart(5, '0')}`)
  for (let i = 0; i < keys.length; i += 32) await Promise.all(keys.slice(i, i + 32).map((k) => c.put(k, k)))
  await Promise.all(['d1/x', 'd1/y', 'd1/sub/z', 'd2/w', 'top'].map((k) => c.put(`tree/${k}`, k)))
  const all = await collect(c.list('', {}))
  t.equal(all.filter((e) => e.type === 'object' && e.key.startsWith('k')).length, 1105, 'every key across pages')
  const top = await collect(c.list('tree/', { delimiter: '/' }))
  t.same(
    top
      .filter((e) => e.type === 'prefix')
      .map((e) => e.type === 'prefix' && e.prefix)
      .sort(),
    ['tree/d1/', 'tree/d2/'],
  )
  t.same(
    top.filter((e) => e.type === 'object').map((e) => e.type === 'object' && e.key),
    ['tree/top'],
  )
  const d1 = await collect(c.list('tree/d1/', { delimiter: '/' }))
  t.same(d1.map((e) => (e.type === 'object' ? e.key : e.prefix)).sort(), ['tree/d1/sub/', 'tree/d1/x', 'tree/d1/y'])
})

// Keys any S3 tool may write that XML 1.0 cannot carry as they are (U+0001) or carries altered
// (CR), beside characters URL encoding must round-trip (space, +, %): listed raw, Swift answered
// 500 for the whole directory.
const ODD_KEYS = ['ctl\u0001.txt', 'cr\rlf.txt', 'sp ace+plus%41.txt', 'caf\u00e9.txt', 'cafe\u0301.txt', 'dir \u0001+%/inner.txt']

t.test('listings carry any key: control characters, space, plus, percent, unicode', async (t) => {
  const c = open(info, `${BUCKET}/odd`)
  for (const k of ODD_KEYS) await c.put(k, k)
  const all = await collect(c.list(''))
  t.same(all.map((e) => e.type === 'object' && e.key).sort(), [...ODD_KEYS].sort(), 'every key, exactly')
  const top = await collect(c.list('', { delimiter: '/' }))
  t.same(
    top.filter((e) => e.type === 'prefix').map((e) => e.type === 'prefix' && e.prefix),
    ['dir \u0001+%/'],
    'a prefix holding them',
  )
  t.same(
    (await collect(c.list('dir \u0001+%/', { delimiter: '/' }))).map((e) => e.type === 'object' && e.key),
    ['dir \u0001+%/inner.txt'],
  )
  for (const k of ODD_KEYS) t.equal((await c.getBytes(k, 0, Buffer.byteLength(k) - 1)).toString(), k, `${JSON.stringify(k)} reads back`)
  // (Swift cannot start an upload of a key with U+0001: its answer to the start carries the key.)
  const id = await c.createMultipartUpload('sp ace+%41.bin')
  t.same(
    (await collect(c.listMultipartUploads(''))).map((u) => u.key),
    ['sp ace+%41.bin'],
    'an upload in progress',
  )
  await c.abortMultipartUpload('sp ace+%41.bin', id)

  // Listed by version in pages of one, every page goes on from a key with `+`, space or `%`, which
  // Swift's answer names unencoded as it says it encodes. (It cannot send U+0001 in that marker.)
  const versioned = `client-odd-${process.pid}`
  await createVersionedBucket(info, versioned)
  const v = open(info, versioned)
  const keys = ODD_KEYS.filter((k) => !k.includes('\u0001'))
  for (const k of keys) {
    await v.put(k, 'one')
    await v.put(k, 'two')
  }
  const expected = keys.flatMap((k) => [k, k]).sort()
  t.same((await collect(v.listVersions(''))).map((x) => x.key).sort(), expected, 'every version of every key')
  t.same((await collect(v.listVersions('', { maxKeys: 1 }))).map((x) => x.key).sort(), expected, 'the same in pages of one')
})

t.test('multipart: round trip, and abort leaves no upload', async (t) => {
  const c = open(info, `${BUCKET}/mp`)
  const parts = [randomBytes(5 * MiB), randomBytes(5 * MiB), randomBytes(1234)]
  const id = await c.createMultipartUpload('big.bin')
  t.same(
    (await collect(c.listMultipartUploads(''))).map((u) => u.uploadId),
    [id],
    'listed while in progress',
  )
  const done = await Promise.all(parts.map((p, i) => c.uploadPart('big.bin', id, i + 1, p)))
  await c.completeMultipartUpload('big.bin', id, done.reverse())
  const all = Buffer.concat(parts)
  t.equal(sha256(await readAll(c.getRange('big.bin'))), sha256(all))
  t.equal((await c.head('big.bin')).size, all.length)

  const id2 = await c.createMultipartUpload('aborted.bin')
  await c.uploadPart('aborted.bin', id2, 1, randomBytes(5 * MiB))
  await c.abortMultipartUpload('aborted.bin', id2)
  t.same(await collect(c.listMultipartUploads('')), [], 'no upload left')
  await t.rejects(c.uploadPart('aborted.bin', id2, 2, randomBytes(10)), O3NotFoundError, 'its parts are gone')
  await t.rejects(c.head('aborted.bin'), O3NotFoundError, 'no object')
})

t.test('versioned bucket: version ids from put and multipart, pinned reads of an older version, listing and deleting versions', async (t) => {
  const bucket = `client-ver-${process.pid}`
  await createVersionedBucket(info, bucket)
  const c = open(info, `${bucket}/run`)
  t.equal(await c.bucketVersioning(), 'enabled')
  t.equal(await open(info, BUCKET).bucketVersioning(), 'unversioned')

  const one = randomBytes(2000)
  const two = randomBytes(3000)
  const v1 = await c.put('a', one)
  const v2 = await c.put('a', two)
  t.ok(v1.versionId && v2.versionId && v1.versionId !== v2.versionId, 'each put names its version')
  const sink = await MultipartSink.open(c, 'big', { partSize: 5 * MiB, parallel: 2 })
  await sink.write(randomBytes(11 * MiB))
  const big = await sink.finish()
  t.ok(big.versionId, `a multipart upload names its version (${big.versionId})`)
  t.equal((await c.head('big')).versionId, big.versionId)

  const h1 = await c.head('a', undefined, v1.versionId)
  t.same([h1.size, h1.etag, h1.versionId], [one.length, v1.etag, v1.versionId], 'HEAD of an older version')
  t.same(await c.getBytes('a', 0, one.length - 1, { pin: { etag: v1.etag, versionId: v1.versionId } }), one, 'a read pinned to the older version gets it')
  await t.rejects(
    c.getBytes('a', 0, 9, { pin: { etag: v2.etag, versionId: v1.versionId } }),
    O3IntegrityError,
    'a version whose ETag is not the pinned one is refused',
  )

  // Seven versions of one key and a delete marker, between two other keys: read in pages of 2 and
  // 3 they must come out as in one page, each once (Swift names a wrong marker mid-key).
  for (let i = 0; i < 5; i++) await c.put('a', `v${i}`)
  await c.delete('a')
  await c.put('b', 'b')
  await c.put('0', '0')
  const whole = await collect(c.listVersions(''))
  t.same(
    whole.map((v) => [v.key, v.deleteMarker]),
    [['0', false], ...Array.from({ length: 7 }, () => ['a', false]), ['a', true], ['b', false], ['big', false]],
    'every version and the delete marker, by key',
  )
  t.same(
    whole
      .filter((v) => v.key === 'a' && !v.deleteMarker)
      .slice(-2)
      .map((v) => v.versionId),
    [v2.versionId, v1.versionId],
  )
  t.same(
    whole.find((v) => v.key === 'big'),
    {
      key: 'big',
      versionId: big.versionId,
      isLatest: true,
      deleteMarker: false,
      size: 11 * MiB,
      etag: big.etag,
      lastModified: whole.find((v) => v.key === 'big')!.lastModified,
    },
  )
  const ids = (vs: { key: string; versionId: string }[]) => vs.map((v) => `${v.key} ${v.versionId}`).sort()
  for (const maxKeys of [1, 2, 3]) t.same(ids(await collect(c.listVersions('', { maxKeys }))), ids(whole), `the same, each once, in pages of ${maxKeys}`)
  t.same((await collect(c.listVersions('a'))).length, 8, 'a prefix')

  for (const v of whole.filter((v) => v.key === 'a')) await c.deleteVersion(v.key, v.versionId)
  await c.deleteVersion('a', v1.versionId!)
  t.pass('deleting a version already gone is no error')
  t.same(
    (await collect(c.listVersions(''))).map((v) => v.key),
    ['0', 'b', 'big'],
    'no version of a is left',
  )
})

t.test('unversioned bucket: no version ids, deleteVersion of the null version removes the object', async (t) => {
  const c = open(info, `${BUCKET}/unver`)
  const put = await c.put('x', 'x')
  t.equal(put.versionId, undefined)
  const sink = await MultipartSink.open(c, 'y', { partSize: 5 * MiB, parallel: 1 })
  await sink.write(randomBytes(6 * MiB))
  t.equal((await sink.finish()).versionId, undefined)
  const listed = await collect(c.listVersions(''))
  t.same(
    listed.map((v) => [v.key, v.versionId]),
    [
      ['x', 'null'],
      ['y', 'null'],
    ],
    'each object is its null version',
  )
  await c.deleteVersion('x', 'null')
  await t.rejects(c.head('x'), O3NotFoundError)
})

t.test('a 5 s outage in the middle of a read is survived with the right bytes', async (t) => {
  const body = randomBytes(24 * MiB)
  await open(info, BUCKET).put('outage.bin', body)
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const c = open(info, BUCKET, {}, proxy.endpoint)
  proxy.setBandwidth(8 * MiB)
  const reading = readAll(c.getRange('outage.bin'))
  // In the middle of the read: its first MiB has gone through (24 MiB take 3 s at the cap).
  await until(() => proxy.bytesToClient >= MiB, 'the first MiB of the read')
  const started = Date.now()
  await proxy.outage(5000)
  proxy.setBandwidth(null)
  t.equal(sha256(await reading), sha256(body))
  t.ok(Date.now() - started >= 4900)
  t.ok(c.stats.retries >= 1, `retried (${c.stats.retries})`)
  // The request starts during a second outage: it must fail, retry, and succeed once the server is back.
  const retriesBefore = c.stats.retries
  const outage = proxy.outage(5000)
  let answered = false
  const head = c.head('outage.bin').finally(() => (answered = true))
  await outage
  t.notOk(answered, 'it was not answered while the server was gone')
  t.equal((await head).size, body.length, 'a request made while the server is gone')
  t.ok(c.stats.retries > retriesBefore, `it was retried (${c.stats.retries - retriesBefore} times)`)
})

t.test('a body reset midway resumes from the last byte received', async (t) => {
  const body = randomBytes(16 * MiB)
  await open(info, BUCKET).put('reset.bin', body)
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const c = open(info, BUCKET, {}, proxy.endpoint)
  proxy.resetAfterBytes(5 * MiB, { count: 2 })
  const got = await readAll(c.getRange('reset.bin'))
  t.equal(sha256(got), sha256(body))
  t.equal(proxy.resets, 2, 'two connections were cut')
  t.ok(c.stats.bytesReceived < body.length * 1.5, `resumed rather than restarted (${c.stats.bytesReceived} bytes received)`)
})

t.test('bad credentials: O3AuthError at once, never retried', async (t) => {
  const c = open(info, BUCKET, {}, info.endpoint, 'not-the-secret')
  await t.rejects(c.head('x'), O3AuthError)
  await t.rejects(c.checkBucket(), O3AuthError)
  // A retry would first wait its backoff; none means an answer at once.
  t.equal(c.stats.retries, 0)
})

/** A loopback endpoint where nothing listens: a port the system just handed out and took back. */
async function deadEndpoint(): Promise<string> {
  const proxy = await startFaultProxy({ targetPort: 9 })
  await proxy.close()
  return `http://127.0.0.1:${proxy.port}`
}

t.test('unreachable endpoint: a clear error naming the endpoint', async (t) => {
  const endpoint = await deadEndpoint()
  const c = open(info, BUCKET, { retry: { maxAttempts: 3, baseDelayMs: 50 } }, endpoint)
  const err = await c.head('x').then(
    () => undefined,
    (e: Error) => e,
  )
  t.type(err, O3UnreachableError)
  t.match(err?.message, endpoint.slice('http://'.length))
  t.match(err?.message, /O3_ENDPOINT/)
  t.equal(c.stats.retries, 2, 'retried as a transient failure first')
})

t.test('O3_MAX_ATTEMPTS bounds the attempts of every request', async (t) => {
  // Every attempt fails as unreachable, and the setting bounds them.
  const endpoint = await deadEndpoint()
  const c = O3Client.open(BUCKET, {
    config: resolveConfig({ endpoint, region: info.region }, { ...serverEnv(info), O3_MAX_ATTEMPTS: '4' }),
    retry: { baseDelayMs: 10 },
  })
  t.teardown(() => c.close())
  await t.rejects(c.head('x'), O3UnreachableError)
  t.equal(c.stats.retries, 3, 'four attempts')
})

t.test('a client on bucket/prefix cannot address keys outside it', async (t) => {
  const outside = open(info, BUCKET)
  await outside.put('secret.txt', 'outside')
  await outside.put('data2/x', 'sibling prefix')
  const c = open(info, `${BUCKET}/data`)
  await c.put('inside.txt', 'inside')
  for (const bad of ['../secret.txt', '/secret.txt', 'a/../../secret.txt', '..', './x', 'a//b', '%2e%2e%2Fsecret.txt', 'a%2fb', 'a\\..\\b']) {
    await t.rejects(c.head(bad), O3UsageError, `head ${bad}`)
    t.throws(() => c.getRange(bad), O3UsageError, `get ${bad}`)
    await t.rejects(c.put(bad, 'x'), O3UsageError, `put ${bad}`)
  }
  t.throws(() => O3Client.open('client-test/../x'), O3UsageError)
  t.throws(() => O3Client.open('Bad_Bucket'), O3UsageError)
  const listed = await collect(c.list(''))
  t.same(
    listed.map((e) => e.type === 'object' && e.key),
    ['inside.txt'],
    'the sibling prefix data2/ is not listed',
  )
  t.equal((await outside.head('data/inside.txt')).size, 6, 'keys are stored under the prefix')
})

t.test('the connection pool is bounded and closed on teardown', async (t) => {
  await open(info, BUCKET).put('pool.txt', 'x')
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const c = open(info, BUCKET, { maxSockets: 3 }, proxy.endpoint)
  await Promise.all(Array.from({ length: 40 }, () => c.head('pool.txt')))
  t.ok(proxy.connections <= 3, `${proxy.connections} connections for 40 requests`)
  c.close()
  await until(() => proxy.active === 0, 'the sockets to close')
  t.equal(proxy.active, 0, 'sockets closed')
})

t.test('no secret appears in any log line or error message', async (t) => {
  const lines: string[] = []
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk))
      cb()
    },
  })
  const logger = pino({ level: 'trace' }, sink)
  const privateKey = 'ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80'
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const messages: string[] = []
  const capture = (e: unknown) => {
    messages.push(String((e as Error).message), JSON.stringify(e), String((e as Error).stack))
  }
  const good = open(info, BUCKET, { logger }, proxy.endpoint)
  await good.put('log.txt', 'x')
  proxy.resetAfterBytes(0, { count: 2 })
  await good.head('log.txt')
  const bad = open(info, BUCKET, { logger }, info.endpoint, 'wrong-secret-value')
  await bad.head('log.txt').catch(capture)
  await open(info, BUCKET, { logger, retry: { maxAttempts: 2, baseDelayMs: 10 } }, 'http://127.0.0.1:1')
    .head('x')
    .catch(capture)
  const { signerFromHex } = await import('../lib/content/signer.js')
  try {
    signerFromHex(privateKey.slice(0, 60), 'AKAVE_PRIVATE_KEY')
  } catch (e) {
    capture(e)
  }
  t.ok(
    lines.some((l) => l.includes('retrying')),
    'the retries were logged',
  )
  const everything = [...lines, ...messages].join('\n')
  for (const secret of [info.secretAccessKey, 'wrong-secret-value', info.accessKeyId, privateKey, privateKey.slice(0, 60)]) {
    t.notOk(everything.includes(secret), `${secret.length}-char secret absent`)
  }
})

t.test('a 4xx whose message mentions "aborted" is final, not retried', async (t) => {
  const c = open(info, BUCKET)
  const id = await c.createMultipartUpload('gone.bin')
  await c.abortMultipartUpload('gone.bin', id)
  await t.rejects(c.uploadPart('gone.bin', id, 1, Buffer.from('x')), O3NotFoundError)
  t.equal(c.stats.retries, 0)
})

t.test('no credentials anywhere: O3AuthError that says where to set them', async (t) => {
  const config = resolveConfig({ endpoint: info.endpoint, region: info.region }, {})
  const saved = { ...process.env }
  t.teardown(() => {
    process.env = saved
  })
  for (const k of Object.keys(process.env)) if (/^(AWS_|O3_)/.test(k)) delete process.env[k]
  process.env.AWS_SHARED_CREDENTIALS_FILE = '/nonexistent'
  process.env.AWS_CONFIG_FILE = '/nonexistent'
  process.env.AWS_EC2_METADATA_DISABLED = 'true'
  const c = O3Client.open('client-test', { config })
  t.teardown(() => c.close())
  const err = await c.head('x').then(
    () => undefined,
    (e: Error) => e,
  )
  t.type(err, O3AuthError)
  t.match(err?.message, /no credentials found; set O3_ACCESS_KEY_ID and O3_SECRET_ACCESS_KEY/)
})
