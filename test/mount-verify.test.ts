// Verified reads: every block the mount serves from the server or the disk tier is checked
// against the leaf digests of the tree's dataset manifest; a block that does not match fails its
// reads with EIO and is never cached, a forged manifest stops the mount.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { DATASET_MANIFEST_NAME, buildDatasetManifest, formatDatasetManifest } from '../lib/content/dataset-manifest.js'
import { signerFromHex } from '../lib/content/signer.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { manifestFile, putTree } from './support/manifest.js'
import { blockFiles, mount, runCli, statsWhen, tempMountpoint, type Mounted } from './support/o3mount.js'

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
      const got = await readAt(file, block * MiB + 100, 4096)
      t.ok(Buffer.isBuffer(got) && got.equals(body.subarray(block * MiB + 100, block * MiB + 100 + 4096)), `${when}: block ${block} is served, exact`)
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
  t.match(second.log(), /disk cache block does not match the manifest/)
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

/** The whole file read with O_DIRECT (dd), so that every read reaches the mount, not the page cache. */
function readDirect(file: string, out: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) =>
    execFile('dd', [`if=${file}`, `of=${out}`, 'iflag=direct', 'bs=1M'], (err, _stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stderr }),
    ),
  )
}

t.test('a block cached by an open without a manifest is not served unchecked to an open with one', async (t) => {
  // Read first with no manifest: its blocks are cached unverified.
  const body = randomBytes(2 * MiB + 99)
  await client.put('late/v.bin', body)
  const m = await mount(t, info, `${BUCKET}/late`, { args: ['--metadata-ttl', '1s'] })
  const file = path.join(m.mountpoint, 'v.bin')
  const out = path.join(cacheDirFor(t), '..', 'out.bin')
  const first = await readDirect(file, out)
  t.equal(first.code, 0, first.stderr)
  t.ok(readFileSync(out).equals(body), 'no manifest: the bytes are served')
  // Then a manifest that names the file with other bytes of the same size: an open that has its
  // leaves must check every block it serves, so the object's bytes now fail with EIO.
  await client.put(
    `late/${DATASET_MANIFEST_NAME}`,
    formatDatasetManifest(buildDatasetManifest({ 'v.bin': await manifestFile(randomBytes(body.length)) }, undefined)),
  )
  // The mount sees the new manifest once its negative lookup expires (--metadata-ttl 1s).
  const visible = () =>
    fs.stat(path.join(m.mountpoint, DATASET_MANIFEST_NAME)).then(
      () => true,
      () => false,
    )
  for (const end = Date.now() + 30_000; !(await visible()) && Date.now() < end; ) await new Promise((r) => setTimeout(r, 200))
  const second = await readDirect(file, out)
  t.not(second.code, 0, 'the verified open does not get the unverified blocks')
  t.match(second.stderr, /Input\/output error/)
  const s = await statsWhen(m, (x) => x.verify.failures > 0)
  t.ok(s.verify.failures > 0, `the blocks were checked against the manifest and failed (${s.verify.failures})`)
})
