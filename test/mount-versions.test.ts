// Datasets that cannot drift: in a bucket that keeps versions, o3upload records the version of
// every file in the dataset manifest, and a --verify mount reads exactly those versions, whatever
// was written to the keys since. Open files keep reading the version they opened.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { DATASET_MANIFEST_NAME, buildDatasetManifest, formatDatasetManifest, parseDatasetManifest } from '../lib/content/dataset-manifest.js'
import { DEFAULT_PART_SIZE } from '../lib/content/hashed-upload.js'
import { signerFromHex } from '../lib/content/signer.js'
import { O3IntegrityError, type ObjectVersion } from '../lib/o3/index.js'
import { cliCommand } from '../lib/paths.js'
import { createBucket, createVersionedBucket, serverClient, serverEnv, useS3Server } from './support/s3-server.js'
import { mount } from './support/o3mount.js'
import { tempDir } from './fixtures/ckpt.js'
import { readAll } from './support/objects.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const VERSIONED = `mount-ver-${process.pid}`
const PLAIN = `mount-ver-plain-${process.pid}`
await createVersionedBucket(info, VERSIONED)
await createBucket(info, PLAIN)
const client = serverClient(info, VERSIONED)
t.teardown(() => client.close())

function o3upload(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const cli = cliCommand('upload/cli.ts')
  const child = spawn(process.execPath, [...cli.execArgv, cli.file, ...args], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })))
}

function writeTree(dir: string, files: Record<string, Buffer>): void {
  for (const [key, data] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, key)), { recursive: true })
    writeFileSync(path.join(dir, key), data)
  }
}

t.test('o3upload records each version; after the keys are overwritten a --verify mount serves the uploaded bytes', async (t) => {
  const files = {
    'a.bin': randomBytes(3 * MiB + 5),
    'b.txt': randomBytes(100),
    // Past one part: a multipart upload, whose version the completion does not name here (HEAD does).
    'sub/c.bin': randomBytes(DEFAULT_PART_SIZE + MiB + 3),
  }
  const dir = tempDir(t)
  writeTree(dir, files)
  const r = await o3upload([dir, `o3://${VERSIONED}/ds`])
  if (r.code !== 0) t.comment(r.stderr)
  t.equal(r.code, 0, 'o3upload exits 0')

  const manifest = await parseDatasetManifest(await readAll(client, `ds/${DATASET_MANIFEST_NAME}`), DATASET_MANIFEST_NAME)
  const listed: ObjectVersion[] = []
  for await (const v of client.listVersions('ds/')) listed.push(v)
  for (const key of Object.keys(files)) {
    const [only] = listed.filter((v) => v.key === `ds/${key}`)
    t.same(
      { versionId: manifest.files[key]?.versionId, etag: manifest.files[key]?.etag },
      { versionId: only?.versionId, etag: only?.etag },
      `${key}: the manifest records the version the upload made`,
    )
  }
  const fileLines = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { event: string; versionId?: string })
    .filter((l) => l.event === 'file')
  t.ok(
    fileLines.every((l) => l.versionId),
    'and each file line names it',
  )

  // The keys drift: shorter, longer, and same-size other bytes.
  const now = { 'a.bin': randomBytes(MiB), 'b.txt': randomBytes(5000), 'sub/c.bin': randomBytes(files['sub/c.bin'].length) }
  for (const [key, data] of Object.entries(now)) await client.put(`ds/${key}`, data)

  const verified = await mount(t, info, `${VERSIONED}/ds`, { args: ['--verify', 'required'] })
  for (const [key, data] of Object.entries(files)) {
    const file = path.join(verified.mountpoint, key)
    t.equal((await fs.stat(file)).size, data.length, `${key}: shows the recorded version's size`)
    t.ok((await fs.readFile(file)).equals(data), `${key}: serves the recorded version's bytes`)
  }
  await verified.stop()
  const plain = await mount(t, info, `${VERSIONED}/ds`, { args: ['--verify', 'off'] })
  for (const [key, data] of Object.entries(now)) {
    t.ok((await fs.readFile(path.join(plain.mountpoint, key))).equals(data), `${key}: without --verify the mount serves what the key holds now`)
  }
})

t.test('on an unversioned bucket the manifest records no version', async (t) => {
  const dir = tempDir(t)
  writeTree(dir, { 'x.bin': randomBytes(1000) })
  const r = await o3upload([dir, `o3://${PLAIN}/ds`])
  if (r.code !== 0) t.comment(r.stderr)
  t.equal(r.code, 0, 'o3upload exits 0')
  const c = serverClient(info, PLAIN)
  t.teardown(() => c.close())
  const m = await parseDatasetManifest(await readAll(c, `ds/${DATASET_MANIFEST_NAME}`), DATASET_MANIFEST_NAME)
  t.same(Object.keys(m.files['x.bin']!).sort(), ['cid', 'leaves', 'sha256', 'size'])
})

