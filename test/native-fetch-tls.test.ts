// The fetch engine (under ASan + UBSan) over HTTPS: stunnel with a private CA in front of the real
// Swift server (test/support/tls-proxy.ts). With the CA as caBundle it reads byte-exact over
// kept-alive TLS connections (the chain checked by the engine's own PeerVerifier, not libcurl's);
// with the system store, another CA, a host name the certificate does not name, or a missing or
// empty CA file it fails at once with a TLS error that names the setting to fix, and is not retried.
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import t, { type Test } from 'tap'
import { buildNativeTools, fetchTool, type FetchToolOptions, type FetchToolResult } from './support/native-tools.js'
import { createBucket, s3Client, useS3Server } from './support/s3-server.js'
import { startTlsProxy } from './support/tls-proxy.js'

const BUCKET = `native-tls-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
await buildNativeTools()
const tlsProxy = await startTlsProxy({ targetPort: Number(new URL(info.endpoint).port) })
t.teardown(() => tlsProxy.close())

const sdk = s3Client(info)
const body = randomBytes(3 * 1024 * 1024 + 5)
const etag = (await sdk.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'tls/object.bin', Body: body }))).ETag!.replaceAll('"', '')
sdk.destroy()

function fetch(o: Partial<FetchToolOptions>): Promise<FetchToolResult> {
  return fetchTool({
    endpoint: tlsProxy.endpoint,
    region: info.region,
    accessKeyId: info.accessKeyId,
    secretAccessKey: info.secretAccessKey,
    bucket: BUCKET,
    key: 'tls/object.bin',
    etag,
    size: body.length,
    ranges: [[0, body.length]],
    baseDelayMs: 10,
    ...o,
  })
}

function clean(t: Test, r: FetchToolResult): void {
  t.equal(r.code, 0, `fetch_tool exited ${r.code}: ${r.stderr}`)
  t.same(r.violations, [])
}

t.test('with the private CA as caBundle: byte-exact, connections kept alive', async (t) => {
  const ranges = Array.from({ length: 12 }, (_, i): [number, number] => [i * 262_144, i === 11 ? body.length - 11 * 262_144 : 262_144])
  const r = await fetch({ caBundle: tlsProxy.caFile, ranges, maxConnections: 2, sequential: true })
  clean(t, r)
  t.ok(
    r.results.every((x) => x.status === 'Ok'),
    r.results.map((x) => x.message).join('; '),
  )
  t.ok(r.image.equals(body), 'byte-exact over TLS')
  t.equal(r.stats.connectionsOpened, 1, 'one TLS connection for twelve ranges in turn')
  t.ok(r.results[0]!.timing.connectUs > 0, 'the first paid for the handshake')
  t.ok(
    r.results.slice(1).every((x) => x.timing.connectUs === 0),
    'the rest did not',
  )
})

for (const [name, caBundle] of [
  ['the system store (no caBundle)', undefined],
  ['an unrelated CA', 'other'],
] as const) {
  t.test(`with ${name}: a TLS error naming the setting, not retried`, async (t) => {
    const r = await fetch({ caBundle: caBundle === 'other' ? tlsProxy.otherCaFile : undefined })
    clean(t, r)
    const res = r.results[0]!
    t.equal(res.status, 'Unreachable', res.message)
    t.match(res.message, /TLS: the server's certificate is not trusted .*--ca-bundle or O3_CA_BUNDLE/)
    t.equal(res.written, 0)
    t.equal(r.stats.requests, 1)
  })
}

t.test('concurrent connections, their TLS sessions resumed, each checked against the private CA', async (t) => {
  const ranges = Array.from({ length: 12 }, (_, i): [number, number] => [i * 262_144, i === 11 ? body.length - 11 * 262_144 : 262_144])
  // One connection's handshake first (a warm-up), so that the others can resume its TLS session.
  const r = await fetch({ caBundle: tlsProxy.caFile, ranges, maxConnections: 4, warm: 1 })
  clean(t, r)
  t.ok(
    r.results.every((x) => x.status === 'Ok'),
    r.results.map((x) => x.message).join('; '),
  )
  t.ok(r.image.equals(body), 'byte-exact over TLS')
  t.ok(r.stats.connectionsOpened > 1, `${r.stats.connectionsOpened} connections`)
})

t.test('the right CA, but a host name the certificate does not name: not trusted, not retried', async (t) => {
  const r = await fetch({ caBundle: tlsProxy.caFile, endpoint: `https://localhost:${tlsProxy.port}` })
  clean(t, r)
  const res = r.results[0]!
  t.equal(res.status, 'Unreachable', res.message)
  t.match(res.message, /TLS: the server's certificate is not trusted .*localhost/)
  t.equal(res.written, 0)
  t.equal(r.stats.requests, 1)
})

for (const [name, file] of [
  ['does not exist', '/nonexistent/ca.pem'],
  ['holds no certificate', 'empty'],
] as const) {
  t.test(`a caBundle file that ${name} fails every fetch at once`, async (t) => {
    const caBundle = file === 'empty' ? join(mkdtempSync(join(tmpdir(), 'ca-')), 'ca.pem') : file
    if (file === 'empty') {
      writeFileSync(caBundle, 'not a certificate\n')
      t.teardown(() => rmSync(dirname(caBundle), { recursive: true, force: true }))
    }
    const r = await fetch({ caBundle })
    clean(t, r)
    t.equal(r.results[0]!.status, 'Unreachable', r.results[0]!.message)
    t.match(r.results[0]!.message, /TLS: cannot load the CA bundle .*check --ca-bundle or O3_CA_BUNDLE/)
    t.equal(r.stats.requests, 1)
  })
}
