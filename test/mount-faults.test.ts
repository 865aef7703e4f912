// Network faults between the mount and a real server (through the fault proxy): an outage
// during a sequential read is survived with exact bytes; a server that stops answering turns
// into EIO within the operation timeout instead of a hung read.
import t, { type Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { startFaultProxy } from './support/fault-proxy.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { putTree } from './support/manifest.js'
import { freshStats, logWhen, mount, statsWhen } from './support/o3mount.js'
import { until } from './support/until.js'

const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-faults-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

async function viaProxy(t: Test) {
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  return proxy
}

t.test('a 5 s outage during a sequential read is survived with exact bytes', async (t) => {
  const body = randomBytes(48 * MiB)
  await client.put('outage.bin', body)
  const proxy = await viaProxy(t)
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: proxy.endpoint } })
  // Slow enough that the read is still going when the server disappears.
  proxy.setBandwidth(2_000_000)
  const reading = (async () => {
    const fh = await fs.open(path.join(m.mountpoint, 'outage.bin'))
    const hash = createHash('sha256')
    const buf = Buffer.alloc(128 * 1024)
    let pos = 0
    try {
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
        if (bytesRead === 0) break
        hash.update(buf.subarray(0, bytesRead))
        pos += bytesRead
      }
    } finally {
      await fh.close()
    }
    return { digest: hash.digest('hex'), pos }
  })()
  // The read is under way: its first 2 MB went through (48 MiB take 25 s at the cap).
  await until(() => proxy.bytesToClient >= 2_000_000, 'the first 2 MB of the read')
  const t0 = Date.now()
  await proxy.outage(5_000)
  t.ok(Date.now() - t0 >= 4_900, 'the server was unreachable for 5 s')
  proxy.setBandwidth(null)
  const got = await reading
  t.equal(got.pos, body.length, 'read to the end')
  t.equal(got.digest, sha256(body), 'exact bytes')
  const s = await freshStats(m)
  t.equal(s.reads.errors, 0, 'no read failed')
  t.ok(s.o3.retries > 0, `the client retried (${s.o3.retries} retries)`)
})

t.test('a server that stops answering gives EIO within the operation timeout', async (t) => {
  await client.put('stall.bin', randomBytes(4 * MiB))
  const proxy = await viaProxy(t)
  const m = await mount(t, info, BUCKET, { env: { O3_ENDPOINT: proxy.endpoint }, args: ['--op-timeout', '3s'] })
  const file = path.join(m.mountpoint, 'stall.bin')
  await fs.stat(file)
  const fh = await fs.open(file)
  try {
    proxy.stall(30_000)
    const t0 = Date.now()
    await t.rejects(fh.read(Buffer.alloc(4096), 0, 4096, 0), { code: 'EIO' })
    const took = Date.now() - t0
    // Failed by the 3 s timeout, not by the end of the 30 s stall.
    t.ok(took >= 2_500 && took < 30_000, `failed after ${took} ms`)
  } finally {
    proxy.clear()
    await fh.close()
  }
  t.match(await logWhen(m, /no answer within 3000 ms/), /no answer within 3000 ms/)
})

t.test('a manifest that cannot be fetched fails the open with EIO; the mount lives and the next open fetches it', async (t) => {
  const body = randomBytes(2 * MiB)
  await putTree(client, 'manifest-fault/sub', { 'a.bin': body })
  const proxy = await viaProxy(t)
  // Lookups cached for good, so that only the manifest's GET meets the fault: the listing is read
  // first, and no file below it looked up (a lookup starts the manifest's GET).
  // Two attempts per request: the load fails after one backoff rather than the default's 10-20 s.
  const m = await mount(t, info, `${BUCKET}/manifest-fault`, {
    env: { O3_ENDPOINT: proxy.endpoint, O3_MAX_ATTEMPTS: '2' },
    args: ['--metadata-ttl', 'indefinite', '--op-timeout', '60s'],
  })
  const file = path.join(m.mountpoint, 'sub', 'a.bin')
  await fs.readdir(path.join(m.mountpoint, 'sub'))
  // The server gone for longer than the client retries: the manifest's load fails for good.
  const down = proxy.outage(120_000)
  await t.rejects(fs.open(file), { code: 'EIO' }, 'the open fails with EIO')
  proxy.clear()
  await down
  await t.resolves(fs.readdir(path.join(m.mountpoint, 'sub')), `the mount lives: ${m.log().slice(-3000)}`)
  const again = await fs.readFile(file).catch((err: Error) => err)
  t.ok(Buffer.isBuffer(again) && again.equals(body), `the next open tries again and reads: ${(again as Error).message}`)
  const s = await statsWhen(m, (x) => x.verify.blocksVerified >= 2)
  t.ok(s.verify.blocksVerified >= 2, `with the manifest loaded this time: ${s.verify.blocksVerified} blocks verified`)
})

t.test('a manifest fetch that outlasts the operation timeout fails the open with EIO; the mount lives', async (t) => {
  await putTree(client, 'manifest-stall/sub', { 'b.bin': randomBytes(MiB) })
  const proxy = await viaProxy(t)
  const m = await mount(t, info, `${BUCKET}/manifest-stall`, {
    env: { O3_ENDPOINT: proxy.endpoint },
    args: ['--metadata-ttl', 'indefinite', '--op-timeout', '3s'],
  })
  const file = path.join(m.mountpoint, 'sub', 'b.bin')
  await fs.readdir(path.join(m.mountpoint, 'sub'))
  proxy.stall(30_000)
  await t.rejects(fs.open(file), { code: 'EIO' })
  proxy.clear()
  await t.resolves(fs.readdir(path.join(m.mountpoint, 'sub')), `the mount lives: ${m.log().slice(-3000)}`)
  t.match(await logWhen(m, /manifest of \/sub\/b\.bin: no answer/), /manifest of \/sub\/b\.bin: no answer within 3000 ms/)
  const fh = await fs.open(file)
  await fh.close()
})
