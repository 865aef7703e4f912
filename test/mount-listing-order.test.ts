// Listing order (issue 21): files opened in their directory's listing order, by several readers at
// once, are fetched whole before they are opened; opens that do not follow the listing queue
// nothing, and queueing stops when the opens stop following it. Observed through the stats file
// and the bytes read, never through timing.
import t, { type Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { mapLimit } from '../scripts/bench/util.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { mount, statsWhen } from './support/o3mount.js'

const KiB = 1024
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-listing-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

// 400 small files (one block each) in one directory; names sort as they are numbered.
const N = 400
const names = Array.from({ length: N }, (_, i) => `${String(i).padStart(4, '0')}.bin`)
const bodies = new Map(names.map((n, i) => [n, randomBytes(16 * KiB + i)]))
await mapLimit(names, 8, (n) => client.put(`dir/${n}`, bodies.get(n)!))

/** Reads `order` with `readers` readers taking the next name as each finishes; checks every byte. */
async function readAll(t: Test, root: string, order: string[], readers: number): Promise<void> {
  let wrong = 0
  await mapLimit(order, readers, async (n) => {
    if (sha256(await fs.readFile(path.join(root, n))) !== sha256(bodies.get(n)!)) wrong++
  })
  t.equal(wrong, 0, `${order.length} files read byte-exact`)
}

t.test('files opened in listing order by 4 readers are fetched ahead and served from what was fetched', async (t) => {
  const m = await mount(t, info, `${BUCKET}/dir`)
  const listed = (await fs.readdir(m.mountpoint)).sort()
  t.same(listed, names, 'the listing')
  // Ten opens in order confirm the pattern; 128 files are then queued ahead of the furthest.
  await readAll(t, m.mountpoint, names.slice(0, 10), 4)
  const queued = await statsWhen(m, (s) => s.announced.prefetched >= 100)
  t.ok(queued.announced.listingFiles >= 100, `files queued from the listing (${queued.announced.listingFiles})`)
  t.equal(queued.announced.requests, 0, 'nothing came over a control socket')
  await readAll(t, m.mountpoint, names.slice(10), 4)
  const s = await statsWhen(m, (x) => x.announced.used >= queued.announced.prefetched)
  t.ok(s.announced.used >= 100, `files fetched ahead were then read from the cache (${s.announced.used})`)
  t.ok(s.announced.listingFiles > queued.announced.listingFiles, 'the queue was topped up as the readers went on')
  await m.stop()
})

t.test('opens that do not follow the listing queue nothing, and queueing stops when the opens stop following it', async (t) => {
  const m = await mount(t, info, `${BUCKET}/dir`)
  // A stride of 97 places (coprime with 400): every open lands far from the one before.
  const stride = Array.from({ length: 60 }, (_, i) => names[(i * 97) % N]!)
  await readAll(t, m.mountpoint, stride, 1)
  let s = await statsWhen(m, (x) => x.fetch.blocksFetched >= stride.length)
  t.equal(s.announced.listingFiles, 0, 'no file was queued for opens out of listing order')

  // Then in order from 200 (the pattern is seen), then by stride again (it stops).
  await readAll(t, m.mountpoint, names.slice(200, 210), 1)
  s = await statsWhen(m, (x) => x.announced.listingFiles > 0)
  const queued = s.announced.listingFiles
  t.ok(queued <= 128, `at most 128 files queued ahead (${queued})`)
  await readAll(
    t,
    m.mountpoint,
    Array.from({ length: 40 }, (_, i) => names[(7 + i * 97) % N]!),
    1,
  )
  s = await statsWhen(m, (x) => x.reads.openFiles === 0)
  t.equal(s.announced.listingFiles, queued, 'nothing more queued once the opens left the listing order')
  await m.stop()
})
