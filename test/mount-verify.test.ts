// Verified reads: every block the mount serves from the server or the disk tier is checked
// against the leaf digests of the tree's dataset manifest; a block that does not match fails its
// reads with EIO and is never cached, a forged manifest stops the mount.
import t, { type Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { setTimeout as sleep } from 'node:timers/promises'
import { DATASET_MANIFEST_NAME, buildDatasetManifest, formatDatasetManifest } from '../lib/content/dataset-manifest.js'
import { signerFromHex } from '../lib/content/signer.js'
import { MetadataCache } from '../fs-driver/metadata-cache.js'
import { MountCounters } from '../fs-driver/stats.js'
import { ManifestIndex } from '../fs-driver/verify/manifest-index.js'
import { silentLogger } from '../lib/log.js'
import { startFaultProxy, type FaultProxy } from './support/fault-proxy.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { manifestFile, putTree } from './support/manifest.js'
import { blockFiles, logWhen, mount, runCli, statsWhen, tempMountpoint, type Mounted } from './support/o3mount.js'

const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-verify-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

function cacheDirFor(t: Test): string {
  const dir = path.join(mkdtempSync(path.join(tmpdir(), 'o3mount-verify-')), 'cache')
  t.teardown(() => rmSync(path.dirname(dir), { recursive: true, force: true }))
  return dir
}

/** Reads `len` bytes at `pos`; the errno code when the read fails. */
async function readAt(file: string, pos: number, len: number): Promise<Buffer | string> {
  const h = await fs.open(file)
  try {
    const buf = Buffer.alloc(len)
    const { bytesRead } = await h.read(buf, 0, len, pos)
    return buf.subarray(0, bytesRead)
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err)
  } finally {
    await h.close()
  }
}

t.test('a byte flipped in the object store: that block fails with EIO, the others are served, before and after a remount with the disk tier', async (t) => {
  const body = randomBytes(5 * MiB + 5)
  await putTree(client, 'flip', { 'a.bin': body })
  // Overwritten behind the manifest's back: same size, one byte changed in block 2.
  const bad = Buffer.from(body)
  bad[2 * MiB + 10]! ^= 0x01
  await client.put('flip/a.bin', bad)
  const cacheDir = cacheDirFor(t)
  const args = ['--cache-dir', cacheDir, '--metadata-ttl', 'indefinite']
  const check = async (m: Mounted, when: string) => {
    const file = path.join(m.mountpoint, 'a.bin')
    for (const block of [0, 1, 3, 4, 5]) {
      // Inside the block: the last one holds 5 bytes, so 100 bytes in would be past the end of the file.
      const at = Math.min(block * MiB + 100, body.length - 2)
      const got = await readAt(file, at, 4096)
      t.ok(Buffer.isBuffer(got) && got.length > 0 && got.equals(body.subarray(at, at + 4096)), `${when}: block ${block} is served, exact`)
    }
    t.equal(await readAt(file, 2 * MiB + 4096, 4096), 'EIO', `${when}: a 4 KiB read of the flipped block fails with EIO`)
    t.equal(await readAt(file, 2 * MiB + 10, 1), 'EIO', `${when}: so does the flipped byte itself`)
    await t.rejects(fs.readFile(file), { code: 'EIO' }, `${when}: reading the whole file fails rather than return a wrong byte`)
    const s = await statsWhen(m, (x) => x.verify.failures >= 3 && x.verify.blocksVerified >= 5)
    t.ok(s.verify.failures >= 3, `${when}: failures counted (${s.verify.failures})`)
    t.ok(s.verify.blocksVerified >= 5, `${when}: the good blocks were verified (${s.verify.blocksVerified})`)
    const line = m
      .log()
      .split('\n')
      .find((l) => l.includes('does not match the manifest'))
    t.ok(line, `${when}: one log line for the mismatch`)
    const rec = JSON.parse(line!) as Record<string, unknown>
    t.match(
      rec,
      { key: 'a.bin', block: 2, leaf: 2, expected: sha256(body.subarray(2 * MiB, 3 * MiB)), actual: sha256(bad.subarray(2 * MiB, 3 * MiB)) },
      `${when}: it names key, block and both digests`,
    )
    return s
  }
  const first = await mount(t, info, `${BUCKET}/flip`, { args })
  const s1 = await check(first, 'first mount')
  t.equal(s1.verify.mode, 'if-present')
  t.equal((await statsWhen(first, (x) => x.cache.diskWrites >= 5)).cache.diskWrites, 5, 'only the 5 good blocks reached the disk tier')
  await first.stop()
  const second = await mount(t, info, `${BUCKET}/flip`, { args })
  await check(second, 'after a remount')
  const s2 = await statsWhen(second, (x) => x.cache.diskHits >= 5 && x.fetch.getRequests >= 1)
  t.ok(s2.cache.diskHits >= 5, `the good blocks came from the disk tier (${s2.cache.diskHits})`)
  t.ok(s2.fetch.getRequests >= 1, 'the bad block was never cached: it was fetched again')
  t.equal(s2.fetch.blocksFetched, 0, 'and failed again, so nothing new was cached')
  await second.stop()
})

