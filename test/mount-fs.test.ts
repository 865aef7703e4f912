// The filesystem as a user sees it: trees, stats, exact bytes, concurrency, EROFS, prefixes,
// keys with odd characters, keys that cannot be file names, metadata TTLs and an object replaced
// under an open file.
import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { PutObjectCommand } from '@aws-sdk/client-s3'
import { mapLimit } from '../scripts/bench/util.js'
import { createBucket, s3Client, serverClient, useS3Server } from './support/s3-server.js'
import { freshStats, logWhen, mount } from './support/o3mount.js'
import { MetadataCache } from '../fs-driver/metadata-cache.js'
import { MountCounters } from '../fs-driver/stats.js'
import { silentLogger } from '../lib/log.js'

const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-fs-${process.pid}`

const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

const files = new Map<string, Buffer>([
  ['tree/a.txt', Buffer.from('alpha\n')],
  ['tree/b/c.txt', Buffer.from('charlie\n')],
  ['tree/b/d/e.bin', randomBytes(3 * MiB + 17)],
  ['tree/empty.bin', Buffer.alloc(0)],
  ['big.bin', randomBytes(6 * MiB + 123)],
  ['other/secret.txt', Buffer.from('not under tree/\n')],
  // Names any S3 tool may write: a control character (which a listing can carry only URL-encoded),
  // CR, space, plus, percent, two forms of one accented letter.
  ['odd/ctl\u0001 sp+%41.txt', randomBytes(1000)],
  ['odd/cr\rlf.txt', randomBytes(1001)],
  ['odd/caf\u00e9.txt', randomBytes(1002)],
  ['odd/cafe\u0301.txt', randomBytes(1003)],
  ...Array.from({ length: 32 }, (_, i) => [`many/f${String(i).padStart(2, '0')}.bin`, randomBytes(256 * 1024 + i)] as [string, Buffer]),
])
await mapLimit([...files], 8, ([k, v]) => client.put(k, v))
// Keys that cannot be path components go in through the raw SDK: our client refuses to write them.
const raw = s3Client(info)
const badKeys = ['tree/bad//x.txt', 'tree/back\\slash.txt', `tree/${'n'.repeat(300)}.txt`]
for (const Key of badKeys) await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key, Body: 'bad' }))
raw.destroy()

const m = await mount(t, info, BUCKET)
const at = (p: string) => path.join(m.mountpoint, p)

t.test('directories and stats come from the listing', async (t) => {
  t.same((await fs.readdir(m.mountpoint)).sort(), ['big.bin', 'many', 'odd', 'other', 'tree'])
  t.same(
    (await fs.readdir(at('odd'))).sort(),
    [...files.keys()]
      .filter((k) => k.startsWith('odd/'))
      .map((k) => k.slice(4))
      .sort(),
    'every odd name as it is',
  )
  // `tree/bad//x.txt` makes a directory `bad` whose only child has an empty name.
  t.same((await fs.readdir(at('tree'))).sort(), ['a.txt', 'b', 'bad', 'empty.bin'], 'keys that cannot be names are skipped')
  t.same(await fs.readdir(at('tree/bad')), [], 'an empty path component is skipped')
  t.same((await fs.readdir(at('tree/b/d'))).sort(), ['e.bin'])
  const st = await fs.stat(at('tree/b/d/e.bin'))
  t.equal(st.size, 3 * MiB + 17)
  t.equal(st.mode & 0o7777, 0o444)
  t.equal(st.uid, process.getuid!())
  t.ok(Math.abs(st.mtimeMs - Date.now()) < 10 * 60_000, 'mtime is the object LastModified')
  const dir = await fs.stat(at('tree/b'))
  t.ok(dir.isDirectory())
  t.equal(dir.mode & 0o7777, 0o555)
  t.equal((await fs.stat(at('tree/empty.bin'))).size, 0)
  t.equal((await fs.readFile(at('tree/empty.bin'))).length, 0)
  for (const p of ['nope', 'tree/nope.txt', 'tree/b/d/e.bin/x', 'nope/deeper']) {
    await t.rejects(fs.stat(at(p)), { code: p.endsWith('/x') ? 'ENOTDIR' : 'ENOENT' }, p)
  }
  const warnings = m
    .log()
    .split('\n')
    .filter((l) => l.includes('skipping key'))
  t.equal(warnings.length, badKeys.length, 'one warning per unusable key')
})

t.test('bytes are exact: whole files, random ranges, block boundaries, EOF', async (t) => {
  for (const [k, v] of files) {
    if (k.startsWith('many/')) continue
    t.equal(sha256(await fs.readFile(at(k))), sha256(v), k)
  }
  const big = files.get('big.bin')!
  const fh = await fs.open(at('big.bin'))
  try {
    const offsets: [number, number][] = []
    for (let i = 0; i < 200; i++) {
      const pos = Math.floor(Math.random() * big.length)
      offsets.push([pos, 1 + Math.floor(Math.random() * 300_000)])
    }
    for (let b = 1; b <= 6; b++) offsets.push([b * MiB - 5, 10], [b * MiB - 1, 2], [b * MiB, 1])
    offsets.push([big.length - 1, 10], [big.length, 10], [big.length + 5000, 10], [0, big.length + 100])
    for (const [pos, len] of offsets) {
      const buf = Buffer.alloc(len)
      const { bytesRead } = await fh.read(buf, 0, len, pos)
      const want = big.subarray(pos, pos + len)
      if (bytesRead !== want.length || !buf.subarray(0, bytesRead).equals(want)) {
        t.fail(`read at ${pos} of ${len}: got ${bytesRead} bytes, wanted ${want.length}`)
      }
    }
  } finally {
    await fh.close()
  }
  t.pass('all ranges matched')
})

