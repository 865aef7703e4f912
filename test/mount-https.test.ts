// The mount over HTTPS, as every real O3 user connects: a TLS terminator with a private CA
// (stunnel) in front of the real server, trusted through O3_CA_BUNDLE by both paths, the
// SDK's (listings, HEAD) and the native fetch engine's (the bytes).
import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { mount, statsWhen } from './support/o3mount.js'
import { startTlsProxy } from './support/tls-proxy.js'

const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-https-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())
const tls = await startTlsProxy({ targetPort: Number(new URL(info.endpoint).port) })
t.teardown(() => tls.close())

t.test('listings and bytes over HTTPS with a private CA', async (t) => {
  const body = randomBytes(6 * MiB + 11)
  await client.put('secure/data.bin', body)
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: tls.endpoint, O3_CA_BUNDLE: tls.caFile } })
  t.same(await fs.readdir(path.join(m.mountpoint, 'secure')), ['data.bin'])
  t.equal(sha256(await fs.readFile(path.join(m.mountpoint, 'secure', 'data.bin'))), sha256(body), 'exact bytes through TLS')
  const s = await statsWhen(m, (x) => x.fetch.blocksFetched >= 7)
  t.equal(s.fetch.bytesFetched, body.length, 'every byte came through the native engine')
  t.equal(s.reads.errors, 0)
  await m.stop()
})