t.test('a flipped byte in a disk-tier block (checksum fixed up) is caught and the block fetched again', async (t) => {
  const body = randomBytes(3 * MiB)
  await putTree(client, 'disk', { 'b.bin': body })
  const cacheDir = cacheDirFor(t)
  const args = ['--cache-dir', cacheDir]
  const first = await mount(t, info, `${BUCKET}/disk`, { args })
  t.equal(sha256(await fs.readFile(path.join(first.mountpoint, 'b.bin'))), sha256(body))
  await statsWhen(first, (s) => s.cache.diskWrites >= 3)
  await first.stop()
  // Change one byte and rewrite the header's CRC, so that only the leaf digest can tell.
  const victim = blockFiles(cacheDir).sort()[0]!
  const raw = readFileSync(victim)
  raw[16 + 777]! ^= 0x80
  raw.writeUInt32LE(crc32(raw.subarray(16), crc32(path.basename(victim))), 8)
  writeFileSync(victim, raw)
  const second = await mount(t, info, `${BUCKET}/disk`, { args })
  t.equal(sha256(await fs.readFile(path.join(second.mountpoint, 'b.bin'))), sha256(body), 'the right bytes, never the altered block')
  const s = await statsWhen(second, (x) => x.verify.failures >= 1 && x.cache.diskHits >= 2)
  t.equal(s.verify.failures, 1, 'the altered block was caught')
  t.equal(s.cache.diskCorrupt, 0, 'the CRC alone did not catch it')
  t.equal(s.fetch.blocksFetched, 1, 'only that block was fetched again')
  t.match(await logWhen(second, /disk cache block does not match/), /disk cache block does not match the manifest/)
  await second.stop()
})

t.test('a manifest whose leaves do not hash to its CID is refused at mount time: one line, exit 65', async (t) => {
  const good = await manifestFile(randomBytes(2 * MiB + 1))
  const forged = { ...good, leaves: [good.leaves[0]!, sha256(Buffer.from('not this')), good.leaves[2]!] }
  await client.put('forged/c.bin', randomBytes(2 * MiB + 1))
  await client.put(
    `forged/${DATASET_MANIFEST_NAME}`,
    formatDatasetManifest({ format: 'o3-dataset-manifest', version: 1, leafSize: MiB, created: new Date().toISOString(), files: { 'c.bin': forged } }),
  )
  const r = await runCli(info, [tempMountpoint(t), `${BUCKET}/forged`])
  t.equal(r.code, ExitCode.integrity, r.stderr)
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line')
  t.match(r.stderr, /^o3mount: \.o3-manifest\.json: the leaves of c\.bin hash to \S+, not to its CID/)
})

t.test('--verify required refuses files no manifest names; --trust-signer wants a signature by that key', async (t) => {
  const signer = signerFromHex('11'.repeat(32), 'test key')
  await putTree(client, 'req', { 'sub/covered.bin': randomBytes(1000) }, signer)
  await client.put('req/stray.bin', randomBytes(1000))
  const m = await mount(t, info, `${BUCKET}/req`, { args: ['--verify', 'required', '--trust-signer', signer.address] })
  t.equal((await fs.readFile(path.join(m.mountpoint, 'sub', 'covered.bin'))).length, 1000, 'a covered file reads')
  await t.rejects(fs.readFile(path.join(m.mountpoint, 'stray.bin')), { code: 'EACCES' }, 'an uncovered file is refused')
  t.equal((await statsWhen(m, (s) => s.verify.refusedOpens >= 1)).verify.refusedOpens, 1)
  await m.stop()
  const other = signerFromHex('22'.repeat(32), 'other key')
  await putTree(client, 'req2', { 'x.bin': randomBytes(10) }, other)
  const r = await runCli(info, [tempMountpoint(t), `${BUCKET}/req2`, '--trust-signer', signer.address])
  t.equal(r.code, ExitCode.integrity, r.stderr)
  t.match(r.stderr, /not among the trusted signers/)
})

t.test('a manifest that cannot be fetched fails that open with EIO; the mount lives and the next open verifies', async (t) => {
  const body = randomBytes(2 * MiB + 3)
  await putTree(client, 'late/sub', { 'x.bin': body })
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const m = await mount(t, info, `${BUCKET}/late`, { env: { O3_ENDPOINT: proxy.endpoint }, args: ['--op-timeout', '3s', '--metadata-ttl', 'indefinite'] })
  const file = path.join(m.mountpoint, 'sub', 'x.bin')
  // The directory's listing is cached first, so that every lookup is answered from it and only
  // the manifest's GET (begun beside the file's lookup, awaited by its open) meets the stall.
  t.ok((await fs.readdir(path.join(m.mountpoint, 'sub'))).includes(DATASET_MANIFEST_NAME), 'the listing is cached')
  proxy.stall(60_000)
  await t.rejects(fs.readFile(file), { code: 'EIO' }, 'the open fails while the manifest cannot be fetched')
  proxy.clear()
  t.equal(sha256(await fs.readFile(file)), sha256(body), 'the next open loads the manifest and reads')
  t.equal((await statsWhen(m, (s) => s.verify.blocksVerified >= 3)).verify.blocksVerified, 3, 'verified against it')
  t.equal(m.child.exitCode, null, 'the mount is alive')
  t.match(await logWhen(m, /loading the dataset manifest failed/), /loading the dataset manifest failed/)
  await m.stop()
})

