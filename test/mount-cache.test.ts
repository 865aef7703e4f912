// The data path's caches: the disk tier survives a remount and never returns a corrupt block,
// and one memory budget holds with a hundred files streaming at once.
import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { mapLimit } from '../scripts/bench/util.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { blockFiles, logWhen, mount, statsWhen } from './support/o3mount.js'

const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-cache-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

t.test('the disk cache survives a remount and a corrupt block is fetched again', async (t) => {
  const cacheDir = path.join(mkdtempSync(path.join(tmpdir(), 'o3mount-cache-')), 'cache')
  t.teardown(() => rmSync(path.dirname(cacheDir), { recursive: true, force: true }))
  const body = randomBytes(8 * MiB + 5)
  await client.put('cached.bin', body)
  const args = ['--cache-dir', cacheDir]

  const first = await mount(t, info, BUCKET, { args })
  t.equal(statSync(cacheDir).mode & 0o777, 0o700, 'the cache directory is private')
  t.equal(sha256(await fs.readFile(path.join(first.mountpoint, 'cached.bin'))), sha256(body))
  const s1 = await statsWhen(first, (s) => s.cache.diskWrites >= 9)
  t.equal(s1.cache.diskWrites, 9, 'all 9 blocks written to disk')
  await first.stop()

  const second = await mount(t, info, BUCKET, { args })
  t.equal(sha256(await fs.readFile(path.join(second.mountpoint, 'cached.bin'))), sha256(body), 'same bytes after the remount')
  const s2 = await statsWhen(second, (s) => s.cache.diskHits >= 9)
  t.equal(s2.cache.diskHits, 9, 'every block came from the disk cache')
  t.equal(s2.fetch.bytesFetched, 0, 'nothing was fetched from the server')
  await second.stop()

  // Flip one byte in the middle of one block file (past its 16-byte header). Not the 5-byte tail
  // block: a flip past a buffer's end changes nothing, and block names are hashes, so which file
  // sorts first differs from run to run.
  const victim = blockFiles(cacheDir)
    .filter((f) => statSync(f).size === 16 + MiB)
    .sort()[0]!
  const raw = readFileSync(victim)
  raw[16 + 1000] ^= 0xff
  writeFileSync(victim, raw)

  const third = await mount(t, info, BUCKET, { args })
  t.equal(sha256(await fs.readFile(path.join(third.mountpoint, 'cached.bin'))), sha256(body), 'the corrupt block was not returned')
  const s3 = await statsWhen(third, (s) => s.cache.diskCorrupt >= 1 && s.cache.diskHits >= 8)
  t.equal(s3.cache.diskCorrupt, 1, 'the corruption was detected')
  t.equal(s3.fetch.blocksFetched, 1, 'only that block was fetched again')
  t.match(await logWhen(third, /failed its checksum/), /failed its checksum/)
  await third.stop()
})

t.test('a hundred files streaming at once stay within the memory budget', async (t) => {
  const N = 100
  const SIZE = 2 * MiB + 4096
  const bodies = Array.from({ length: N }, () => randomBytes(SIZE))
  await mapLimit(
    bodies.map((b, i) => [i, b] as const),
    8,
    ([i, b]) => client.put(`hundred/${i}.bin`, b),
  )
  const budget = 128 * MiB
  const m = await mount(t, info, BUCKET, { args: ['--cache-mem', '128M'] })
  // The kernel's own high-water mark of the mount process: no sampling can miss a peak.
  const status = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${m.pid}/status`, 'utf8'))![1]) * 1024
  const baseline = status('VmHWM')
  const handles = await Promise.all(bodies.map((_, i) => fs.open(path.join(m.mountpoint, 'hundred', `${i}.bin`))))
  try {
    const ok = await Promise.all(
      handles.map(async (h, i) => {
        const chunks: Buffer[] = []
        const buf = Buffer.alloc(128 * 1024)
        for (let pos = 0; ; ) {
          const { bytesRead } = await h.read(buf, 0, buf.length, pos)
          if (bytesRead === 0) break
          chunks.push(Buffer.from(buf.subarray(0, bytesRead)))
          pos += bytesRead
        }
        return sha256(Buffer.concat(chunks)) === sha256(bodies[i]!)
      }),
    )
    t.equal(ok.filter(Boolean).length, N, 'every file read exactly')
  } finally {
    await Promise.all(handles.map((h) => h.close()))
  }
  const peak = status('VmHWM')
  // Beyond the budget the process may hold its JS heap's growth and garbage not yet collected:
  // stated here as 48 MiB over its peak once mounted.
  const SLACK = 48 * MiB
  t.comment(`peak RSS once mounted ${(baseline / MiB).toFixed(0)} MiB, after ${(peak / MiB).toFixed(0)} MiB, budget ${budget / MiB} MiB`)
  t.ok(
    peak <= baseline + budget + SLACK,
    `peak RSS ${(peak / MiB).toFixed(0)} MiB <= ${(baseline / MiB).toFixed(0)} MiB baseline + budget + ${SLACK / MiB} MiB`,
  )
  const s = await statsWhen(m, (s) => s.memory.peakUsedBytes > 0)
  t.ok(s.memory.peakUsedBytes > budget / 4, `the data path's peak was recorded (${(s.memory.peakUsedBytes / MiB).toFixed(0)} MiB)`)
  t.ok(s.memory.peakUsedBytes <= budget, 'cached and in-flight blocks at their peak within the budget')
  await m.stop()
})

t.test('one cache directory for two locations serves each its own blocks', async (t) => {
  const cacheDir = path.join(mkdtempSync(path.join(tmpdir(), 'o3mount-cache-')), 'cache')
  t.teardown(() => rmSync(path.dirname(cacheDir), { recursive: true, force: true }))
  const other = `${BUCKET}-b`
  await createBucket(info, other)
  const otherClient = serverClient(info, other)
  t.teardown(() => otherClient.close())
  const args = ['--cache-dir', cacheDir]
  const read = async (location: string, key: string) => {
    const m = await mount(t, info, location, { args })
    const bytes = await fs.readFile(path.join(m.mountpoint, key))
    const s = await statsWhen(m, (s) => s.cache.diskWrites + s.cache.diskHits >= 3)
    await m.stop()
    return { bytes, s }
  }
  // Same key and size, different bytes.
  const a = randomBytes(2 * MiB + 7)
  const b = randomBytes(2 * MiB + 7)
  await client.put('shared/same.bin', a)
  await otherClient.put('shared/same.bin', b)
  t.ok((await read(BUCKET, 'shared/same.bin')).bytes.equals(a), 'the first bucket reads its bytes')
  t.ok((await read(other, 'shared/same.bin')).bytes.equals(b), 'the second reads its own')
  // Same key, same bytes and so the same ETag: still not the other's blocks.
  await otherClient.put('shared/twin.bin', a)
  await client.put('shared/twin.bin', a)
  await read(BUCKET, 'shared/twin.bin')
  const twin = await read(other, 'shared/twin.bin')
  t.ok(twin.bytes.equals(a))
  t.equal(twin.s.cache.diskHits, 0, 'no block came from the other bucket')
  t.equal(twin.s.fetch.blocksFetched, 3, 'all three blocks were fetched for this bucket')
})
