import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import t from 'tap'
import * as dagPb from '@ipld/dag-pb'
import { UnixFS } from 'ipfs-unixfs'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { ContentHasher, digestContent, verifyDigest, normalizeCid, CID_BLOCK_SIZE } from '../lib/content/cid.js'
import { O3IntegrityError } from '../lib/o3/errors.js'
import { ThreadHasher } from '../lib/content/thread-hasher.js'

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

/**
 * An independent balanced UnixFS builder (raw leaves, 174 links), written from the spec rather
 * than with the importer, so that the vectors below do not just re-run the code under test.
 */
async function referenceCid(data: Buffer): Promise<string> {
  type Node = { cid: CID; fileSize: number; tsize: number }
  let level: Node[] = []
  for (let off = 0; off < data.length || off === 0; off += CID_BLOCK_SIZE) {
    const leaf = data.subarray(off, off + CID_BLOCK_SIZE)
    level.push({ cid: CID.createV1(raw.code, await sha256.digest(leaf)), fileSize: leaf.length, tsize: leaf.length })
    if (data.length === 0) break
  }
  while (level.length > 1) {
    const next: Node[] = []
    for (let i = 0; i < level.length; i += 174) {
      const children = level.slice(i, i + 174)
      const unixfs = new UnixFS({ type: 'file' })
      for (const c of children) unixfs.addBlockSize(BigInt(c.fileSize))
      const bytes = dagPb.encode({ Data: unixfs.marshal(), Links: children.map((c) => ({ Hash: c.cid, Name: '', Tsize: c.tsize })) })
      next.push({
        cid: CID.createV1(dagPb.code, await sha256.digest(bytes)),
        fileSize: children.reduce((a, c) => a + c.fileSize, 0),
        tsize: bytes.length + children.reduce((a, c) => a + c.tsize, 0),
      })
    }
    level = next
  }
  return level[0]!.cid.toString()
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
  const expected = await referenceCid(data)
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
  t.equal((await digestContent(kuboSeeded('v1-seed', 174 * MiB, 196_613))).cid, 'bafybeigwduxcf2aawppv3isnfeshnimkyplvw3hthxjhr2bdeje4tdaicu', '174 MiB: one level')
  const data = Buffer.concat([...kuboSeeded('v1-seed', 175 * MiB, 16 * MiB)])
  const d = await digestContent(data)
  t.equal(d.cid, 'bafybeidhd7lo2n2v7lta5yamob3xwhbxcczmmtmhquwhjesi35jntf7mpu', '175 MiB: two levels')
  t.equal(await referenceCid(data), d.cid, 'the reference builder agrees')
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
  t.equal((await h.digest()).cid, await referenceCid(data))
})

t.test('ThreadHasher: the same digest on a worker thread, the chunk free once update settles', async (t) => {
  // Sizes around a block and past one DAG level; chunks that straddle blocks and exceed the
  // worker's in-flight cap.
  for (const [size, chunk] of [[0, 1], [3, 1], [MiB, MiB], [MiB + 1, 4096], [175 * MiB + 5, 9 * MiB + 3]] as const) {
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
  const out = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000 })
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