/**
 * The metadata cache and manifest index a mount of `${BUCKET}/${prefix}` builds; through `proxy`
 * with one attempt per request, so that an outage fails a load at once.
 */
function indexAt(t: Test, prefix: string, proxy?: FaultProxy): { meta: MetadataCache; index: ManifestIndex } {
  const scoped = serverClient(info, `${BUCKET}/${prefix}`, proxy ? { endpoint: proxy.endpoint, retry: { maxAttempts: 1 } } : {})
  t.teardown(() => scoped.close())
  const meta = new MetadataCache(scoped, Infinity, new MountCounters(), silentLogger)
  return { meta, index: new ManifestIndex(scoped, meta, 'if-present', [], silentLogger) }
}

t.test('a manifest load that failed is not remembered: the next open fetches it again', async (t) => {
  await putTree(client, 'retry', { 'y.bin': randomBytes(1000) })
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const { meta, index } = indexAt(t, 'retry', proxy)
  await meta.lookup(`/${DATASET_MANIFEST_NAME}`)
  const outage = proxy.outage(60_000)
  await t.rejects(index.coverage('/y.bin', 'y.bin', 1000), 'the load fails while the server is away')
  proxy.clear()
  await outage
  t.match(await index.coverage('/y.bin', 'y.bin', 1000), { size: 1000 }, 'and is tried again once it is back')
})

t.test('a manifest replaced between its listing and its load is loaded again, not refused', async (t) => {
  await putTree(client, 'replaced', { 'z.bin': randomBytes(1000) })
  const { meta, index } = indexAt(t, 'replaced')
  t.ok(await meta.lookup(`/${DATASET_MANIFEST_NAME}`), 'the manifest is listed, with its first ETag')
  // Uploaded again with other bytes: the listing kept still names the first manifest.
  await putTree(client, 'replaced', { 'z.bin': randomBytes(2000) })
  // A GET pinned to the listed ETag fails; that was taken for a bad manifest, refused until the TTL.
  t.match(await index.coverage('/z.bin', 'z.bin', 2000), { size: 2000 }, 'the manifest now there is loaded')
})

t.test('a manifest that cannot be loaded fails the size a lookup shows instead of the listed one standing in', async (t) => {
  await putTree(client, 'shown', { 'w.bin': randomBytes(1000) })
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const { meta, index } = indexAt(t, 'shown', proxy)
  const listed = await meta.lookup('/w.bin')
  if (listed?.kind !== 'file') return t.fail('w.bin is listed as a file')
  await meta.lookup(`/${DATASET_MANIFEST_NAME}`)
  const outage = proxy.outage(60_000)
  // In a versioned bucket an open reads the manifest's version, whose size may differ: the listed
  // size shown meanwhile would be kept by the kernel and cut reads short.
  await t.rejects(index.shownSize('/w.bin', listed), 'no size while the manifest cannot be loaded')
  proxy.clear()
  await outage
  t.equal(await index.shownSize('/w.bin', listed), 1000, 'and the size once it can')
})

t.test('a block cached before a manifest named its file is never served to an open the manifest covers', async (t) => {
  // Issue 22 item 9: the bytes on the server are not those the manifest (uploaded later) names.
  const good = randomBytes(3 * MiB)
  const bad = Buffer.from(good)
  bad[MiB + 5]! ^= 0x01
  await client.put('nine/x.bin', bad)
  const m = await mount(t, info, `${BUCKET}/nine`, { args: ['--metadata-ttl', '2s'] })
  const file = path.join(m.mountpoint, 'x.bin')
  t.ok((await fs.readFile(file)).equals(bad), 'no manifest yet: the file is served unverified (and cached)')
  await client.put(`nine/${DATASET_MANIFEST_NAME}`, formatDatasetManifest(buildDatasetManifest({ 'x.bin': await manifestFile(good) }, undefined)))
  // Until the mount's 2 s metadata TTL passes it cannot know of the manifest; then every open is verified.
  let got: Buffer | string = Buffer.alloc(0)
  for (const end = Date.now() + 20_000; Date.now() < end; await sleep(250)) {
    got = await readAt(file, MiB, 4096)
    if (got === 'EIO') break
  }
  t.equal(got, 'EIO', 'the block that does not match is refused, not served from the cache')
  const first = await readAt(file, 0, 4096)
  t.ok(Buffer.isBuffer(first) && first.equals(good.subarray(0, 4096)), 'a block that matches is served')
  const s = await statsWhen(m, (x) => x.verify.failures >= 1)
  t.ok(s.verify.failures >= 1, `the mismatch was counted (${s.verify.failures})`)
  await m.stop()
})