t.test('many concurrent readers', async (t) => {
  const many = [...files].filter(([k]) => k.startsWith('many/'))
  const same = Array.from({ length: 8 }, () => ['tree/b/d/e.bin', files.get('tree/b/d/e.bin')!] as [string, Buffer])
  const got = await Promise.all([...many, ...same].map(async ([k, v]) => sha256(await fs.readFile(at(k))) === sha256(v)))
  t.equal(got.filter(Boolean).length, many.length + same.length, 'every reader got exact bytes')
})

t.test('every write operation fails with EROFS', async (t) => {
  const ops: [string, () => Promise<unknown>][] = [
    ['create', () => fs.writeFile(at('new.txt'), 'x')],
    ['open for writing', () => fs.open(at('tree/a.txt'), 'r+')],
    ['append', () => fs.appendFile(at('tree/a.txt'), 'x')],
    ['truncate', () => fs.truncate(at('tree/a.txt'), 0)],
    ['mkdir', () => fs.mkdir(at('newdir'))],
    ['unlink', () => fs.unlink(at('tree/a.txt'))],
    ['rmdir', () => fs.rmdir(at('tree/b/d'))],
    ['rename', () => fs.rename(at('tree/a.txt'), at('tree/z.txt'))],
    ['symlink', () => fs.symlink('a.txt', at('tree/link'))],
    ['link', () => fs.link(at('tree/a.txt'), at('tree/hard'))],
    ['chmod', () => fs.chmod(at('tree/a.txt'), 0o777)],
    ['chown', () => fs.chown(at('tree/a.txt'), 1, 1)],
    ['utimes', () => fs.utimes(at('tree/a.txt'), new Date(), new Date())],
    ['mknod via O_CREAT|O_EXCL', () => fs.open(at('tree/fifo'), constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY)],
  ]
  for (const [name, op] of ops) await t.rejects(op(), { code: 'EROFS' }, name)
  t.equal(await fs.readFile(at('tree/a.txt'), 'utf8'), 'alpha\n', 'nothing changed')
})

t.test('a prefix mount shows only what is under the prefix', async (t) => {
  const p = await mount(t, info, `${BUCKET}/tree`)
  t.same((await fs.readdir(p.mountpoint)).sort(), ['a.txt', 'b', 'bad', 'empty.bin'])
  t.equal(await fs.readFile(path.join(p.mountpoint, 'b/c.txt'), 'utf8'), 'charlie\n')
  await t.rejects(fs.stat(path.join(p.mountpoint, 'other')), { code: 'ENOENT' })
  await t.rejects(fs.stat(path.join(p.mountpoint, 'big.bin')), { code: 'ENOENT' })
  await p.stop()
})

