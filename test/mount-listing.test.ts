// A directory of 10,000 objects: listed completely (ten pages of ListObjectsV2), and stat of
// every entry answered from that listing, with no request per file; lookups without a listing
// read one page each, never the whole directory. And a listing on its way while an object changes.
import t from 'tap'
import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { mapLimit } from '../scripts/bench/util.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { freshStats, mount } from './support/o3mount.js'
import { MetadataCache } from '../fs-driver/metadata-cache.js'
import { MountCounters } from '../fs-driver/stats.js'
import { silentLogger } from '../lib/log.js'
import { normalizeEtag } from '../lib/o3/etag.js'
import { startLyingS3 } from './support/lying-s3.js'
import { until } from './support/until.js'

const N = 10_000
const BUCKET = `mount-listing-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET, { maxSockets: 16 })
t.teardown(() => client.close())

const name = (i: number) => `obj-${String(i).padStart(5, '0')}.txt`
await mapLimit(
  Array.from({ length: N }, (_, i) => i),
  16,
  (i) => client.put(`flat/${name(i)}`, `${i}\n`),
)

t.test('10,000 objects in one directory', async (t) => {
  const m = await mount(t, info, BUCKET)
  const dir = path.join(m.mountpoint, 'flat')
  const names = await fs.readdir(dir)
  t.equal(names.length, N)
  t.same(
    names.sort(),
    Array.from({ length: N }, (_, i) => name(i)),
  )
  const ls = await new Promise<string>((resolve, reject) =>
    execFile('ls', ['-lR', m.mountpoint], { maxBuffer: 1 << 26 }, (err, out) => (err ? reject(err) : resolve(out))),
  )
  const files = ls.split('\n').filter((l) => l.startsWith('-r--r--r--'))
  t.equal(files.length, N, 'ls -lR shows every object')
  t.ok(
    files.every((l) => / [0-9]+ [A-Z][a-z]{2} /.test(l)),
    'with sizes and dates',
  )
  t.equal(await fs.readFile(path.join(dir, name(9_999)), 'utf8'), '9999\n')
  const s = await freshStats(m)
  t.ok(s.metadata.listRequests <= 13, `listed with ${s.metadata.listRequests} pages (ten for flat/)`)
  // Only the lookup of `flat` itself, before the root was listed, needs a HEAD.
  t.ok(s.metadata.headRequests <= 2, `no HEAD per file (${s.metadata.headRequests})`)
  t.ok(s.o3.requests < 30, `${s.o3.requests} requests in all`)
})

t.test('lookups in a large directory never list it whole', async (t) => {
  const m = await mount(t, info, BUCKET)
  const dir = path.join(m.mountpoint, 'flat')
  const spread = [100, 3_000, 5_000, 7_000, 9_500]
  for (const i of spread) t.equal((await fs.stat(path.join(dir, name(i)))).size, `${i}\n`.length, name(i))
  await t.rejects(fs.stat(path.join(dir, 'obj-99999.txt')), { code: 'ENOENT' })
  await t.rejects(fs.stat(path.join(dir, 'obj-05000.txt', 'x')), { code: 'ENOTDIR' })
  const scattered = (await freshStats(m)).metadata
  // One page for `flat` in the root, one per lookup: the whole of flat/ would be ten.
  t.ok(scattered.listRequests <= 1 + spread.length + 1, `${scattered.listRequests} pages for ${spread.length + 1} lookups`)
  t.equal(scattered.headRequests, 0, 'each page settled its name: no HEAD')
  // A loader opening files in order: one page per thousand names.
  for (let i = 0; i < 2_000; i++) await fs.stat(path.join(dir, name(i)))
  const inOrder = (await freshStats(m)).metadata
  t.ok(inOrder.listRequests - scattered.listRequests <= 4, `${inOrder.listRequests - scattered.listRequests} pages for 2,000 lookups in order`)
  t.equal(inOrder.headRequests, 0, 'still no HEAD')
})

t.test('a listing for a hint stops once the directory proves larger than it may follow', async (t) => {
  const counters = new MountCounters()
  const meta = new MetadataCache(client, 60_000, counters, silentLogger)
  t.equal(await meta.readdirUpTo('/flat', 1_500), undefined, 'more than 1,500 entries: none')
  t.equal(counters.listRequests, 2, 'after two pages of 1,000, not all ten')
  const all = await meta.readdirUpTo('/flat', N)
  t.equal(all?.size, N, 'up to its size: the whole listing')
  t.equal(counters.listRequests, 12)
  t.equal((await meta.readdir('/flat')).size, N, 'kept for readdir')
  t.equal(counters.listRequests, 12, 'which lists nothing again')
})

t.test('a listing on its way when an object changes is not kept: the next lookup sees the change', async (t) => {
  await client.put('changing/x.bin', 'first version')
  const lying = await startLyingS3({ target: info.endpoint, objectBytes: () => undefined })
  t.teardown(() => lying.close())
  const viaLying = serverClient(info, BUCKET, { endpoint: lying.endpoint })
  t.teardown(() => viaLying.close())
  const meta = new MetadataCache(viaLying, 60_000, new MountCounters(), silentLogger)
  // The listing's answer (the first version) is read from the server, then kept back...
  lying.hold(/list-type=2.*prefix=changing%2F/)
  const listing = meta.readdir('/changing')
  await until(() => lying.held === 1, 'the listing answered and held')
  // ...while the object is replaced and the mount learns of it (as when a read meets the new ETag).
  const second = await client.put('changing/x.bin', 'second version, longer')
  meta.invalidate('/changing/x.bin')
  lying.release()
  const before = (await listing).get('x.bin')
  t.equal(before?.kind === 'file' && before.size, 'first version'.length, 'the caller that asked before the change gets the answer it asked for')
  // Kept, that answer made the next open fail again on the old ETag until the TTL passed.
  const after = await meta.lookup('/changing/x.bin')
  t.equal(after?.kind === 'file' && after.etag, normalizeEtag(second.etag), 'the next lookup asks again: the new version')
  t.equal(after?.kind === 'file' && after.size, 'second version, longer'.length)
})