t.test("a manifest's version fields are validated and signed with it", async (t) => {
  const signer = signerFromHex('ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80', 'test')
  const data = randomBytes(2000)
  const dir = tempDir(t)
  writeTree(dir, { 'f.bin': data })
  const r = await o3upload([dir, `o3://${VERSIONED}/signed`])
  if (r.code !== 0) t.comment(r.stderr)
  t.equal(r.code, 0, 'o3upload exits 0')
  const base = await parseDatasetManifest(await readAll(client, `signed/${DATASET_MANIFEST_NAME}`), DATASET_MANIFEST_NAME)
  const f = base.files['f.bin']!
  t.ok(f.versionId && f.etag)
  const parse = (files: Record<string, unknown>) => parseDatasetManifest(Buffer.from(formatDatasetManifest({ ...base, files } as never)), 'm')
  await t.rejects(parse({ 'f.bin': { ...f, etag: undefined } }), O3IntegrityError, 'a version id without its ETag')
  await t.rejects(parse({ 'f.bin': { ...f, versionId: 'a b' } }), O3IntegrityError, 'a version id with a space')
  await t.rejects(parse({ 'f.bin': { ...f, versionId: 'x'.repeat(1025) } }), O3IntegrityError, 'a version id too long')
  const signed = buildDatasetManifest({ 'f.bin': f }, signer)
  t.same((await parseDatasetManifest(Buffer.from(formatDatasetManifest(signed)), 'm', [signer.address])).files['f.bin'], f, 'signed, it parses')
  const moved = { ...signed, files: { 'f.bin': { ...f, versionId: `${f.versionId}0` } } }
  await t.rejects(parseDatasetManifest(Buffer.from(formatDatasetManifest(moved)), 'm'), O3IntegrityError, 'another version id breaks the signature')
})

t.test("a file replaced while open: the open keeps its version's bytes and size, later opens read the new one, neither sees the other's pages", async (t) => {
  const before = randomBytes(6 * MiB)
  const after = randomBytes(2 * MiB)
  await client.put('replaced/x.bin', before)
  // A short TTL, so that lookups soon name the new object while the first open is still reading.
  const m = await mount(t, info, `${VERSIONED}/replaced`, { args: ['--verify', 'off', '--metadata-ttl', '1'] })
  const file = path.join(m.mountpoint, 'x.bin')
  const first = await fs.open(file)
  t.teardown(() => first.close().catch(() => {}))
  const head = Buffer.alloc(MiB)
  await first.read(head, 0, head.length, 0)
  t.ok(head.equals(before.subarray(0, MiB)), 'the first open reads the first version')
  await client.put('replaced/x.bin', after)
  await sleep(2_500)
  t.ok((await fs.readFile(file)).equals(after), 'an open after the replacement reads the new version')
  t.equal((await first.stat()).size, before.length, "the first open still shows its version's size")
  const again = Buffer.alloc(MiB)
  await first.read(again, 0, again.length, 0)
  t.ok(again.equals(before.subarray(0, MiB)), "the first open's pages are its own version's, not the new open's")
  const rest = Buffer.alloc(before.length - MiB)
  const { bytesRead } = await first.read(rest, 0, rest.length, MiB)
  t.equal(bytesRead, rest.length, 'the first open reads to the end of its version, past the new size')
  t.ok(rest.equals(before.subarray(MiB)), "and those bytes are its version's")
  await first.close()
  t.ok((await fs.readFile(file)).equals(after), "a later open reads the new version, not the first open's pages")
})

t.test('an open file keeps reading the version it opened after its key is overwritten', async (t) => {
  // Large enough that the first read's readahead (the kernel's and ours) stays far from the end.
  const before = randomBytes(24 * MiB)
  await client.put('open/x.bin', before)
  const m = await mount(t, info, `${VERSIONED}/open`, { args: ['--verify', 'off', '--readahead-max', '1M'] })
  const h = await fs.open(path.join(m.mountpoint, 'x.bin'))
  t.teardown(() => h.close().catch(() => {}))
  const head = Buffer.alloc(4096)
  await h.read(head, 0, head.length, 0)
  t.ok(head.equals(before.subarray(0, 4096)), 'the first bytes, before the overwrite')
  await client.put('open/x.bin', randomBytes(before.length))
  const rest = Buffer.alloc(4 * MiB)
  const { bytesRead } = await h.read(rest, 0, rest.length, 20 * MiB)
  t.equal(bytesRead, rest.length)
  t.ok(rest.equals(before.subarray(20 * MiB)), 'the end, after it: still the version it opened')
})