t.test('no path escapes the prefix: through the mount, or handed to the lookups directly', async (t) => {
  // Keys that spell a way out, stored literally under the prefix.
  const raw = s3Client(info)
  const sneaky = [
    'tree/../other/secret.txt',
    'tree/evil/../../other/secret.txt',
    'tree/./other/secret.txt',
    'tree//other/secret.txt',
    'tree/%2e%2e/other/secret.txt',
  ]
  const stored: string[] = []
  for (const Key of sneaky) {
    try {
      await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key, Body: 'planted under tree/\n' }))
      stored.push(Key)
    } catch {
      // the server refused the key itself: nothing to escape through
    }
  }
  raw.destroy()
  t.comment(`stored: ${stored.join(', ')}`)
  const p = await mount(t, info, `${BUCKET}/tree`)
  // Literal names that are valid components (evil, %2e%2e) show as directories; '..', '.' and ''
  // never do, and nothing named 'other' from outside the prefix.
  const expectedNames = ['a.txt', 'b', 'bad', 'empty.bin', ...(stored.includes('tree/evil/../../other/secret.txt') ? ['evil'] : [])]
  if (stored.includes('tree/%2e%2e/other/secret.txt')) expectedNames.push('%2e%2e')
  t.same((await fs.readdir(p.mountpoint)).sort(), expectedNames.sort(), 'the names under the prefix, and only those')
  const secret = files.get('other/secret.txt')!
  const planted = Buffer.from('planted under tree/\n')
  // Joined as strings, not with path.join (which would resolve '..' before the kernel sees it):
  // each '..' below is resolved by the kernel inside the mount, and the names after it are
  // looked up by the mount. Each gets exactly the answer a filesystem owes it.
  const inside = (rel: string) => `${p.mountpoint}/${rel}`
  const attempts: [string, string | Buffer][] = [
    ['b/../a.txt', files.get('tree/a.txt')!], // the control: '..' lands in the mount's root, which serves a.txt
    ['b/../other/secret.txt', 'ENOENT'],
    ['b/d/../../other/secret.txt', 'ENOENT'],
    ['./other/secret.txt', 'ENOENT'],
    ['other/secret.txt', 'ENOENT'],
    ['..%2fother/secret.txt', 'ENOENT'], // an encoded slash is no key
    ['%2e%2e/other/secret.txt', stored.includes('tree/%2e%2e/other/secret.txt') ? planted : 'ENOENT'], // a literal name, not '..'
    ['evil/..', stored.includes('tree/evil/../../other/secret.txt') ? 'EISDIR' : 'ENOENT'], // evil's parent is the mount's root
  ]
  for (const [a, want] of attempts) {
    const got = await fs.readFile(inside(a)).catch((err: NodeJS.ErrnoException) => err.code ?? String(err))
    if (typeof want === 'string') t.equal(got, want, `${a}: ${want}`)
    else t.ok(Buffer.isBuffer(got) && got.equals(want), `${a}: the bytes of the object under the prefix (${typeof got === 'string' ? got : got.length})`)
    t.ok(typeof got === 'string' || !got.equals(secret), `${a}: never the secret`)
  }
  // The lookups behind every FUSE operation, handed what the kernel would never send.
  const scoped = serverClient(info, `${BUCKET}/tree`)
  const meta = new MetadataCache(scoped, 60, new MountCounters(), silentLogger)
  try {
    for (const bad of [
      '/../other/secret.txt',
      '/..',
      '/../other',
      '//other/secret.txt',
      '/./a.txt',
      '/b/../../other/secret.txt',
      '/..\\other\\secret.txt',
      '/b/..',
    ]) {
      t.equal(await meta.lookup(bad), undefined, `lookup ${bad} finds nothing`)
    }
    t.match(await meta.lookup('/a.txt'), { kind: 'file', key: 'a.txt', size: 6 }, 'while a real name under the prefix is found')
  } finally {
    scoped.close()
  }
  await p.stop()
})

t.test('metadata is cached for the TTL, and refreshed after it', async (t) => {
  // Long enough for the 20 rounds of lookups below to end within it on a loaded machine.
  const ttlMs = 15_000
  const p = await mount(t, info, BUCKET, { args: ['--metadata-ttl', `${ttlMs / 1000}s`] })
  const touch = async () => {
    await fs.readdir(path.join(p.mountpoint, 'tree'))
    await fs.stat(path.join(p.mountpoint, 'tree/a.txt'))
    await fs.stat(path.join(p.mountpoint, 'tree/late.txt')).catch(() => {})
  }
  const cachedBy = Date.now()
  await touch()
  await t.rejects(fs.stat(path.join(p.mountpoint, 'tree/late.txt')), { code: 'ENOENT' })
  const before = (await freshStats(p)).metadata
  for (let i = 0; i < 20; i++) await touch()
  const touchedAt = Date.now()
  const after = (await freshStats(p)).metadata
  t.ok(touchedAt - cachedBy < ttlMs, `the lookups ended within the TTL (${touchedAt - cachedBy} ms)`)
  t.equal(after.listRequests, before.listRequests, 'repeated listings and stats hit the cache')
  t.equal(after.headRequests, before.headRequests, 'negative lookups hit the cache')
  await client.put('tree/late.txt', 'late\n')
  // Past the TTL counted from the last lookup (which holds whether or not a hit extends an entry),
  // with 100 ms for clock rounding.
  await sleep(touchedAt + ttlMs + 100 - Date.now())
  t.equal(await fs.readFile(path.join(p.mountpoint, 'tree/late.txt'), 'utf8'), 'late\n', 'a new object shows up once the TTL has passed')
  await client.delete('tree/late.txt')
  await p.stop()
})

t.test('an object replaced while open fails reads with EIO instead of mixing versions', async (t) => {
  const first = randomBytes(24 * MiB)
  const second = randomBytes(24 * MiB)
  await client.put('replace.bin', first)
  const p = await mount(t, info, BUCKET)
  const fh = await fs.open(path.join(p.mountpoint, 'replace.bin'))
  try {
    const head = Buffer.alloc(4096)
    await fh.read(head, 0, head.length, 0)
    t.ok(head.equals(first.subarray(0, 4096)), 'read before the replacement')
    await client.put('replace.bin', second)
    const tail = Buffer.alloc(4096)
    await t.rejects(fh.read(tail, 0, tail.length, 20 * MiB), { code: 'EIO' }, 'an uncached block of the old version cannot be read')
  } finally {
    await fh.close()
  }
  t.match(await logWhen(p, /replaced while open/), /replaced while open/)
  // The read that met the new version made the mount forget the old: the next open reads it, not the TTL later.
  t.ok((await fs.readFile(path.join(p.mountpoint, 'replace.bin'))).equals(second), 'the next open reads the new version')
  await p.stop()
})
