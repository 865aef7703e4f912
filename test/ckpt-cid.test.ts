import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import t from 'tap'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { ContentHasher, cidFromLeaves, digestContent, leafCount, verifyDigest, normalizeCid, CID_BLOCK_SIZE } from '../lib/content/cid.js'
import { O3IntegrityError } from '../lib/o3/errors.js'
import { ThreadHasher } from '../lib/content/thread-hasher.js'
import { referenceCid } from './support/reference-dag.js'

const MiB = 1 << 20

/** Kubo's test harness data: ChaCha20 keystream keyed by sha256(seed), zero nonce (test/cli/harness). */
function* kuboSeeded(seed: string, size: number, chunk: number): Generator<Buffer> {
  const key = crypto.createHash('sha256').update(seed).digest()
  const cipher = crypto.createCipheriv('chacha20', key, Buffer.alloc(16))
  const zeros = Buffer.alloc(chunk)
  for (let left = size; left > 0; left -= chunk) yield cipher.update(zeros.subarray(0, Math.min(chunk, left)))
}

function randomBytes(n: number, seed: number): Buffer {
  return Buffer.concat([...kuboSeeded(`test-${seed}`, n, 1 << 20)])
}

t.test('empty input is the raw leaf of nothing', async (t) => {
  const d = await digestContent(new Uint8Array(0))
  t.equal(d.cid, 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku')
  t.equal(d.sha256, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855')
  t.equal(d.size, 0)
})

t.test('one block is a raw leaf: kubo\'s published "hello world" and an independent computation', async (t) => {
  t.equal((await digestContent(Buffer.from('hello world'))).cid, 'bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e')
  for (const n of [1, 777_777, CID_BLOCK_SIZE]) {
    const data = randomBytes(n, n)
    const expected = CID.createV1(raw.code, await sha256.digest(data)).toString()
    t.equal((await digestContent(data)).cid, expected, `${n} bytes`)
  }
})

t.test('several blocks: matches the reference builder however the input is cut', async (t) => {
  const data = randomBytes(3 * MiB + 12_345, 3)
  const expected = await referenceCid([data])
  t.match(expected, /^bafybei/)
  const sha = crypto.createHash('sha256').update(data).digest('hex')
  for (const cut of [1 << 16, 999_983, MiB, 4 * MiB]) {
    const chunks: Buffer[] = []
    for (let off = 0; off < data.length; off += cut) chunks.push(data.subarray(off, off + cut))
    const d = await digestContent(chunks)
    t.same(d, { cid: expected, sha256: sha, size: data.length }, `cut every ${cut} bytes`)
  }
})

t.test('multi-level DAG over 174 MiB: kubo legacy-cid-v1 vectors and the reference builder', async (t) => {
  // From kubo test/cli/add_test.go (profile legacy-cid-v1 = these exact add flags).
  t.equal(
    (await digestContent(kuboSeeded('v1-seed', 174 * MiB, 196_613))).cid,
    'bafybeigwduxcf2aawppv3isnfeshnimkyplvw3hthxjhr2bdeje4tdaicu',
    '174 MiB: one level',
  )
  const data = Buffer.concat([...kuboSeeded('v1-seed', 175 * MiB, 16 * MiB)])
  const d = await digestContent(data)
  t.equal(d.cid, 'bafybeidhd7lo2n2v7lta5yamob3xwhbxcczmmtmhquwhjesi35jntf7mpu', '175 MiB: two levels')
  t.equal(await referenceCid([data]), d.cid, 'the reference builder agrees')
  t.equal(
    await referenceCid(kuboSeeded('v1-seed', 174 * MiB, 196_613)),
    'bafybeigwduxcf2aawppv3isnfeshnimkyplvw3hthxjhr2bdeje4tdaicu',
    "the reference builder gives kubo's one-level vector too",
  )
  t.equal(await referenceCid([Buffer.from('hello world')]), 'bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e', 'and kubo\'s "hello world"')
})

t.test('the hand-written reference builder agrees with the importer at every boundary', async (t) => {
  // Each size is generated twice as a stream, never held whole: the 3-level boundary (174 x 174 MiB)
  // would mean hashing about 60 GiB, too slow for CI, so it is left out.
  const sizes: [number, string][] = [
    [0, 'empty'],
    [1, 'one byte'],
    [MiB, 'one full leaf'],
    [MiB + 1, 'a partial second leaf'],
    [174 * MiB, '174 full leaves: one full level'],
    [174 * MiB + 1, 'two levels, the last leaf one byte'],
  ]
  for (const [size, what] of sizes) {
    const ours = await digestContent(kuboSeeded(`boundary-${size}`, size, 4 * MiB + 7))
    t.equal(await referenceCid(kuboSeeded(`boundary-${size}`, size, 3 * MiB - 5)), ours.cid, `${size} bytes: ${what}`)
  }
})

t.test('a two-level DAG whose last leaf is partial: a fixed vector from the reference builder', async (t) => {
  const size = 200 * MiB + 123_457
  const expected = 'bafybeigxdzuynqpd3n73kl57xncrjmjozl5rctcx6azjhok47fttgsq4m4'
  t.equal(await referenceCid(kuboSeeded('partial-seed', size, 5 * MiB)), expected, 'the reference builder')
  t.equal((await digestContent(kuboSeeded('partial-seed', size, 999_983))).cid, expected, 'the importer')
})

t.test('update settles only when the chunk may be reused', async (t) => {
  const data = randomBytes(5 * MiB + 3, 5)
  const h = new ContentHasher()
  const scratch = Buffer.alloc(2 * MiB)
  for (let off = 0; off < data.length; off += scratch.length) {
    const n = data.copy(scratch, 0, off, off + scratch.length)
    await h.update(scratch.subarray(0, n))
    scratch.fill(0xee)
  }
  t.equal((await h.digest()).cid, await referenceCid([data]))
})

t.test('ThreadHasher: the same digest on a worker thread, the chunk free once update settles', async (t) => {
  // Sizes around a block and past one DAG level; chunks that straddle blocks and exceed the
  // worker's in-flight cap.
  for (const [size, chunk] of [
    [0, 1],
    [3, 1],
    [MiB, MiB],
    [MiB + 1, 4096],
    [175 * MiB + 5, 9 * MiB + 3],
  ] as const) {
    const data = randomBytes(size, size)
    const h = new ThreadHasher()
    const scratch = Buffer.alloc(chunk)
    for (let off = 0; off < size; off += chunk) {
      const n = data.copy(scratch, 0, off, off + chunk)
      await h.update(scratch.subarray(0, n))
      scratch.fill(0xee)
    }
    t.same(await h.digest(), await digestContent(data), `${size} bytes in chunks of ${chunk}`)
  }
  // Overlapping updates of one hasher (a multipart tap does not wait) keep their call order.
  const parts = [randomBytes(9 * MiB + 1, 3), randomBytes(7 * MiB, 4), randomBytes(5, 5)]
  const h = new ThreadHasher()
  await Promise.all(parts.map((p) => h.update(p)))
  t.same(await h.digest(), await digestContent(Buffer.concat(parts)), 'overlapping updates')
  // Two at once share the thread without mixing their bytes.
  const [a, b] = [randomBytes(3 * MiB, 1), randomBytes(2 * MiB + 9, 2)]
  const [ha, hb] = [new ThreadHasher(), new ThreadHasher()]
  await Promise.all([ha.update(a), hb.update(b)])
  t.same(await Promise.all([ha.digest(), hb.digest()]), await Promise.all([digestContent(a), digestContent(b)]))
})

t.test('an aborted ThreadHasher does not keep the process alive', async (t) => {
  const code = `import { ThreadHasher } from ${JSON.stringify(new URL('../lib/content/thread-hasher.ts', import.meta.url).href)}
const h = new ThreadHasher(); await h.update(new Uint8Array(3 << 20)); h.abort(); console.log('aborted')`
  // A process held open would never exit; two minutes leave a loaded machine time to start tsx and the thread.
  const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 120_000 })
  t.equal(out.stdout.trim(), 'aborted', out.stderr)
  t.equal(out.status, 0, 'exits by itself, without a timeout')
})

t.test('verifyDigest and normalizeCid', async (t) => {
  const d = await digestContent(Buffer.from('abc'))
  verifyDigest('x', d, { cid: d.cid, sha256: d.sha256.toUpperCase(), size: 3 })
  t.throws(() => verifyDigest('x', d, { size: 4 }), O3IntegrityError)
  t.throws(() => verifyDigest('x', d, { sha256: '00' }), O3IntegrityError)
  t.throws(() => verifyDigest('x', d, { cid: 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku' }), O3IntegrityError)
  t.throws(() => normalizeCid('not a cid'), O3IntegrityError)
  t.equal(normalizeCid(` ${d.cid}\n`), d.cid)
})

t.test('the leaves of a CID rebuild it; any other leaf list does not', async (t) => {
  for (const n of [0, 5, CID_BLOCK_SIZE, 3 * MiB + 12_345]) {
    const data = randomBytes(n, n + 1)
    const h = new ContentHasher()
    await h.update(data)
    const d = await h.digest()
    const leaves = [...h.leafDigests]
    t.equal(leaves.length, leafCount(n), `${n} bytes: ${leafCount(n)} leaves`)
    t.equal(await cidFromLeaves(leaves, n), await referenceCid([data]), `${n} bytes: rebuilt from its leaves`)
    t.equal(d.cid, await referenceCid([data]))
    const swapped = [...leaves]
    swapped[swapped.length - 1] = crypto.createHash('sha256').update('other').digest('hex')
    t.not(await cidFromLeaves(swapped, n), d.cid, `${n} bytes: a changed leaf gives another CID`)
  }
  await t.rejects(cidFromLeaves([], 10), O3IntegrityError, 'a leaf list of the wrong length is refused')
})
